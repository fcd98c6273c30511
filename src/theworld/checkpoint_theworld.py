# Copyright 2026 The TheWorld Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Checkpoint I/O of TheWorld: partial and full checkpoints, fresh builds from the base models, atomic publishing.

Shipped next to every checkpoint as remote code: flat, importing only torch, transformers, huggingface_hub, safetensors
and its sibling files. This module imports the model; the model reaches it only through a local import in
``from_pretrained``/``save_pretrained``.

Loading
-------
* **Full** checkpoints (every weight) load through transformers' own ``PreTrainedModel.from_pretrained``: meta init,
  memory-mapped safetensors, shards, ``dtype``, ``device_map``, ``attn_implementation``, ``key_mapping``,
  ``output_loading_info``, ``state_dict``.
* **Partial** checkpoints (only what training changed) and **fresh builds** around a Gemma 3 model go through the very
  same machinery: the base weights (Gemma's safetensors, the Cosmos ``vae/`` encoder tensors renamed under
  ``model.world_encoder.``, the DiT under ``model.world_rollout.transformer.`` when rollout is on) and the checkpoint's
  tensors are opened with ``safetensors.safe_open`` (memory-mapped, lazily sliced) and handed to
  ``from_pretrained(None, config=..., state_dict=...)`` as one state dict, the checkpoint's tensors last.
* Everything is strict: a missing, unexpected or mis-shaped key, a non-finite value or a non-float tensor is an error
  naming the key; nothing is loaded partially.
* Loading never writes, moves or deletes a file, and never runs code from the checkpoint: the processor and tokenizer
  are TheWorld's own classes over native transformers sub-processors.

Saving
------
A checkpoint is written into a staging folder next to the target and published with one atomic directory exchange
(``renameat2(RENAME_EXCHANGE)`` on Linux; two renames elsewhere). Readers see the old checkpoint or the new one, never
a mixture; a crash leaves the previous checkpoint intact; of two concurrent saves the last one wins. A load that
overlaps a publish notices the exchanged folder and reads again.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import GenerationConfig, PreTrainedModel
from transformers.utils.hub import cached_file

from .configuration_theworld import (
    ARCHITECTURE_FIELDS,
    CHECKPOINT_FORMAT_VERSION,
    LOAD_TIME_FIELDS,
    TheWorldConfig,
    TheWorldEncoderConfig,
)
from .processing_theworld import TheWorldProcessor
from .world_encoder_theworld import is_unused_diffusers_key

logger = logging.getLogger(__name__)

#: Files shipped next to every checkpoint so that ``trust_remote_code=True`` works without the theworld package.
REMOTE_CODE_FILES = (
    "configuration_theworld.py",
    "modeling_theworld.py",
    "world_encoder_theworld.py",
    "rollout_theworld.py",
    "processing_theworld.py",
    "checkpoint_theworld.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_theworld.TheWorldConfig",
    "AutoModel": "modeling_theworld.TheWorldForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_theworld.TheWorldForConditionalGeneration",
    "AutoModelForCausalLM": "modeling_theworld.TheWorldForConditionalGeneration",
}
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
#: Files a checkpoint owns: a new save replaces them; any other file in the folder is carried over.
OWNED_FILES = (
    "config.json",
    "generation_config.json",
    "checkpoint_config.json",
    "README.md",
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
    *REMOTE_CODE_FILES,
)
STAGING_TAG = ".theworld-staging-"
STAGING_MARKER = ".theworld-staging"
#: safetensors metadata key holding the sha256 of a partial checkpoint's tensors (checked on load).
DIGEST_KEY = "theworld_tensors_sha256"
#: Load-time keyword arguments of TheWorld itself (everything else goes to transformers' ``from_pretrained``).
THEWORLD_LOAD_KWARGS = ("ignore_fingerprint_mismatch", "allow_non_finite_weights", "checkpoint_name")

#: Called after the files of a checkpoint are staged, before it is published: ``hook(model, folder, kind, state)``.
#: The theworld package registers its model-card writer here (the card lives outside the remote-code files).
SAVE_HOOKS: list[Callable[[Any, str, str, dict], None]] = []


# ======================================================================================================================
# safetensors: every read goes through safe_open, here
# ======================================================================================================================
class SafetensorsFile:
    """One safetensors file opened with ``safe_open`` (memory-mapped); tensors are read lazily, slice by slice."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._handle = safe_open(path, framework="pt", device="cpu")
            self._keys = list(self._handle.keys())
            self._metadata = dict(self._handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(
                f"{path} is not a valid safetensors file ({err}): it is truncated or corrupt. Re-download it (delete "
                "it from the hub cache) or save the checkpoint again."
            ) from err

    def keys(self) -> list[str]:
        return list(self._keys)

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def lazy(self, key: str):
        """A lazy slice of ``key`` (what transformers' loader takes); nothing is read until it is indexed."""
        return self._handle.get_slice(key)

    def dtype(self, key: str) -> str:
        """The stored dtype string (``"F32"``, ``"BF16"``, ``"I64"`` ...)."""
        return self._handle.get_slice(key).get_dtype()

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle.get_slice(key).get_shape())

    def tensor(self, key: str) -> torch.Tensor:
        return self._handle.get_tensor(key)

    def fingerprint(self, keys: Iterable[str] | None = None) -> str:
        """Content fingerprint: sha256 over every tensor's name, dtype and shape plus sampled values (whole tensors of
        up to 16,384 elements; else the first and last rows, or 4,096 elements at each end of a vector).

        Any change of the tensor set, a shape, a dtype, or of whole tensors (another model, fine-tuning, a rescaled
        tensor) changes it; reading it costs a few rows per tensor.
        """
        digest = hashlib.sha256()
        for key in sorted(self._keys if keys is None else keys):
            view = self._handle.get_slice(key)
            shape = tuple(view.get_shape())
            digest.update(f"{key}|{view.get_dtype()}|{shape}\n".encode())
            numel = 1
            for d in shape:
                numel *= d
            if numel <= 16384 or not shape:
                parts = [self._handle.get_tensor(key)]
            elif len(shape) == 1:
                parts = [view[:4096], view[-4096:]]
            else:
                parts = [view[:1], view[-1:]]
            for part in parts:
                flat = part.contiguous().reshape(-1)
                digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        return "sha256s:" + digest.hexdigest()


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of ``state``'s tensors (name order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ======================================================================================================================
# Resolving files of a folder or hub repo
# ======================================================================================================================
def hub_kwargs_from(kwargs: dict, **override) -> dict:
    out = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
    out.update({k: v for k, v in override.items() if v is not None})
    return out


def resolve_file(source: str, filename: str, subfolder: str = "", **hub_kwargs) -> str | None:
    """``filename`` in a local folder or hub repo (through the hub cache); ``None`` when it does not exist."""
    try:
        return cached_file(
            source,
            filename,
            subfolder=subfolder,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
    except OSError as err:
        if isinstance(err.__cause__, ValueError) and not os.path.isdir(source):
            return None  # neither a folder nor a valid repo id (e.g. a mistyped local path)
        raise


def commit_of(resolved_path: str | None) -> str | None:
    """The commit of a file resolved inside the hub cache (``.../snapshots/<sha>/...``), else ``None``."""
    if not resolved_path:
        return None
    parts = os.path.normpath(resolved_path).split(os.sep)
    if "snapshots" in parts:
        i = parts.index("snapshots")
        if i + 1 < len(parts) and len(parts[i + 1]) == 40:
            return parts[i + 1]
    return None


def weight_files(source: str, stem: str, subfolder: str = "", **hub_kwargs) -> list[str]:
    """``{stem}.safetensors`` or the shards of ``{stem}.safetensors.index.json``. Only safetensors, never pickle."""
    single = resolve_file(source, f"{stem}.safetensors", subfolder, **hub_kwargs)
    if single:
        return [single]
    index = resolve_file(source, f"{stem}.safetensors.index.json", subfolder, **hub_kwargs)
    if index:
        shards = sorted(set(read_json(index)["weight_map"].values()))
        files = [resolve_file(source, s, subfolder, **hub_kwargs) for s in shards]
        missing = [s for s, p in zip(shards, files) if not p]
        if missing:
            raise FileNotFoundError(f"{source}/{subfolder}: the shards {missing} named in the index are missing.")
        return files
    where = f"{source}/{subfolder}" if subfolder else source
    raise FileNotFoundError(
        f"No {stem}.safetensors (or sharded index) in {where}. Only safetensors weights are loaded: check the path or "
        "repo id, make the files available (HF_HUB_OFFLINE=1 needs them in the hub cache), or convert them."
    )


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def portable_source(source: str) -> str:
    """Hub ids stay as they are; an existing local folder is recorded as an absolute path (with a warning: a checkpoint
    that names a local base folder loads only where that folder exists)."""
    if os.path.isdir(source):
        absolute = os.path.abspath(source)
        logger.warning(
            "Base model %r is a local folder; recorded as %s. A checkpoint that names a local base is not portable: "
            "pass gemma_model_name=/cosmos_model_name= at load time elsewhere, or save a full checkpoint.",
            source,
            absolute,
        )
        return absolute
    return source


# ======================================================================================================================
# Loading
# ======================================================================================================================
def load_pretrained(cls, source, *model_args, **kwargs):
    """`TheWorldForConditionalGeneration.from_pretrained`: see the module docstring.

    Args:
        source: a TheWorld checkpoint (partial, full, 0.1.0 or earlier research format) or a Gemma 3 model (folder or
            hub id); ``None`` with ``config=`` and ``state_dict=`` (transformers' in-memory form).
        config: a `TheWorldConfig` (what ``AutoModel`` passes, with its own load-time overrides applied).
        subfolder / checkpoint_name: a ``checkpoint-N/`` folder of a repo.
        ignore_fingerprint_mismatch: warn instead of failing when the base weights differ from those recorded.
        allow_non_finite_weights: accept NaN/Inf in the checkpoint's tensors (refused by default).
        **kwargs: hub arguments (``revision``, ``token``, ``cache_dir``, ``local_files_only`` ...), transformers'
            loading arguments (``dtype``, ``device_map``, ``attn_implementation``, ``output_loading_info``,
            ``key_mapping`` ...) and `TheWorldConfig` fields: world settings for a fresh build, or load-time overrides
            for a checkpoint (freeze flags, base sources; architecture fields cannot change).
    """
    if model_args:
        raise TypeError("TheWorld's from_pretrained takes no positional arguments besides the model id or path.")
    kwargs.pop("trust_remote_code", None)  # consent is the caller's business; nothing here runs checkpoint code
    if source is None:
        return _load_full(cls, None, kwargs)
    source = str(source)
    if kwargs.get("checkpoint_name"):
        kwargs["subfolder"] = kwargs.pop("checkpoint_name")
    folder = os.path.join(source, kwargs.get("subfolder") or "")
    if not os.path.isdir(folder):
        return _load_once(cls, source, kwargs)
    # A local folder may be republished by a concurrent save: load until the folder did not change underneath.
    for attempt in range(5):
        before = _folder_identity(folder)
        try:
            result = _load_once(cls, source, dict(kwargs))
        except Exception:
            if _folder_identity(folder) != before:
                time.sleep(0.05 * (attempt + 1))
                continue
            raise
        if _folder_identity(folder) == before:
            return result
        logger.info("%s was republished while loading it; loading again.", folder)
    raise RuntimeError(f"{folder} kept being replaced by concurrent saves while loading it; retry when saving stops.")


def _folder_identity(folder: str) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def _load_once(cls, source: str, kwargs: dict):
    subfolder = kwargs.get("subfolder") or ""
    hub = hub_kwargs_from(kwargs)
    config_path = resolve_file(source, "config.json", subfolder, **hub)
    if config_path is None:
        where = f"{source}/{subfolder}" if subfolder else source
        raise FileNotFoundError(
            f"No config.json at {where}. Pass a Gemma 3 model or a TheWorld checkpoint (a folder or hub repo id); for "
            "a hub repo check the id and revision, and that the hub cache holds it when HF_HUB_OFFLINE=1."
        )
    raw = read_json(config_path)
    model_type = raw.get("model_type")
    if model_type == "gemma3":
        return _load_fresh(cls, source, raw, config_path, kwargs)
    if model_type == "the_world":
        return _load_partial(cls, source, raw, kwargs, earlier_format="research")
    if model_type == "theworld":
        stored = TheWorldConfig.from_dict(copy.deepcopy(raw))
        earlier = "0.1.0" if int(raw.get("checkpoint_format_version", 1)) < 2 else None
        if stored.checkpoint_kind == "full":
            return _load_full(cls, source, kwargs, raw=raw, stored=stored)
        return _load_partial(cls, source, raw, kwargs, earlier_format=earlier)
    raise ValueError(
        f"{source} has model_type {model_type!r}; TheWorld loads Gemma 3 models ('gemma3') and TheWorld checkpoints "
        "('theworld', or 'the_world' from the earlier research code)."
    )


# ---------------------------------------------------------------------------------------------------------- config
def _split_kwargs(kwargs: dict) -> tuple[dict, dict, dict]:
    """``(config field overrides, TheWorld options, transformers loading kwargs)``."""
    fields = set(TheWorldConfig.__dataclass_fields__) | {
        "gemma_model_name",
        "gemma_revision",
        "cosmos_model_name",
        "cosmos_revision",
    }
    fields -= {"text_config", "vision_config", "world_config", "dtype"}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in THEWORLD_LOAD_KWARGS}
    return overrides, options, kwargs


def _apply_overrides(stored: TheWorldConfig, given: TheWorldConfig | None, overrides: dict) -> TheWorldConfig:
    """The checkpoint's config with the allowed load-time changes; architecture changes are refused."""
    config = copy.deepcopy(stored)
    requested = dict(overrides)
    if given is not None:  # AutoModel hands over a config it already changed with the user's keyword arguments
        for key in ARCHITECTURE_FIELDS + LOAD_TIME_FIELDS:
            if getattr(given, key) != getattr(stored, key):
                requested.setdefault(key, getattr(given, key))
        config._attn_implementation = given._attn_implementation
    for key, value in requested.items():
        if key in ARCHITECTURE_FIELDS and value != getattr(stored, key):
            raise ValueError(
                f"The checkpoint was built with {key}={getattr(stored, key)!r} but {key}={value!r} was passed. "
                "Architecture fields cannot change at load time: drop the argument, or build a new model from the "
                "Gemma base with the new setting."
            )
        if key not in ARCHITECTURE_FIELDS + LOAD_TIME_FIELDS:
            raise ValueError(
                f"{key} cannot change at load time (it is fixed by the checkpoint). Load-time overrides are: "
                f"{', '.join(LOAD_TIME_FIELDS)}."
            )
    for base in ("gemma", "cosmos"):  # a new source invalidates the recorded commit unless a revision comes with it
        if f"{base}_model_name" in requested and f"{base}_revision" not in requested:
            requested[f"{base}_revision"] = None
    for key, value in requested.items():
        if key in ("gemma_model_name", "cosmos_model_name"):
            value = portable_source(value)
        setattr(config, key, value)
    config.check_world()
    return config


def _vae_source_config(cosmos: str, revision: str | None, hub: dict) -> tuple[dict, str]:
    kw = dict(hub)
    kw.pop("revision", None)
    if revision:
        kw["revision"] = revision
    path = resolve_file(cosmos, "config.json", "vae", **kw)
    if path is None:
        raise FileNotFoundError(
            f"No vae/config.json in the Cosmos source {cosmos!r}. Pass cosmos_model_name= a Cosmos-Predict2 pipeline "
            "folder or hub repo (model_index.json with vae/ and transformer/ subfolders)."
        )
    return read_json(path), path


def _strip_private(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def fresh_config(gemma_source: str, gemma_raw: dict, config_path: str, overrides: dict, hub: dict) -> TheWorldConfig:
    """The config of a new TheWorld around a Gemma 3 model: Gemma's architecture, the world settings in
    ``overrides``, the Cosmos encoder (and DiT) geometry read from ``cosmos_model_name``, and the pinned sources."""
    for key in ("gemma_model_name", "gemma_revision"):
        if key in overrides:
            raise ValueError(
                f"{key}= applies to loading a TheWorld checkpoint; {gemma_source!r} is itself the Gemma base. Pass "
                "the Gemma source as the first argument and its revision as revision=."
            )
    cosmos = portable_source(overrides.pop("cosmos_model_name", None) or TheWorldConfig().cosmos_model_name)
    cosmos_revision = overrides.pop("cosmos_revision", None)
    keep = ("text_config", "vision_config", "mm_tokens_per_image", "boi_token_index", "eoi_token_index",
            "image_token_index", "initializer_range", "tie_word_embeddings")  # fmt: skip
    gemma_fields = {k: gemma_raw[k] for k in keep if k in gemma_raw}
    dtype = gemma_raw.get("dtype") or gemma_raw.get("torch_dtype") or (gemma_raw.get("text_config") or {}).get("dtype")
    config = TheWorldConfig(**gemma_fields, **overrides, dtype=dtype)
    config.gemma_model_name = portable_source(gemma_source)
    config.gemma_revision = commit_of(config_path)
    config.cosmos_model_name = cosmos
    # CODEPATH-free: enable_world=False builds are Gemma 3 and read nothing from Cosmos.
    if config.enable_world:
        vae_raw, vae_path = _vae_source_config(cosmos, cosmos_revision, hub)
        config.world_config = TheWorldEncoderConfig.from_vae_config(vae_raw)
        config.cosmos_revision = commit_of(vae_path) or cosmos_revision
        if config.rollout_enabled:
            kw = _cosmos_hub(config, hub)
            found = {}
            for sub, name in (("transformer", "config.json"), ("scheduler", "scheduler_config.json")):
                path = resolve_file(cosmos, name, sub, **kw)
                if path is None:
                    raise FileNotFoundError(
                        f"No {sub}/{name} in the Cosmos source {cosmos!r}; rollout (num_world_steps > 0 or "
                        "load_full_cosmos_pipeline=True) needs a Cosmos-Predict2 Video2World pipeline. Pass "
                        "cosmos_model_name=..., or set num_world_steps=0."
                    )
                found[sub] = _strip_private(read_json(path))
            config.rollout_transformer_config = found["transformer"]
            config.rollout_scheduler_config = found["scheduler"]
    config.check_world()
    return config


def _cosmos_hub(config: TheWorldConfig, hub: dict) -> dict:
    kw = dict(hub)
    kw.pop("revision", None)
    if config.cosmos_revision:
        kw["revision"] = config.cosmos_revision
    return kw


def _gemma_hub(config: TheWorldConfig, hub: dict) -> dict:
    kw = dict(hub)
    kw.pop("revision", None)
    if config.gemma_revision:
        kw["revision"] = config.gemma_revision
    return kw


# ---------------------------------------------------------------------------------------------------------- sources
#: 0.1.0 and earlier research checkpoints name some tensors differently (renamed on load).
EARLIER_KEY_RENAMES = (
    ("world_projector.projection.0.", "model.world_projector.linear_1."),
    ("world_projector.projection.2.", "model.world_projector.linear_2."),
    ("world_projector.projection.", "model.world_projector.linear_1."),
    ("world_boundary_embeddings.", "model.world_boundary_embeddings."),
    ("world_step_embeddings.", "model.world_step_embeddings."),
    ("world_rollout.", "model.world_rollout."),
    ("cosmos_vae.encoder.", "model.world_encoder.encoder."),
    ("cosmos_vae.quant_conv.", "model.world_encoder.quant_conv."),
)


def rename_earlier_key(key: str) -> str | None:
    """Today's name of a 0.1.0 / research-code checkpoint key; ``None`` for tensors that never influenced outputs
    (the VAE decoder, the temporal convolutions an image never reaches)."""
    if key.startswith(("cosmos_vae.decoder.", "cosmos_vae.post_quant_conv.")):
        return None
    for old, new in EARLIER_KEY_RENAMES:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    if key.startswith("model.world_encoder.") and is_unused_diffusers_key(key[len("model.world_encoder.") :]):
        return None
    return key


class _Sources:
    """The safetensors files of one load, kept open (memory-mapped) until transformers has read them."""

    def __init__(self):
        self.files: list[SafetensorsFile] = []
        self.state: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.fingerprints: dict[str, dict[str, str]] = {"gemma": {}, "cosmos": {}}

    def open(self, path: str) -> SafetensorsFile:
        f = SafetensorsFile(path)
        self.files.append(f)
        return f

    def add_gemma(self, config: TheWorldConfig, hub: dict) -> None:
        kw = _gemma_hub(config, hub)
        try:
            paths = weight_files(config.gemma_model_name, "model", **kw)
        except (OSError, FileNotFoundError) as err:
            raise OSError(
                f"Could not find the Gemma 3 base {config.gemma_model_name!r} (revision {config.gemma_revision}): "
                f"{err} Make it available, pass gemma_model_name=<folder or repo>, or use a full checkpoint "
                "(save_pretrained(save_full_model=True))."
            ) from err
        for path in paths:
            f = self.open(path)
            self.fingerprints["gemma"][os.path.basename(path)] = f.fingerprint()
            for key in f.keys():
                self.state[key] = f.lazy(key)
                self.origin[key] = "gemma"

    def add_cosmos(self, config: TheWorldConfig, hub: dict) -> None:
        kw = _cosmos_hub(config, hub)
        for path in weight_files(config.cosmos_model_name, "diffusion_pytorch_model", "vae", **kw):
            f = self.open(path)
            keys = [k for k in f.keys() if k.startswith(("encoder.", "quant_conv.")) and not is_unused_diffusers_key(k)]
            self.fingerprints["cosmos"]["vae/" + os.path.basename(path)] = f.fingerprint(keys)
            for key in keys:
                self.state["model.world_encoder." + key] = f.lazy(key)
                self.origin["model.world_encoder." + key] = "cosmos"
        # CODEPATH-free: only rollout models (num_world_steps > 0 or load_full_cosmos_pipeline) read the DiT.
        if config.rollout_enabled:
            for path in weight_files(config.cosmos_model_name, "diffusion_pytorch_model", "transformer", **kw):
                f = self.open(path)
                self.fingerprints["cosmos"]["transformer/" + os.path.basename(path)] = f.fingerprint()
                for key in f.keys():
                    self.state["model.world_rollout.transformer." + key] = f.lazy(key)
                    self.origin["model.world_rollout.transformer." + key] = "cosmos"

    def add_checkpoint(self, source: str, subfolder: str, hub: dict, earlier: bool) -> tuple[list[str], dict]:
        """The checkpoint's tensors, last (they override the bases). Returns their keys and the header metadata."""
        keys, metadata = [], {}
        for path in weight_files(source, "model", subfolder, **hub):
            f = self.open(path)
            meta = f.metadata()
            recorded = meta.pop(DIGEST_KEY, None)
            metadata.update(meta)
            check_float_tensors(f)
            tensors = {}
            for key in f.keys():
                name = rename_earlier_key(key) if earlier else key
                if name is None:
                    continue
                tensors[name] = f.tensor(key)
            if recorded is not None and tensors_digest({k: f.tensor(k) for k in f.keys()}) != recorded:
                raise ValueError(
                    f"{path} is corrupt: its tensors do not match the sha256 recorded when it was saved. Re-download "
                    "it (delete it from the hub cache) or save the checkpoint again."
                )
            for name, tensor in tensors.items():
                self.state[name] = tensor
                self.origin[name] = "checkpoint"
                keys.append(name)
        return keys, metadata


def check_float_tensors(f: SafetensorsFile) -> None:
    """Every TheWorld weight and buffer is floating point: an integer or bool tensor is a damaged or foreign file."""
    for key in f.keys():
        dtype = f.dtype(key)
        if not dtype.startswith(("F", "BF")):
            raise ValueError(
                f"{f.path}: tensor {key} is stored as {dtype}, but the model's {key} is a floating-point tensor; an "
                f"integer or bool {dtype} cannot represent it. The file is damaged or belongs to another model."
            )


def check_finite(model: torch.nn.Module, keys: Iterable[str], allow: bool, where: str) -> None:
    """Refuse NaN/Inf in the named parameters/buffers (``allow_non_finite_weights=True`` downgrades to a warning)."""
    state = model.state_dict()
    bad = [k for k in keys if k in state and state[k].is_floating_point() and not bool(torch.isfinite(state[k]).all())]
    if not bad:
        return
    message = (
        f"{where} holds non-finite (NaN or Inf) values in {bad[:10]}{' ...' if len(bad) > 10 else ''}. The checkpoint "
        "was saved from a diverged run or is damaged; pass allow_non_finite_weights=True to load it anyway."
    )
    if not allow:
        raise ValueError(message)
    logger.warning(message)


def _check_fingerprints(recorded: dict, current: dict, ignore: bool) -> None:
    diffs = []
    for base, files in current.items():
        for name, fp in files.items():
            old = (recorded.get(base) or {}).get(name)
            if old is None:
                continue
            if old.split(":")[0] != fp.split(":")[0]:
                logger.info("%s/%s was fingerprinted with another scheme (%s); not compared.", base, name, old[:8])
            elif old != fp:
                diffs.append(f"{base}/{name}")
    if not diffs:
        return
    message = (
        f"Base weights differ from those this checkpoint was trained on: {diffs}. The base source changed (another "
        "revision or a re-saved folder). Point gemma_model_name=/cosmos_model_name= at the original weights, or pass "
        "ignore_fingerprint_mismatch=True to load anyway."
    )
    if ignore:
        logger.warning(message)
    else:
        raise ValueError(message)


def _strict_report(info: dict, allowed_missing: Iterable[str], what: str) -> None:
    allowed = tuple(allowed_missing)
    missing = sorted(k for k in info.get("missing_keys", []) if not k.startswith(allowed))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = sorted(str(m) for m in info.get("mismatched_keys", []))
    errors = [str(e) for e in info.get("error_msgs", [])]
    problems = []
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    if missing:
        problems.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if mismatched:
        problems.append(f"shape mismatches {mismatched[:10]}")
    if errors:
        problems.append(f"errors {errors[:3]}")
    if problems:
        raise ValueError(
            f"{what} does not match the model: {'; '.join(problems)}. It belongs to another configuration or is "
            "damaged; nothing was loaded."
        )


def _transformers_from_pretrained(cls, source, **kwargs):
    """transformers' own ``PreTrainedModel.from_pretrained`` for ``cls``, always with loading info."""
    want_info = kwargs.pop("output_loading_info", False)
    model, info = PreTrainedModel.from_pretrained.__func__(cls, source, output_loading_info=True, **kwargs)
    return model, info, want_info


# ---------------------------------------------------------------------------------------------------------- full
def _load_full(cls, source: str | None, kwargs: dict, raw: dict | None = None, stored: TheWorldConfig | None = None):
    overrides, options, rest = _split_kwargs(dict(kwargs))
    given = rest.pop("config", None)
    if stored is None:  # config + state_dict in memory (transformers' form)
        if not isinstance(given, TheWorldConfig):
            raise ValueError("from_pretrained(None, ...) needs config=TheWorldConfig(...) and state_dict=....")
        config = given
        for key, value in overrides.items():
            setattr(config, key, value)
    else:
        config = _apply_overrides(stored, given if isinstance(given, TheWorldConfig) else None, overrides)
        hub = hub_kwargs_from(rest)
        subfolder = rest.get("subfolder") or ""
        for path in weight_files(source, "model", subfolder, **hub):
            check_float_tensors(SafetensorsFile(path))
    model, info, want_info = _transformers_from_pretrained(cls, source, config=config, **rest)
    _strict_report(info, (), "The full checkpoint")
    check_finite(model, model.state_dict().keys(), options.get("allow_non_finite_weights", False), "The checkpoint")
    model.config.checkpoint_kind = "full" if stored is not None else model.config.checkpoint_kind
    if source is not None:
        subfolder = rest.get("subfolder") or ""
        model.processor = _checkpoint_processor(source, subfolder, model.config, hub_kwargs_from(rest))
    _finish(model)
    return (model, info) if want_info else model


# ---------------------------------------------------------------------------------------------------------- fresh
def _load_fresh(cls, source: str, raw: dict, config_path: str, kwargs: dict):
    """A new TheWorld around a Gemma 3 model (the world modules initialised, the bases loaded)."""
    overrides, options, rest = _split_kwargs(dict(kwargs))
    if rest.pop("config", None) is not None:
        raise ValueError(f"{source} is a Gemma 3 model: pass the world settings as keyword arguments, not config=.")
    hub = hub_kwargs_from(rest)
    subfolder = rest.pop("subfolder", "") or ""
    if subfolder:
        raise ValueError("subfolder= applies to TheWorld checkpoints; pass the Gemma folder itself.")
    config = fresh_config(source, raw, config_path, overrides, hub)
    processor = _gemma_processor(source, config, hub_kwargs_from(rest))
    config.start_of_world_token_id = processor.start_of_world_token_id
    config.end_of_world_token_id = processor.end_of_world_token_id
    config.world_token_id = processor.world_token_id
    sources = _Sources()
    sources.add_gemma(config, hub)
    # CODEPATH-free: enable_world=False builds read nothing from Cosmos.
    if config.enable_world:
        sources.add_cosmos(config, hub)
    config.base_fingerprints = sources.fingerprints
    created = ("model.world_projector.", "model.world_boundary_embeddings.", "model.world_step_embeddings.",
               "model.world_rollout.prompt_embeds", "model.world_rollout.negative_prompt_embeds")  # fmt: skip
    model, info = _load_sources(cls, config, sources, rest, allowed_missing=created, what=f"The Gemma 3 base {source}")
    if config.enable_world:
        _init_boundaries_from_gemma(model)
        if config.rollout_enabled:
            _fill_rollout_prompts(model, hub)
    model.processor = processor
    model.generation_config = _generation_config(source, "", hub_kwargs_from(rest), config)
    _finish(model)
    return (model, info) if rest.get("output_loading_info") else model


def _init_boundaries_from_gemma(model) -> None:
    """Start the boundary embeddings at Gemma's scaled ``<start_of_image>``/``<end_of_image>`` embeddings."""
    cfg = model.config
    embed = model.get_input_embeddings()
    with torch.no_grad():
        ids = torch.tensor([cfg.boi_token_index, cfg.eoi_token_index], device=embed.weight.device)
        rows = embed(ids).float()
        target = model.model.world_boundary_embeddings.weight
        target.copy_(rows.to(device=target.device, dtype=target.dtype))


def _fill_rollout_prompts(model, hub: dict) -> None:
    from .rollout_theworld import rollout_prompt_embeddings

    cfg = model.config
    rollout = model.model.world_rollout
    dim = rollout.prompt_embeds.shape[-1]
    positive, negative = rollout_prompt_embeddings(
        cfg.cosmos_model_name, revision=cfg.cosmos_revision, text_dim=dim, hub_kwargs=_cosmos_hub(cfg, hub)
    )
    with torch.no_grad():
        for buffer, value in ((rollout.prompt_embeds, positive), (rollout.negative_prompt_embeds, negative)):
            buffer.copy_(value.to(device=buffer.device, dtype=buffer.dtype))


# ---------------------------------------------------------------------------------------------------------- partial
def _load_partial(cls, source: str, raw: dict, kwargs: dict, earlier_format: str | None):
    """A partial checkpoint: its bases at the pinned revisions plus the checkpoint's tensors, strictly."""
    overrides, options, rest = _split_kwargs(dict(kwargs))
    given = rest.pop("config", None)
    hub = hub_kwargs_from(rest)
    subfolder = rest.pop("subfolder", "") or ""
    if earlier_format == "research":
        stored = research_config(raw)
        if "world_image_size" in overrides and "world_image_size" not in raw:
            # The research code never recorded its world image size (it squashed every image to 512 px).
            stored.world_image_size = overrides.pop("world_image_size")
    else:
        stored = TheWorldConfig.from_dict(copy.deepcopy(raw))
    config = _apply_overrides(stored, given if isinstance(given, TheWorldConfig) else None, overrides)
    if earlier_format == "research" and config.enable_world:  # it recorded no encoder geometry: read the source's
        vae_raw, _ = _vae_source_config(config.cosmos_model_name, config.cosmos_revision, hub)
        config.world_config = TheWorldEncoderConfig.from_vae_config(vae_raw)
        config.check_world()
    sources = _Sources()
    sources.add_gemma(config, hub)
    if config.enable_world:
        sources.add_cosmos(config, hub)
    ckpt_hub = dict(hub)
    keys, metadata = sources.add_checkpoint(source, subfolder, ckpt_hub, earlier=earlier_format is not None)
    if earlier_format is None:
        _check_fingerprints(stored.base_fingerprints, sources.fingerprints, options.get("ignore_fingerprint_mismatch", False))
    else:
        config.base_fingerprints = sources.fingerprints
    _upgrade_earlier_rollout_buffers(sources, config, earlier_format)
    if earlier_format:
        logger.warning(
            "Loading a checkpoint written by %s: %s.",
            "theworld 0.1.0" if earlier_format == "0.1.0" else "the earlier research code",
            "the earlier research code's input path is in force (images squashed to "
            f"{config.world_image_size} px, pixels in [0, 255], unnormalised latents; legacy_preprocessing=True)"
            if config.legacy_preprocessing
            else "its world settings are kept (world block after <bos>, causal world attention, centre-cropped world "
            "images, float32-free world encoder dtype)",
        )
    # What the checkpoint must hold is what its own freeze flags made trainable, whatever the load-time flags say.
    must_hold = tuple(stored.trainable_prefixes())
    # The research code never saved its boundary embeddings (they lived in the frozen vocabulary matrix).
    allowed_missing = ("model.world_boundary_embeddings.",) if earlier_format == "research" else ()
    model, info = _load_sources(
        cls, config, sources, rest, allowed_missing=allowed_missing, what=f"The checkpoint {source}", expect=must_hold
    )
    if earlier_format == "research" and config.enable_world:
        _init_boundaries_from_gemma(model)
    check_finite(model, keys, options.get("allow_non_finite_weights", False), f"The checkpoint {source}")
    model.config.checkpoint_kind = "partial"
    model.processor = _checkpoint_processor(source, subfolder, model.config, hub_kwargs_from(rest))
    model.generation_config = _generation_config(source, subfolder, hub_kwargs_from(rest), model.config)
    _finish(model)
    return (model, info) if rest.get("output_loading_info") else model


def _upgrade_earlier_rollout_buffers(sources: _Sources, config: TheWorldConfig, earlier: str | None) -> None:
    """0.1.0 stored the empty-prompt embedding as ``(1, 1, dim)`` (its one non-zero row) and no negative prompt; today
    both are ``(1, 512, dim)`` as the pipeline feeds the DiT."""
    key = "model.world_rollout.prompt_embeds"
    if not earlier or key not in sources.state or not isinstance(sources.state[key], torch.Tensor):
        return
    rows = sources.state[key]
    padded = torch.zeros(1, 512, rows.shape[-1], dtype=rows.dtype)
    padded[:, : rows.shape[1]] = rows
    sources.state[key] = padded
    sources.state["model.world_rollout.negative_prompt_embeds"] = torch.zeros_like(padded)
    sources.origin["model.world_rollout.negative_prompt_embeds"] = "checkpoint"


def _load_sources(cls, config, sources: _Sources, rest: dict, allowed_missing, what: str, expect: tuple = ()):
    """One ``from_pretrained(None, config, state_dict)`` over the opened sources; strict."""
    loading = {k: v for k, v in rest.items() if k not in HUB_KWARGS}
    dtype = loading.pop("dtype", None) or loading.pop("torch_dtype", None) or "auto"
    if dtype == "auto":
        dtype = config.dtype or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    loading.pop("output_loading_info", None)
    try:
        model, info, _ = _transformers_from_pretrained(
            cls, None, config=config, state_dict=sources.state, dtype=dtype, **loading
        )
    finally:
        sources.files.clear()
    _strict_report(info, allowed_missing, what)
    if expect:
        absent = sorted(
            k for k in model.state_dict() if k.startswith(expect) and sources.origin.get(k) != "checkpoint"
        )
        tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
        absent = [k for k in absent if k not in tied and not k.startswith(tuple(allowed_missing))]
        if absent:
            raise ValueError(
                f"{what} lacks tensors its configuration says were trained: {absent[:10]}"
                f"{' ...' if len(absent) > 10 else ''}. It is incomplete or belongs to another configuration; nothing "
                "was loaded."
            )
    model.config.base_fingerprints = config.base_fingerprints
    return model, info


def research_config(raw: dict) -> TheWorldConfig:
    """The earlier research code's ``config.json`` (``model_type: "the_world"``) as a `TheWorldConfig`."""
    keep = set(TheWorldConfig.__dataclass_fields__) - {"world_config"}
    data = {k: v for k, v in raw.items() if k in keep}
    for key in ("gemma_model_name", "cosmos_model_name"):
        if key in raw:
            data[key] = raw[key]
    data.pop("model_type", None)
    if data.get("num_world_steps") or data.get("load_full_cosmos_pipeline"):
        logger.info("Earlier checkpoint: num_world_steps/load_full_cosmos_pipeline never influenced its outputs.")
    data.update(
        num_world_steps=0,
        load_full_cosmos_pipeline=False,
        checkpoint_kind="partial",
        legacy_preprocessing=True,
        world_pooling=1,
        world_attention="causal",
        world_placement="after_bos",
        world_resize_mode="squash",
        world_encoder_dtype=None,
    )
    data.setdefault("world_image_size", 512)
    return TheWorldConfig(**data)


# ---------------------------------------------------------------------------------------------------------- shared
def _finish(model) -> None:
    """Freeze flags, world ids suppressed in generation, eval mode."""
    apply_freeze_flags(model)
    cfg = model.config
    if cfg.enable_world and model.generation_config is not None:
        suppress = set(model.generation_config.suppress_tokens or [])
        ids = [i for i in cfg.world_token_ids if i is not None]
        model.generation_config.suppress_tokens = sorted(suppress | set(ids))
    model.eval()


def apply_freeze_flags(model) -> None:
    """``requires_grad`` exactly as the config's freeze flags say (the world projector and embeddings always train)."""
    prefixes = tuple(p for p in model.config.trainable_prefixes() if not p.startswith("model.world_rollout."))
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(name.startswith(prefixes))
    if not model.config.freeze_gemma_language:
        model.lm_head.weight.requires_grad_(True)


def trainable_state_dict(model, state: dict | None = None) -> dict[str, torch.Tensor]:
    """What a partial checkpoint holds: everything training may change (and the fixed rollout prompts), tied copies
    dropped, plus any PEFT adapter weights."""
    prefixes = tuple(model.config.trainable_prefixes())
    state = model.state_dict() if state is None else state
    out = {k: v for k, v in state.items() if k.startswith(prefixes) or "lora_" in k}
    for target in getattr(model, "all_tied_weights_keys", {}) or {}:
        out.pop(target, None)
    return out


def _processor_settings(config: TheWorldConfig) -> dict:
    return {
        "num_world_tokens": config.num_world_tokens,
        "world_image_size": config.world_image_size,
        "world_placement": config.world_placement,
        "world_resize_mode": config.world_resize_mode,
        "legacy_preprocessing": config.legacy_preprocessing,
        "sliding_window": _sliding_window(config),
    }


def _sliding_window(config: TheWorldConfig) -> int | None:
    text = config.text_config
    if "sliding_attention" in set(getattr(text, "layer_types", None) or []):
        return text.sliding_window
    return None


def _gemma_processor(source: str, config: TheWorldConfig, hub: dict) -> TheWorldProcessor:
    """A `TheWorldProcessor` from a Gemma 3 model's processor files, with the world settings of ``config``."""
    return TheWorldProcessor.from_gemma(
        source,
        image_seq_length=config.mm_tokens_per_image,
        start_of_world_token=config.start_of_world_token,
        end_of_world_token=config.end_of_world_token,
        world_token=config.world_token,
        **_processor_settings(config),
        **hub,
    )


def _checkpoint_processor(source: str, subfolder: str, config: TheWorldConfig, hub: dict) -> TheWorldProcessor | None:
    """The checkpoint's processor; the Gemma base's when the checkpoint has none (earlier formats); ``None`` when
    neither is at hand (a full checkpoint of a model built from a config alone)."""
    if resolve_file(source, "processor_config.json", subfolder, **hub):
        kw = dict(hub)
        if subfolder:
            kw["subfolder"] = subfolder
        processor = TheWorldProcessor.from_pretrained(source, **kw)
    elif config.checkpoint_kind != "full":
        processor = _gemma_processor(config.gemma_model_name, config, _gemma_hub(config, hub))
    else:
        return None
    for key, value in _processor_settings(config).items():
        setattr(processor, key, value)
    ids = (processor.start_of_world_token_id, processor.end_of_world_token_id, processor.world_token_id)
    if config.enable_world and ids != config.world_token_ids:
        raise ValueError(
            f"The checkpoint's tokenizer gives the world tokens ids {ids} but its config records "
            f"{config.world_token_ids}: the tokenizer files do not belong to this checkpoint."
        )
    return processor


def _generation_config(source: str, subfolder: str, hub: dict, config: TheWorldConfig) -> GenerationConfig:
    path = resolve_file(source, "generation_config.json", subfolder, **hub)
    if path is None and config.gemma_model_name != source:
        path = resolve_file(config.gemma_model_name, "generation_config.json", "", **_gemma_hub(config, hub))
    if path is None:
        return GenerationConfig.from_model_config(config)
    return GenerationConfig.from_dict(read_json(path))


# ======================================================================================================================
# Saving
# ======================================================================================================================
def save_checkpoint(
    model,
    save_directory: str | os.PathLike,
    save_full_model: bool = False,
    max_shard_size: int | str = "5GB",
    push_to_hub: bool = False,
    state_dict: dict | None = None,
    is_main_process: bool = True,
    **kwargs,
):
    """Write a checkpoint folder and publish it atomically (see the module docstring).

    ``state_dict`` (what ``Trainer``/accelerate pass) replaces ``model.state_dict()`` as the source of the tensors.
    ``push_to_hub=True`` uploads the published folder (``repo_id=``, ``token=``, ``private=``, ``commit_message=``).
    """
    kwargs.pop("safe_serialization", None)  # always safetensors
    kwargs.pop("save_function", None)
    if not is_main_process:
        return None
    save_directory = os.path.abspath(os.fspath(save_directory))
    if os.path.isfile(save_directory):
        raise ValueError(f"{save_directory} is a file; save_pretrained needs a folder path.")
    parent, name = os.path.split(save_directory)
    os.makedirs(parent, exist_ok=True)
    _remove_stale_staging(parent, name)
    staging = os.path.join(parent, f".{name}{STAGING_TAG}{uuid.uuid4().hex[:12]}")
    os.makedirs(staging)
    kind = "full" if save_full_model else "partial"
    try:
        with open(os.path.join(staging, STAGING_MARKER), "w") as f:
            f.write(save_directory)
        state = write_weights(model, staging, kind, max_shard_size, state_dict)
        write_metadata_files(model, staging, kind)
        for hook in list(SAVE_HOOKS):
            hook(model, staging, kind, state)
        _carry_foreign_files(save_directory, staging)
        os.remove(os.path.join(staging, STAGING_MARKER))
        _finalise_permissions(staging)
        old = publish_folder(staging, save_directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if push_to_hub:
        repo_id = kwargs.pop("repo_id", None) or name
        return model.push_to_hub(repo_id, save_full_model=save_full_model, **kwargs)
    return None


def write_weights(model, folder: str, kind: str, max_shard_size, state_dict: dict | None) -> dict:
    """The weight files of a checkpoint; returns the tensors written (a partial save) or an empty dict (a full one)."""
    if kind == "full":
        PreTrainedModel.save_pretrained(
            model, folder, max_shard_size=max_shard_size, state_dict=state_dict, is_main_process=True
        )
        for stray in ("config.json", "generation_config.json"):  # written again below, with TheWorld's additions
            if os.path.exists(os.path.join(folder, stray)):
                os.remove(os.path.join(folder, stray))
        return {}
    state = trainable_state_dict(model, state_dict)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {
        "format": "pt",
        "checkpoint_kind": kind,
        "theworld_version": model.config.theworld_version,
        DIGEST_KEY: tensors_digest(state),
    }
    save_file(state, os.path.join(folder, "model.safetensors"), metadata=metadata)
    return state


def write_metadata_files(model, folder: str, kind: str) -> None:
    config = copy.deepcopy(model.config)
    config.checkpoint_kind = kind
    config.checkpoint_format_version = CHECKPOINT_FORMAT_VERSION
    config.architectures = ["TheWorldForConditionalGeneration"]
    config.auto_map = dict(AUTO_MAP)
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    with open(os.path.join(folder, "checkpoint_config.json"), "w", encoding="utf-8") as f:
        json.dump(checkpoint_summary(model, kind), f, indent=2)
    here = os.path.dirname(os.path.abspath(__file__))
    for filename in REMOTE_CODE_FILES:
        shutil.copyfile(os.path.join(here, filename), os.path.join(folder, filename))
    if model.processor is not None:
        model.processor.save_pretrained(folder)
        path = os.path.join(folder, "processor_config.json")
        if os.path.exists(path):
            data = read_json(path)
            data["auto_map"] = {"AutoProcessor": "processing_theworld.TheWorldProcessor"}
            data["processor_class"] = "TheWorldProcessor"
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)


def checkpoint_summary(model, kind: str) -> dict:
    """The seed document's backward-compatible ``checkpoint_config.json``."""
    cfg = model.config
    trainable, total = parameter_counts(model)
    return {
        "model_config": {
            "gemma_model_name": cfg.gemma_model_name,
            "gemma_revision": cfg.gemma_revision,
            "cosmos_model_name": cfg.cosmos_model_name,
            "cosmos_revision": cfg.cosmos_revision,
            "enable_world": cfg.enable_world,
            "world_projection_mode": cfg.world_projection_mode,
            "projection_architecture": cfg.projection_architecture,
            "world_image_size": cfg.world_image_size,
            "world_pooling": cfg.world_pooling,
            "num_world_steps": cfg.num_world_steps,
            "max_world_steps": cfg.max_world_steps,
            "num_world_tokens": cfg.num_world_tokens,
            "load_full_cosmos_pipeline": cfg.load_full_cosmos_pipeline,
        },
        "freeze_config": {
            "freeze_gemma_vision": cfg.freeze_gemma_vision,
            "freeze_gemma_language": cfg.freeze_gemma_language,
            "freeze_cosmos_vae": cfg.freeze_cosmos_vae,
        },
        "checkpoint_kind": kind,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
        "theworld_version": cfg.theworld_version,
    }


def parameter_counts(model) -> tuple[int, int]:
    """``(trainable, total)`` parameters, tied weights counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def _carry_foreign_files(old: str, staging: str) -> None:
    """Files of the previous folder that a checkpoint does not own (logs, trainer state ...) move along."""
    if not os.path.isdir(old):
        return
    owned = set(OWNED_FILES)
    for entry in os.scandir(old):
        if entry.name in owned or entry.name.startswith("model-") or entry.name.startswith(".theworld-"):
            continue
        target = os.path.join(staging, entry.name)
        if os.path.exists(target):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry.path, target)
        except FileNotFoundError:
            continue  # removed meanwhile


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _finalise_permissions(folder: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for entry in os.scandir(folder):
        if entry.is_file(follow_symlinks=False):
            os.chmod(entry.path, 0o666 & ~umask)


def _remove_stale_staging(parent: str, name: str) -> None:
    """Staging folders of this target left by a save that crashed (only ours: named for it and marked)."""
    prefix = f".{name}{STAGING_TAG}"
    for entry in os.scandir(parent):
        if not (entry.name.startswith(prefix) and entry.is_dir(follow_symlinks=False)):
            continue
        marker = os.path.join(entry.path, STAGING_MARKER)
        published_old = os.path.exists(os.path.join(entry.path, "config.json")) and not os.path.exists(marker)
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
        if (os.path.exists(marker) or published_old) and age > 60:
            shutil.rmtree(entry.path, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        func = libc.renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def publish_folder(staging: str, target: str) -> str | None:
    """Make ``staging`` the folder ``target`` in one step; returns where the previous folder now is (to delete), or
    ``None``. Linux: ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames (a reader may briefly find no folder)."""
    for _ in range(100):
        if not os.path.exists(target):
            try:
                os.rename(staging, target)
                return None
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                continue  # a concurrent save published first: exchange with it
        exchange = _renameat2()
        if exchange is not None:
            if exchange(_AT_FDCWD, os.fsencode(staging), _AT_FDCWD, os.fsencode(target), _RENAME_EXCHANGE) == 0:
                return staging
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                continue  # the target vanished meanwhile
            if err not in (errno.EINVAL, errno.ENOSYS, errno.EXDEV):
                raise OSError(err, os.strerror(err), target)
        trash = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}{STAGING_TAG}old-", dir=os.path.dirname(target))
        os.rmdir(trash)
        try:
            os.rename(target, trash)
        except FileNotFoundError:
            continue
        try:
            os.rename(staging, target)
        except OSError:
            os.rename(trash, target)
            raise
        return trash
    raise OSError(f"Could not publish {target}: it kept changing under concurrent saves.")


__all__ = ["load_pretrained", "save_checkpoint", "trainable_state_dict", "apply_freeze_flags", "SafetensorsFile"]
