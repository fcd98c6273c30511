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
* Checkpoints of theworld 0.1.0 (format 1: ``cosmos_vae.*``/``world_projector.projection.*`` keys) and of the earlier
  research code (``model_type: "the_world"``) are renamed on the fly; the research format keeps its input path
  (``legacy_preprocessing``) and a log line says which preprocessing is in force.
* Everything is strict: a missing, unexpected or mis-shaped key, a non-finite value (``allow_non_finite_weights=True``
  accepts them) or a tensor stored as an integer or bool dtype is an error naming the key; nothing loads partially.
* Loading is read-only and runs no code from the checkpoint: it never creates, moves or deletes a file (not even the
  leftovers of an interrupted save, which only `save_checkpoint` or an explicit `recover_interrupted_save` touch), and
  the processor and tokenizer are TheWorld's own classes over native transformers sub-processors.
* A local folder is read through one open handle of its directory, so a concurrent save that publishes another
  checkpoint under the same name cannot mix two checkpoints into one load (the load notices and reads again).

PEFT adapters
-------------
A model with a PEFT adapter (``peft.inject_adapter_in_model(LoraConfig(...), model)``, or transformers'
``model.add_adapter``) saves it inside the checkpoint: ``theworld_adapter_config.json`` (the adapter's name and PEFT
config) and the adapter tensors (``...q_proj.lora_A.default.weight`` ...) in ``model.safetensors`` next to the other
trained tensors, under their ``model.state_dict()`` names. Loading builds the model as usual (the wrapped base layers
under their plain names), injects the adapter from that config and loads its tensors strictly, with the same dtype and
finiteness checks as every checkpoint tensor. ``peft`` is imported only for a checkpoint that holds an adapter (an
`ImportError` says how to install it otherwise). The file is not PEFT's ``adapter_config.json``: transformers' Auto
classes and ``pipeline()`` take a hub repo holding that file for a bare adapter and load the base model its config
names instead of the repo. `merge_adapters` folds an adapter into the weights it adapts.

Saving
------
A checkpoint is written into a locked staging folder next to the target and published with one atomic directory
exchange (``renameat2(RENAME_EXCHANGE)`` on Linux; two renames elsewhere). Readers see the old checkpoint or the new
one, never a mixture; a crash (even ``kill -9``) or a full disk leaves the previous checkpoint intact and the next save
removes the dead staging folder; of two concurrent saves the last one wins. Saving the same model twice writes the same
bytes.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import difflib
import enum
import errno
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import threading
import time
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
    PROVENANCE_ATTRIBUTES,
    TheWorldConfig,
    TheWorldEncoderConfig,
)
from .processing_theworld import TheWorldProcessor
from .world_encoder_theworld import is_unused_diffusers_key

try:  # POSIX: staging folders are locked by their living saver
    import fcntl
except ImportError:  # pragma: no cover - Windows: stale staging folders are recognised by age instead
    fcntl = None

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
    "theworld_adapter_config.json",
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
#: Staging folders of a save of ``<parent>/<name>`` are ``<parent>/.<name>.theworld-staging-<random>``.
STAGING_TAG = ".theworld-staging-"
#: A staging folder being created (renamed to a ``STAGING_TAG`` name once its saver holds its lock).
NEW_STAGING_TAG = ".theworld-new-"
#: theworld 0.1.0 staged saves *inside* the checkpoint folder and marked a finished staging with this file.
LEGACY_STAGING_PREFIX = ".theworld-staging-"
LEGACY_COMPLETE_MARKER = ".theworld-complete"
#: safetensors metadata key holding the sha256 of a partial checkpoint's tensors (checked on load).
DIGEST_KEY = "theworld_tensors_sha256"
#: config.json key: sha256 of the rest of the saved config. ``AutoModel`` reads config.json before the weights; the
#: loader compares this digest to notice a concurrent save that replaced the folder in between: a config read from the
#: previous checkpoint and left unchanged is replaced by the folder's own; one the user changed is refused.
CONFIG_DIGEST_KEY = "theworld_config_digest"
#: Load-time keyword arguments of TheWorld itself (everything else goes to transformers' ``from_pretrained``).
THEWORLD_LOAD_KWARGS = ("ignore_fingerprint_mismatch", "allow_non_finite_weights", "checkpoint_name")
#: Keyword arguments of ``save_pretrained`` that only matter for ``push_to_hub=True``.
PUSH_KWARGS = ("repo_id", "token", "private", "commit_message", "commit_description", "revision", "create_pr", "tags")
#: Keyword arguments of `PreTrainedModel.save_pretrained` that have no effect on a TheWorld checkpoint.
IGNORED_SAVE_KWARGS = ("save_function", "save_peft_format", "save_original_format")
#: How often a load of a local folder is retried when a concurrent save replaced the folder while it was read.
LOAD_ATTEMPTS = 8

#: A checkpoint's PEFT adapter: ``{"format": 1, "adapter_name": ..., "peft_config": PeftConfig.to_dict()}``.
ADAPTER_FILE = "theworld_adapter_config.json"
ADAPTER_FORMAT_VERSION = 1
PEFT_INSTALL_HINT = "pip install peft (or pip install 'theworld[peft]')"
#: Model attribute listing the modules `merge_adapters` merged an adapter into (a partial save must hold them).
MERGED_ADAPTER_ATTR = "_theworld_merged_adapter_modules"

#: Called after the files of a checkpoint are staged, before it is published: ``hook(model, folder, kind, state)``.
#: The theworld package registers its model-card writer here (the card lives outside the remote-code files).
SAVE_HOOKS: list[Callable[[Any, str, str, dict], None]] = []
#: Uploads a published checkpoint folder: ``hook(folder, repo_id, **push_kwargs)``; registered by ``theworld.hub``
#: (hub upload lives outside the remote-code files).
UPLOAD_HOOKS: list[Callable[..., Any]] = []


# ======================================================================================================================
# safetensors: every read goes through safe_open, here
# ======================================================================================================================
class SafetensorsFile:
    """One safetensors file opened with ``safe_open`` (memory-mapped); tensors are read lazily, slice by slice.

    The safetensors library validates the header when the file is opened (offsets inside the file, no overlapping
    or missing byte ranges, known dtypes); a file it rejects is a `ValueError` naming the file.
    """

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


def _digest_update(digest, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of ``state``'s tensors (name order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        _digest_update(digest, name, state[name])
    return digest.hexdigest()


def is_float_dtype(stored: str) -> bool:
    """Whether a safetensors dtype string (``"F32"``, ``"BF16"``, ``"F8_E4M3"``, ``"I32"``, ``"BOOL"`` ...) is a
    floating-point type."""
    return stored.startswith(("F", "BF"))


def write_safetensors(state: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` with a canonical header, so that saving the same tensors twice writes the same
    bytes (safetensors writes its metadata map in a random order; the header of the file just written is re-serialised
    with sorted keys at the same length)."""
    save_file(state, path, metadata=metadata)
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) <= length:
            f.seek(8)
            f.write(canonical + b" " * (length - len(canonical)))


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
        if any(not _is_plain_name(s) for s in shards):
            raise ValueError(f"{index} names shards outside its folder ({shards[:5]}); the index is damaged.")
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


def _is_plain_name(name: Any) -> bool:
    """A file name with no directory part, not hidden, not ``.``/``..``: the only names recovery ever moves."""
    return (
        isinstance(name, str)
        and bool(name)
        and name == os.path.basename(name)
        and "/" not in name
        and "\\" not in name
        and "\x00" not in name
        and not name.startswith(".")
    )


def portable_source(source: str) -> str:
    """Hub ids stay as they are; an existing local folder is recorded as an absolute path (with a warning: a checkpoint
    that names a local base folder loads only where that folder exists)."""
    source = os.fspath(source)
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


class _PinnedFolder:
    """A local checkpoint folder held open for one load.

    Saves never change a published folder: they publish a new one under the same name (one atomic exchange) and then
    delete the old one, but only while no load reads it. A load holds a shared lock (``flock``) on the directory it
    reads; a save deletes a replaced folder only under an exclusive lock and otherwise leaves it to a later save. On
    Linux every file is read through ``/proc/self/fd/<n>``, the locked directory itself, so a load reads exactly the
    folder that was published when it started, even while newer ones are published. Where directories cannot be
    locked or read through ``/proc``, files are read by name and a load that saw the folder replaced reads again.
    Taking the lock changes no file or directory entry.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.fd: int | None = None
        self.locked = False
        self.names: list[str] = []
        for _ in range(LOAD_ATTEMPTS * 4):
            try:
                fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                break  # cannot hold directories open here (Windows): read by name
            locked = _shared_lock(fd)
            names = self._names(fd)
            if self._identity(folder) == self._fd_identity(fd):  # still the published folder, now held
                self.fd, self.names, self.locked = fd, names, locked
                break
            os.close(fd)  # replaced meanwhile: take the new one
        via_proc = self.fd is not None and os.path.isdir(f"/proc/self/fd/{self.fd}")
        self.root = f"/proc/self/fd/{self.fd}" if via_proc else folder

    @staticmethod
    def _identity(path: str) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    @staticmethod
    def _fd_identity(fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    @staticmethod
    def _names(fd: int) -> list[str]:
        try:
            return sorted(os.listdir(fd))
        except (TypeError, NotImplementedError, OSError):
            return []

    def intact(self) -> bool:
        """Whether everything read during the load came from the one folder that was published when it started."""
        if self.fd is None:
            return True
        if self.root != self.folder and (self.locked or self._names(self.fd) == self.names):
            return True  # read through the held directory, which no save deleted from
        return self._identity(self.folder) == self._fd_identity(self.fd) and self._names(self.fd) == self.names

    def shown(self, text: str) -> str:
        return text.replace(self.root, self.folder) if self.root != self.folder else text

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _shared_lock(fd: int) -> bool:
    """Take a shared lock on the directory ``fd`` (waiting while a save deletes it); ``False`` where impossible."""
    if fcntl is None:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        return False
    return True


def _check_legacy_staging(folder: str) -> None:
    """Refuse a folder in which a theworld 0.1.0 save was interrupted after it had committed: some of its files may
    be from the new checkpoint and some from the old one. Loading only looks; it repairs nothing."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(LEGACY_STAGING_PREFIX) and entry.is_dir(follow_symlinks=False):
            if os.path.lexists(os.path.join(entry.path, LEGACY_COMPLETE_MARKER)):
                raise ValueError(
                    f"{folder} holds {entry.name}/, a save by theworld 0.1.0 that was interrupted while publishing: "
                    "the folder may mix two checkpoints, so it is not loaded (loading never modifies files). Repair "
                    "it explicitly with theworld.checkpoint_theworld.recover_interrupted_save(folder), or save the "
                    "checkpoint again."
                )


def recover_interrupted_save(folder: str) -> list[str]:
    """Finish a save by theworld 0.1.0 that was killed while publishing into ``folder`` (an explicit repair; loading
    never does this). Returns the file names moved into place.

    A staging folder ``.theworld-staging-*`` inside ``folder`` with a ``.theworld-complete`` marker had all its files
    written: the files the marker lists are moved into ``folder``, then weight files of the previous checkpoint that
    the marker does not list are removed. Only plain file names are honoured (no directory part, not hidden, regular
    files of the staging folder); anything else in a marker is ignored with a warning. A staging folder without a
    marker never published anything and is removed.
    """
    moved: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not (entry.name.startswith(LEGACY_STAGING_PREFIX) and entry.is_dir(follow_symlinks=False)):
            continue
        marker = os.path.join(entry.path, LEGACY_COMPLETE_MARKER)
        if os.path.isfile(marker):
            listed = read_json(marker)
            names = [n for n in listed if _is_plain_name(n)] if isinstance(listed, list) else []
            ignored = [n for n in listed if n not in names] if isinstance(listed, list) else [listed]
            if ignored:
                logger.warning("%s lists entries that are not plain file names; ignored: %s", marker, ignored[:10])
            for name in sorted(names, key=lambda n: (n == "config.json", n)):  # config.json last, as 0.1.0 did
                src = os.path.join(entry.path, name)
                if os.path.isfile(src) and not os.path.islink(src):
                    os.replace(src, os.path.join(folder, name))
                    moved.append(name)
            weights = ("model.safetensors", "model.safetensors.index.json")
            if any(n in weights for n in names):  # the new weights are in place: drop the previous checkpoint's
                for name in os.listdir(folder):
                    path = os.path.join(folder, name)
                    stale = name in weights or (name.startswith("model-") and name.endswith(".safetensors"))
                    if stale and name not in names and os.path.isfile(path) and not os.path.islink(path):
                        os.remove(path)
        shutil.rmtree(entry.path, ignore_errors=True)
    return moved


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
        allow_non_finite_weights: accept NaN/Inf in the checkpoint's tensors (refused by default, naming them).
        **kwargs: hub arguments (``revision``, ``token``, ``cache_dir``, ``local_files_only`` ...), transformers'
            loading arguments (``dtype``, ``device_map``, ``attn_implementation``, ``output_loading_info``,
            ``key_mapping`` ...) and `TheWorldConfig` fields: world settings for a fresh build, or load-time overrides
            for a checkpoint (freeze flags, base sources; other fields cannot change at load time).

    ``trust_remote_code`` is accepted and ignored: nothing from the checkpoint is ever executed here.
    """
    if model_args:
        raise TypeError("TheWorld's from_pretrained takes no positional arguments besides the model id or path.")
    kwargs.pop("trust_remote_code", None)
    if source is None:
        return _load_full(cls, None, kwargs)
    source = os.fspath(source)
    name = kwargs.pop("checkpoint_name", None)
    if name:
        kwargs["subfolder"] = name
    folder = os.path.join(source, kwargs["subfolder"]) if kwargs.get("subfolder") else source
    if not os.path.isdir(folder):
        result = _load_once(cls, source, kwargs)  # a hub repo id: read from the hub cache, which nothing here writes
        _record_source(result, source)
        return result
    for attempt in range(LOAD_ATTEMPTS):
        pin = _PinnedFolder(folder)
        try:
            try:
                result = _load_once(cls, pin.root, dict(kwargs, subfolder=""), shown=folder)
            except Exception as err:
                if pin.intact():
                    err.args = tuple(pin.shown(a) if isinstance(a, str) else a for a in err.args)
                    raise
                result = None
            if result is not None and pin.intact():
                _record_source(result, source if not kwargs.get("subfolder") else folder)
                return result
        finally:
            pin.close()
        logger.info("%s was replaced by a concurrent save while it was read; reading the new checkpoint.", folder)
        time.sleep(0.02 * (attempt + 1))
    raise RuntimeError(
        f"{folder} was replaced by concurrent saves {LOAD_ATTEMPTS} times while loading it; load it again when the "
        "saving stops."
    )


def _record_source(result, source: str) -> None:
    model = result[0] if isinstance(result, tuple) else result
    model.config.name_or_path = source
    model.name_or_path = source
    processor = getattr(model, "processor", None)
    for part in (processor, getattr(processor, "tokenizer", None)):
        if part is not None and hasattr(part, "name_or_path"):
            part.name_or_path = source


def _load_once(cls, source: str, kwargs: dict, shown: str | None = None):
    """One load of ``source``; ``shown`` names a pinned local folder in messages."""
    subfolder = kwargs.get("subfolder") or ""
    hub = hub_kwargs_from(kwargs)
    config_path = resolve_file(source, "config.json", subfolder, **hub)
    if config_path is None:
        where = shown or (f"{source}/{subfolder}" if subfolder else source)
        raise FileNotFoundError(
            f"No config.json at {where}. Pass a Gemma 3 model or a TheWorld checkpoint (a folder or hub repo id); for "
            "a hub repo check the id and revision, and that the hub cache holds it when HF_HUB_OFFLINE=1."
        )
    if shown is not None:
        _check_legacy_staging(source)
    raw = read_json(config_path)
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type == "gemma3":
        return _load_fresh(cls, source, raw, config_path, kwargs, name=shown or source)
    if model_type == "the_world":
        return _load_partial(cls, source, raw, kwargs, earlier_format="research", shown=shown)
    if model_type == "theworld":
        stored = TheWorldConfig.from_dict(copy.deepcopy(raw))
        earlier = "0.1.0" if int(raw.get("checkpoint_format_version", 1)) < 2 else None
        adapter = read_adapter_file(source, subfolder, hub, shown or source) if earlier is None else None
        if stored.checkpoint_kind == "full" and earlier is None and adapter is None:
            return _load_full(cls, source, kwargs, stored=stored, shown=shown)
        # CODEPATH: full checkpoints with a PEFT adapter, and 0.1.0 full checkpoints (every weight under 0.1.0's
        # names), load like a partial checkpoint without bases (their adapter tensors / names need handling).
        bases = stored.checkpoint_kind != "full"
        return _load_partial(
            cls, source, raw, kwargs, earlier_format=earlier, bases=bases, stored=stored, adapter=adapter, shown=shown
        )
    raise ValueError(
        f"{shown or source} has model_type {model_type!r}; TheWorld loads Gemma 3 models ('gemma3') and TheWorld "
        "checkpoints ('theworld', or 'the_world' from the earlier research code)."
    )


# ---------------------------------------------------------------------------------------------------------- config
#: `TheWorldConfig` fields a config handed in by ``AutoModel`` is compared on (its user overrides); the sub-configs
#: and the provenance bookkeeping written by saves are not.
_NOT_COMPARED = ("text_config", "vision_config", "world_config", "base_models", "checkpoint_kind",
                 "checkpoint_format_version", "theworld_version", "dtype")  # fmt: skip


def _config_fields() -> list[str]:
    fields = [f for f in TheWorldConfig.__dataclass_fields__ if not f.startswith("_") and f not in _NOT_COMPARED]
    return fields + list(PROVENANCE_ATTRIBUTES)


def _split_kwargs(kwargs: dict) -> tuple[dict, dict, dict]:
    """``(config field overrides, TheWorld options, transformers loading kwargs)``."""
    fields = set(_config_fields())
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in fields}
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in THEWORLD_LOAD_KWARGS}
    # CODEPATH: a misspelt TheWorld field or option would reach the model's __init__ as an anonymous TypeError.
    known = sorted(fields | set(THEWORLD_LOAD_KWARGS))
    for key in kwargs:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            raise TypeError(
                f"TheWorld.from_pretrained() got an unexpected keyword argument {key!r}; did you mean {close[0]!r}? "
                "Fix the spelling (TheWorld's config fields and loading options are listed in TheWorldConfig's "
                "docstring and THEWORLD_LOAD_KWARGS)."
            )
    return overrides, options, kwargs


def _apply_overrides(stored: TheWorldConfig, given: TheWorldConfig | None, overrides: dict, source: str):
    """The checkpoint's config with the allowed load-time changes; any other change is refused.

    ``given`` is the config ``AutoModel`` read (``AutoConfig.from_pretrained(source, **user_kwargs)``): its fields
    that differ from the checkpoint's are the user's overrides, checked exactly like keyword arguments.
    """
    config = copy.deepcopy(stored)
    requested = dict(overrides)
    if given is not None:
        config._attn_implementation = given._attn_implementation
        theirs, ours = getattr(given, CONFIG_DIGEST_KEY, None), getattr(stored, CONFIG_DIGEST_KEY, None)
        if theirs is not None and ours is not None and theirs != ours:
            if config_digest(given) == theirs:
                given = None  # another save's config as it was saved, nothing changed by the user: use this one's
            else:
                raise ValueError(
                    f"The config handed to from_pretrained (config=, or the one AutoModel read first) is not the "
                    f"config of {source}: it was read from another checkpoint, or a concurrent save replaced {source} "
                    "after it was read. Load again; to change settings pass them as keyword arguments, not config=."
                )
    if given is not None:
        for key in _config_fields():
            if getattr(given, key, None) != getattr(stored, key, None):
                requested.setdefault(key, getattr(given, key, None))
    requested = {k: v for k, v in requested.items() if v != getattr(stored, k, None)}
    for key, value in requested.items():
        if key in ARCHITECTURE_FIELDS:
            raise ValueError(
                f"The checkpoint was built with {key}={getattr(stored, key)!r} but {key}={value!r} was passed. "
                f"{key} is an architecture field and cannot change at load time: drop the argument, or build a new "
                "model from the Gemma base with the new setting."
            )
        if key not in LOAD_TIME_FIELDS:
            raise ValueError(
                f"{key} cannot change at load time (the checkpoint has {key}={getattr(stored, key)!r}, "
                f"{value!r} was passed). Load-time overrides are: {', '.join(LOAD_TIME_FIELDS)}."
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
    # CODEPATH: enable_world=False builds are exactly Gemma 3 and read nothing from Cosmos; world builds read its VAE.
    if config.enable_world:
        vae_raw, vae_path = _vae_source_config(cosmos, cosmos_revision, hub)
        config.world_config = TheWorldEncoderConfig.from_vae_config(vae_raw)
        config.cosmos_revision = commit_of(vae_path) or cosmos_revision
        # CODEPATH: rollout builds (num_world_steps > 0 or load_full_cosmos_pipeline) also record the DiT geometry.
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


def _pinned_hub(hub: dict, revision: str | None) -> dict:
    """Hub kwargs for a base model: its own recorded revision (when there is one) instead of the checkpoint's."""
    kw = dict(hub)
    kw.pop("revision", None)
    if revision:
        kw["revision"] = revision
    return kw


def _cosmos_hub(config: TheWorldConfig, hub: dict) -> dict:
    return _pinned_hub(hub, config.cosmos_revision)


def _gemma_hub(config: TheWorldConfig, hub: dict) -> dict:
    return _pinned_hub(hub, config.gemma_revision)


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


#: Gemma 3 checkpoints on the hub keep the pre-5.x key layout; TheWorld's state dict uses transformers 5's. Base keys
#: are renamed before loading, so that a checkpoint tensor (already in today's layout) always replaces its base tensor.
GEMMA_KEY_RENAMES = (
    ("language_model.model.", "model.language_model."),
    ("language_model.lm_head.", "lm_head."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def gemma_key(key: str) -> str:
    """Today's name of a Gemma 3 base tensor (hub layout or transformers 5 layout)."""
    for old, new in GEMMA_KEY_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def fp32_prefixes(config: TheWorldConfig) -> tuple[str, ...]:
    """State-dict prefixes kept in float32 whatever the load dtype (``_keep_in_fp32_modules_strict``)."""
    prefixes = ("model.world_projector.", "model.world_boundary_embeddings.", "model.world_step_embeddings.")
    # CODEPATH: world_encoder_dtype="float32" checkpoints (the default) keep the encoder in float32; None follows.
    if config.world_encoder_dtype == "float32":
        prefixes += ("model.world_encoder.",)
    return prefixes


def _target_dtype(requested, config: TheWorldConfig) -> torch.dtype:
    """The dtype the model's parameters load in (before the float32 exceptions)."""
    if requested in (None, "auto"):
        requested = config.dtype or torch.float32
    if isinstance(requested, str):
        requested = getattr(torch, requested, torch.float32)
    return requested if isinstance(requested, torch.dtype) else torch.float32


def check_float_tensors(f: SafetensorsFile, param_dtype: Callable[[str], torch.dtype], names: dict | None = None):
    """Every TheWorld weight and buffer is floating point: a tensor stored as an integer or bool dtype (a damaged
    header, a foreign file) cannot represent it. The error names the key, the stored dtype and the parameter's."""
    for key in f.keys():
        stored = f.dtype(key)
        if is_float_dtype(stored):
            continue
        name = (names or {}).get(key, key)
        raise ValueError(
            f"{f.path}: tensor {key!r} is stored as {stored}, but the parameter {name!r} is {param_dtype(name)}: an "
            f"integer or bool dtype ({stored}) cannot represent a floating-point parameter. The file is damaged or "
            "belongs to another model; nothing was loaded."
        )


def _non_finite_error(bad: list[str], where: str, allow: bool) -> None:
    if not bad:
        return
    message = (
        f"{where} holds non-finite values (NaN or Inf) in {bad[:10]}{' ...' if len(bad) > 10 else ''}. It was saved "
        "from a diverged run or is damaged; pass allow_non_finite_weights=True to load it anyway."
    )
    if not allow:
        raise ValueError(message)
    logger.warning(message)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or Inf. One summing pass (a NaN or Inf anywhere makes the float32 sum non-finite;
    about 25x faster than ``isfinite().all()`` on CPU); only a sum that overflowed is checked element by element."""
    if not tensor.is_floating_point() or tensor.numel() == 0 or tensor.device.type == "meta":
        return True
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(tensor).all())


def check_finite(model: torch.nn.Module, keys: Iterable[str] | None, allow: bool, where: str) -> None:
    """Refuse NaN/Inf in the named parameters/buffers (all when ``keys`` is ``None``); ``allow_non_finite_weights=True``
    downgrades the error to a warning. Tensors offloaded to the meta device are not checked."""
    state = model.state_dict()
    names = state if keys is None else [k for k in keys if k in state]
    _non_finite_error([k for k in names if not all_finite(state[k])], where, allow)


class _Sources:
    """The safetensors files of one load, kept open (memory-mapped) until transformers has read them."""

    def __init__(self, config: TheWorldConfig, dtype: torch.dtype):
        self.config = config
        self.dtype = dtype
        self.files: list[SafetensorsFile] = []
        self.state: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.adapter_state: dict[str, Any] = {}
        self.fingerprints: dict[str, dict[str, str]] = {"gemma": {}, "cosmos": {}}

    def param_dtype(self, key: str) -> torch.dtype:
        return torch.float32 if key.startswith(fp32_prefixes(self.config)) else self.dtype

    def open(self, path: str) -> SafetensorsFile:
        f = SafetensorsFile(path)
        self.files.append(f)
        return f

    def add_gemma(self, hub: dict) -> None:
        config = self.config
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
            names = {k: gemma_key(k) for k in f.keys()}
            check_float_tensors(f, self.param_dtype, names)
            self.fingerprints["gemma"][os.path.basename(path)] = f.fingerprint()
            for key, name in names.items():
                self.state[name] = f.lazy(key)
                self.origin[name] = "gemma"

    def add_cosmos(self, hub: dict) -> None:
        config = self.config
        kw = _cosmos_hub(config, hub)
        for path in weight_files(config.cosmos_model_name, "diffusion_pytorch_model", "vae", **kw):
            f = self.open(path)
            keys = [k for k in f.keys() if k.startswith(("encoder.", "quant_conv.")) and not is_unused_diffusers_key(k)]
            names = {k: "model.world_encoder." + k for k in keys}
            check_float_tensors(_Subset(f, keys), self.param_dtype, names)
            self.fingerprints["cosmos"]["vae/" + os.path.basename(path)] = f.fingerprint(keys)
            for key, name in names.items():
                self.state[name] = f.lazy(key)
                self.origin[name] = "cosmos"
        # CODEPATH: only rollout checkpoints (num_world_steps > 0 or load_full_cosmos_pipeline) read the DiT.
        if config.rollout_enabled:
            for path in weight_files(config.cosmos_model_name, "diffusion_pytorch_model", "transformer", **kw):
                f = self.open(path)
                names = {k: "model.world_rollout.transformer." + k for k in f.keys()}
                check_float_tensors(f, self.param_dtype, names)
                self.fingerprints["cosmos"]["transformer/" + os.path.basename(path)] = f.fingerprint()
                for key, name in names.items():
                    self.state[name] = f.lazy(key)
                    self.origin[name] = "cosmos"

    def add_checkpoint(
        self,
        source: str,
        subfolder: str,
        hub: dict,
        earlier: bool,
        allow_non_finite: bool,
        where: str,
        adapter_prefix: str | None = None,
    ) -> tuple[list[str], dict]:
        """The checkpoint's tensors, last (they override the bases), after checking their dtypes, their recorded
        sha256 and that they are finite. Returns their (today's) keys and the header metadata.

        With ``adapter_prefix`` (the checkpoint holds a PEFT adapter, e.g. ``"lora_"``), the adapter's tensors go to
        ``self.adapter_state`` (loaded after the adapter is injected) and the base layers PEFT wrapped
        (``...q_proj.base_layer.weight``) load under their plain names (``...q_proj.weight``)."""
        keys, metadata, bad = [], {}, []
        for path in weight_files(source, "model", subfolder, **hub):
            f = self.open(path)
            meta = f.metadata()
            recorded = meta.pop(DIGEST_KEY, None)
            metadata.update(meta)
            names = {}
            for key in f.keys():
                name = rename_earlier_key(key) if earlier else key
                if name is not None:  # None: an earlier checkpoint's tensor that never influenced outputs
                    names[key] = name
            check_float_tensors(f, self.param_dtype, names)
            digest = hashlib.sha256() if recorded is not None else None
            for key in sorted(f.keys()):  # one tensor in memory at a time
                tensor = f.tensor(key)
                if digest is not None:
                    _digest_update(digest, key, tensor)
                if key in names and not all_finite(tensor):
                    bad.append(names[key])
            if digest is not None and digest.hexdigest() != recorded:
                raise ValueError(
                    f"{path} is corrupt: its tensors do not match the sha256 recorded when it was saved. Re-download "
                    "it (delete it from the hub cache) or save the checkpoint again."
                )
            for key, name in names.items():
                if adapter_prefix is not None and is_adapter_key(name, adapter_prefix):
                    self.adapter_state[name] = f.lazy(key)
                    continue
                if adapter_prefix is not None:
                    name = unwrapped_key(name)
                self.state[name] = f.lazy(key)
                self.origin[name] = "checkpoint"
                keys.append(name)
        _non_finite_error(bad, where, allow_non_finite)
        return keys, metadata


class _Subset:
    """`SafetensorsFile` restricted to some keys (for `check_float_tensors`)."""

    def __init__(self, f: SafetensorsFile, keys: list[str]):
        self.path, self._f, self._keys = f.path, f, keys

    def keys(self) -> list[str]:
        return list(self._keys)

    def dtype(self, key: str) -> str:
        return self._f.dtype(key)


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


def _key_problems(missing: list[str], unexpected: list[str], mismatched: list[str]) -> list[str]:
    """The parts of a strict-load error: the first ten unexpected, missing and mis-shaped keys."""
    problems = []
    for label, keys in (("unexpected keys", unexpected), ("missing keys", missing), ("shape mismatches", mismatched)):
        if keys:
            problems.append(f"{label} {keys[:10]}{' ...' if len(keys) > 10 else ''}")
    return problems


def _strict_report(info: dict, allowed_missing: Iterable[str], what: str) -> None:
    allowed = tuple(allowed_missing)
    missing = sorted(k for k in info.get("missing_keys", []) if not k.startswith(allowed))
    unexpected = sorted(info.get("unexpected_keys", []))
    mismatched = []
    for item in sorted(info.get("mismatched_keys", []), key=str):
        if isinstance(item, tuple) and len(item) == 3:
            key, theirs, ours = item
            mismatched.append(f"{key}: checkpoint {tuple(theirs)} vs model {tuple(ours)}")
        else:
            mismatched.append(str(item))
    errors = [str(e) for e in info.get("error_msgs", [])]
    problems = _key_problems(missing, unexpected, mismatched)
    if errors:
        problems.append(f"errors {errors[:3]}")
    if problems:
        raise ValueError(
            f"{what} does not match the model: {'; '.join(problems)}. It belongs to another configuration or is "
            "damaged; nothing was loaded."
        )


class _LoadReportCapture(logging.Filter):
    """Holds back transformers' "LOAD REPORT" warning of this thread's load: TheWorld's own strict check
    (`_strict_report`) judges the same loading info and raises on every real problem, so the report would only repeat
    it, or list the world modules a fresh build initialises on purpose. If transformers itself fails, the held-back
    report is logged after all (its error refers to it)."""

    def __init__(self):
        super().__init__()
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.thread == self.thread and "LOAD REPORT" in str(record.msg):
            self.records.append(record)
            return False
        return True


def _transformers_from_pretrained(cls, source, **kwargs):
    """transformers' own ``PreTrainedModel.from_pretrained`` for ``cls``; returns ``(model, loading_info)``."""
    kwargs.pop("output_loading_info", None)
    kwargs["ignore_mismatched_sizes"] = True  # mismatches come back in the loading info: _strict_report refuses them
    target = logging.getLogger("transformers.modeling_utils")
    capture = _LoadReportCapture()
    target.addFilter(capture)
    failed = True
    try:
        model, info = PreTrainedModel.from_pretrained.__func__(cls, source, output_loading_info=True, **kwargs)
        failed = False
    finally:
        target.removeFilter(capture)
        if failed:
            for record in capture.records:
                target.handle(record)
    return model, info


# ---------------------------------------------------------------------------------------------------------- full
def _load_full(cls, source: str | None, kwargs: dict, stored: TheWorldConfig | None = None, shown: str | None = None):
    """A full checkpoint (every weight), or ``from_pretrained(None, config=..., state_dict=...)``. ``shown``: the
    folder name for messages when ``source`` is a pinned local folder."""
    overrides, options, rest = _split_kwargs(dict(kwargs))
    given = rest.pop("config", None)
    want_info = rest.pop("output_loading_info", False)
    allow = options.get("allow_non_finite_weights", False)
    if stored is None:  # config + state_dict in memory (transformers' form)
        if not isinstance(given, TheWorldConfig) or rest.get("state_dict") is None:
            raise ValueError(
                "from_pretrained(None, ...) needs config=TheWorldConfig(...) and state_dict={name: tensor} (the "
                "in-memory form); otherwise pass a checkpoint folder, a hub repo id or a Gemma 3 model."
            )
        config = copy.deepcopy(given)
        for key, value in overrides.items():
            setattr(config, key, value)
        config.check_world()
        dtype = _target_dtype(rest.get("dtype"), config)
        for key, value in rest["state_dict"].items():
            if isinstance(value, torch.Tensor) and not value.is_floating_point():
                param = torch.float32 if key.startswith(fp32_prefixes(config)) else dtype
                raise ValueError(
                    f"state_dict[{key!r}] is {value.dtype}, but the parameter {key!r} is {param}: an integer or bool "
                    "tensor cannot represent a floating-point parameter."
                )
        what = "The state_dict"
    else:
        config = _apply_overrides(stored, given if isinstance(given, TheWorldConfig) else None, overrides, shown or source)
        hub = hub_kwargs_from(rest)
        dtype = _target_dtype(rest.get("dtype", rest.get("torch_dtype")), config)
        for path in weight_files(source, "model", rest.get("subfolder") or "", **hub):
            check_float_tensors(
                SafetensorsFile(path), lambda k: torch.float32 if k.startswith(fp32_prefixes(config)) else dtype
            )
        what = f"The full checkpoint {shown or source}"
    model, info = _transformers_from_pretrained(cls, source, config=config, **rest)
    _strict_report(info, (), what)
    check_finite(model, None, allow, what)
    if stored is not None:
        model.config.checkpoint_kind = "full"
        subfolder = rest.get("subfolder") or ""
        model.processor = _checkpoint_processor(source, subfolder, model.config, hub_kwargs_from(rest))
    _finish(model)
    return (model, info) if want_info else model


# ---------------------------------------------------------------------------------------------------------- fresh
def _load_fresh(cls, source: str, raw: dict, config_path: str, kwargs: dict, name: str):
    """A new TheWorld around the Gemma 3 model ``name`` (read at ``source``): the world modules initialised, the
    bases loaded."""
    overrides, options, rest = _split_kwargs(dict(kwargs))
    if rest.pop("config", None) is not None:
        raise ValueError(f"{name} is a Gemma 3 model: pass the world settings as keyword arguments, not config=.")
    hub = hub_kwargs_from(rest)
    subfolder = rest.pop("subfolder", "") or ""
    if subfolder:
        raise ValueError("subfolder= applies to TheWorld checkpoints; pass the Gemma folder itself.")
    config = fresh_config(name, raw, config_path, overrides, hub)
    processor = _gemma_processor(source, config, hub_kwargs_from(rest))
    config.start_of_world_token_id = processor.start_of_world_token_id
    config.end_of_world_token_id = processor.end_of_world_token_id
    config.world_token_id = processor.world_token_id
    sources = _Sources(config, _target_dtype(rest.get("dtype", rest.get("torch_dtype")), config))
    sources.add_gemma(hub)
    # CODEPATH: enable_world=False builds read nothing from Cosmos; world builds read its VAE encoder (and DiT).
    if config.enable_world:
        sources.add_cosmos(hub)
    config.base_fingerprints = sources.fingerprints
    created = ("model.world_projector.", "model.world_boundary_embeddings.", "model.world_step_embeddings.",
               "model.world_rollout.prompt_embeds", "model.world_rollout.negative_prompt_embeds")  # fmt: skip
    want_info = rest.get("output_loading_info", False)
    model, info = _load_sources(cls, config, sources, rest, allowed_missing=created, what=f"The Gemma 3 base {name}")
    # CODEPATH: world builds start the boundary embeddings at Gemma's image markers; Gemma-only builds have none.
    if config.enable_world:
        _created_in_float32(model)
        _init_boundaries_from_gemma(model)
        # CODEPATH: rollout builds compute the fixed Cosmos prompt embeddings once, here.
        if config.rollout_enabled:
            _fill_rollout_prompts(model, hub)
    model.processor = processor
    model.generation_config = _generation_config(source, "", hub_kwargs_from(rest), config)
    _finish(model)
    return (model, info) if want_info else model


def _created_in_float32(model) -> None:
    """The world modules a fresh build creates are float32 whatever the load dtype (``_keep_in_fp32_modules_strict``):
    transformers 5 materialises keys missing from the state dict in the load dtype without that plan."""
    for name in ("world_projector", "world_boundary_embeddings", "world_step_embeddings"):
        module = getattr(model.model, name, None)
        if module is not None:
            module.float()


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
def _load_partial(
    cls,
    source: str,
    raw: dict,
    kwargs: dict,
    earlier_format: str | None,
    bases: bool = True,
    stored: TheWorldConfig | None = None,
    adapter: dict | None = None,
    shown: str | None = None,
):
    """A partial checkpoint: its bases at the pinned revisions plus the checkpoint's tensors, strictly. With
    ``bases=False`` (a 0.1.0 full checkpoint, or a full checkpoint with an adapter) the checkpoint alone must hold
    every weight. ``stored``: the config of ``raw``, when already parsed. ``adapter``: the checkpoint's adapter file
    (`read_adapter_file`), injected after the model is built. ``shown``: the folder name to use in messages
    when ``source`` is a pinned local folder (``/proc/self/fd/N``)."""
    label = f"The checkpoint {shown or source}"
    peft_config = adapter_peft_config(adapter, shown or source) if adapter is not None else None
    overrides, options, rest = _split_kwargs(dict(kwargs))
    given = rest.pop("config", None)
    hub = hub_kwargs_from(rest)
    subfolder = rest.pop("subfolder", "") or ""
    if earlier_format == "research":
        stored = research_config(raw)
        if "world_image_size" in overrides and "world_image_size" not in raw:
            # The research code never recorded its world image size (it squashed every image to 512 px).
            stored.world_image_size = overrides.pop("world_image_size")
    elif stored is None:
        stored = TheWorldConfig.from_dict(copy.deepcopy(raw))
    config = _apply_overrides(stored, given if isinstance(given, TheWorldConfig) else None, overrides, shown or source)
    processor = None
    # CODEPATH: research-format checkpoints recorded neither their encoder geometry (read from their Cosmos source)
    # nor processor files or world token ids (the Gemma base's processor gives them, as at a fresh build).
    if earlier_format == "research" and config.enable_world:
        vae_raw, _ = _vae_source_config(config.cosmos_model_name, config.cosmos_revision, hub)
        config.world_config = TheWorldEncoderConfig.from_vae_config(vae_raw)
        config.check_world()
        processor = _gemma_processor(config.gemma_model_name, config, _gemma_hub(config, hub))
        config.start_of_world_token_id = processor.start_of_world_token_id
        config.end_of_world_token_id = processor.end_of_world_token_id
        config.world_token_id = processor.world_token_id
    sources = _Sources(config, _target_dtype(rest.get("dtype", rest.get("torch_dtype")), config))
    if bases:
        sources.add_gemma(hub)
        # CODEPATH: world checkpoints read the Cosmos VAE encoder (and DiT); enable_world=False ones are Gemma only.
        if config.enable_world:
            sources.add_cosmos(hub)
    allow = options.get("allow_non_finite_weights", False)
    prefix = adapter_key_prefix(peft_config) if peft_config is not None else None
    sources.add_checkpoint(
        source, subfolder, hub, earlier_format is not None, allow, label, adapter_prefix=prefix
    )
    if earlier_format is None:
        ignore = options.get("ignore_fingerprint_mismatch", False)
        _check_fingerprints(stored.base_fingerprints, sources.fingerprints, ignore)
    elif bases:
        config.base_fingerprints = sources.fingerprints  # earlier fingerprints use another scheme: record today's
    _upgrade_earlier_rollout_buffers(sources, earlier_format)
    if earlier_format:
        writer = "theworld 0.1.0" if earlier_format == "0.1.0" else "the earlier research code"
        # CODEPATH: research-format checkpoints keep their input path (legacy_preprocessing); 0.1.0 ones do not.
        if config.legacy_preprocessing:
            preprocessing = (
                f"the earlier input path is in force (legacy_preprocessing=True: images squashed to "
                f"{config.world_image_size} px, pixels in [0, 255], unnormalised latents)"
            )
        else:
            preprocessing = (
                f"today's input path is in force (legacy_preprocessing=False: {config.world_resize_mode} to "
                f"{config.world_image_size} px, pixels in [-1, 1], normalised latents) with its world settings "
                f"({config.world_placement} placement, {config.world_attention} world attention)"
            )
        logger.warning("Loading a checkpoint written by %s: %s.", writer, preprocessing)
    if bases:
        # What the checkpoint must hold is what its own freeze flags made trainable, whatever the load-time flags say.
        must_hold = tuple(stored.trainable_prefixes())
    else:
        must_hold = ()
    # The research code never saved its boundary embeddings (they lived in the frozen vocabulary matrix).
    allowed_missing = ("model.world_boundary_embeddings.",) if earlier_format == "research" else ()
    model, info = _load_sources(
        cls, config, sources, rest, allowed_missing=allowed_missing, what=label, expect=must_hold
    )
    # CODEPATH: research-format checkpoints start the unsaved boundary embeddings at Gemma's image markers.
    if earlier_format == "research" and config.enable_world:
        _init_boundaries_from_gemma(model)
    # CODEPATH: checkpoints saved with a PEFT adapter (LoRA ...) get it back, injected and loaded strictly.
    if adapter is not None:
        attach_adapter(model, adapter["adapter_name"], peft_config, sources.adapter_state, label)
    model.config.checkpoint_kind = "partial" if bases else "full"
    model.processor = processor or _checkpoint_processor(source, subfolder, model.config, hub_kwargs_from(rest))
    model.generation_config = _generation_config(source, subfolder, hub_kwargs_from(rest), model.config)
    _finish(model)
    return (model, info) if rest.get("output_loading_info") else model


def _upgrade_earlier_rollout_buffers(sources: _Sources, earlier: str | None) -> None:
    """0.1.0 stored the empty-prompt embedding as ``(1, 1, dim)`` (its one non-zero row) and no negative prompt; today
    both are ``(1, 512, dim)`` as the pipeline feeds the DiT."""
    key = "model.world_rollout.prompt_embeds"
    if not earlier or key not in sources.state:
        return
    rows = sources.state[key]
    rows = rows if isinstance(rows, torch.Tensor) else rows[:]
    if rows.shape[1] == 512:
        return
    padded = torch.zeros(1, 512, rows.shape[-1], dtype=rows.dtype)
    padded[:, : rows.shape[1]] = rows
    sources.state[key] = padded
    sources.state["model.world_rollout.negative_prompt_embeds"] = torch.zeros_like(padded)
    sources.origin["model.world_rollout.negative_prompt_embeds"] = "checkpoint"


def _load_sources(cls, config, sources: _Sources, rest: dict, allowed_missing, what: str, expect: tuple = ()):
    """One ``from_pretrained(None, config, state_dict)`` over the opened sources; strict."""
    loading = {k: v for k, v in rest.items() if k not in HUB_KWARGS and k != "subfolder"}
    loading.pop("dtype", None)
    loading.pop("torch_dtype", None)
    try:
        model, info = _transformers_from_pretrained(
            cls, None, config=config, state_dict=sources.state, dtype=sources.dtype, **loading
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
    # CODEPATH: world checkpoints suppress their three world ids in generation; Gemma-only ones have none.
    if cfg.enable_world and model.generation_config is not None:
        suppress = set(model.generation_config.suppress_tokens or [])
        ids = [i for i in cfg.world_token_ids if i is not None]
        model.generation_config.suppress_tokens = sorted(suppress | set(ids))
    model.eval()


def apply_freeze_flags(model) -> None:
    """``requires_grad`` exactly as the config's freeze flags say (the world projector and embeddings always train),
    plus the tensors of a PEFT adapter: after ``peft.inject_adapter_in_model`` (which freezes everything but the
    adapter) this makes the world projector train again while the adapted base layers stay frozen."""
    prefixes = tuple(p for p in model.config.trainable_prefixes() if not p.startswith("model.world_rollout."))
    adapter = set(adapter_tensors(model))
    for name, param in model.named_parameters(remove_duplicate=False):
        param.requires_grad_(name.startswith(prefixes) or name in adapter)
    # CODEPATH: checkpoints trained with an unfrozen language model also train the (tied) lm_head.
    if not model.config.freeze_gemma_language:
        model.lm_head.weight.requires_grad_(True)


def trainable_state_dict(model, state: dict | None = None) -> dict[str, torch.Tensor]:
    """What a partial checkpoint holds: everything training may change (and the fixed rollout prompts), tied copies
    dropped, plus the tensors of a PEFT adapter, all under their ``model.state_dict()`` names (`apply_freeze_flags`
    trains exactly these parameters). ``state`` (e.g. what ``Trainer`` passes) replaces ``model.state_dict()``."""
    prefixes = tuple(model.config.trainable_prefixes())
    adapter = set(adapter_tensors(model))
    state = model.state_dict() if state is None else state
    out = {k: v for k, v in state.items() if k.startswith(prefixes) or k in adapter}
    for target in getattr(model, "all_tied_weights_keys", {}) or {}:
        out.pop(target, None)
    return out


# ---------------------------------------------------------------------------------------------------------- adapters
def is_adapter_layer(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a PEFT tuner layer (a LoRA ``Linear`` ...), recognised without importing peft: it names
    its adapter sub-modules (``adapter_layer_names``) and wraps the layer it adapts (``base_layer``)."""
    names = getattr(type(module), "adapter_layer_names", None)
    return isinstance(names, tuple) and isinstance(getattr(module, "base_layer", None), torch.nn.Module)


def adapter_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """``{module name: tuner layer}`` of every PEFT tuner layer in ``model`` (empty without an adapter)."""
    return {name: module for name, module in model.named_modules() if name and is_adapter_layer(module)}


def adapter_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``{state-dict name: tensor}`` of a PEFT adapter's own tensors (``...q_proj.lora_A.default.weight`` ...):
    everything a tuner layer holds except the base layer it wraps. Empty without an adapter."""
    out = {}
    for prefix, layer in adapter_layers(model).items():
        for key, tensor in layer.state_dict(keep_vars=True).items():
            if not key.startswith("base_layer."):
                out[f"{prefix}.{key}"] = tensor
    return out


def has_adapter(model: torch.nn.Module) -> bool:
    """Whether ``model`` holds a PEFT adapter."""
    return bool(getattr(model, "peft_config", None)) or bool(adapter_layers(model))


def is_adapter_key(name: str, prefix: str) -> bool:
    """Whether a checkpoint key names an adapter tensor (a path segment starts with the tuner's prefix, e.g.
    ``lora_`` in ``...q_proj.lora_A.default.weight``), as PEFT itself tells adapter keys apart."""
    return any(part.startswith(prefix) for part in name.split("."))


def unwrapped_key(name: str) -> str:
    """The name of a tensor of a layer PEFT wrapped, before wrapping: ``...q_proj.base_layer.weight`` ->
    ``...q_proj.weight``."""
    while ".base_layer." in name:
        name = name.replace(".base_layer.", ".", 1)
    return name


def _jsonable(value: Any) -> Any:
    """A PEFT config value as json: sets as sorted lists, enums as their values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value  # e.g. PeftType.LORA
    return value


def adapter_file_content(model) -> dict | None:
    """The `ADAPTER_FILE` of ``model``'s PEFT adapter, ``None`` without one.

    Raises:
        ValueError: the model holds several adapters, or PEFT auxiliary modules (``modules_to_save``,
            ``trainable_token_indices``) that a TheWorld checkpoint does not store.
    """
    layers = adapter_layers(model)
    configs = dict(getattr(model, "peft_config", None) or {})
    if not layers and not configs:
        return None
    auxiliary = sorted(
        name
        for name, module in model.named_modules()
        if any(c.__name__ == "AuxiliaryTrainingWrapper" for c in type(module).__mro__)
    )
    if auxiliary:
        raise ValueError(
            f"The model holds PEFT auxiliary modules ({auxiliary[:5]}: modules_to_save or trainable_token_indices), "
            "which a TheWorld checkpoint does not store. The world projector always trains without them; to train "
            "parts of Gemma as well, set the freeze flags (e.g. freeze_gemma_vision=False) instead."
        )
    if len(configs) != 1 or not layers:
        raise ValueError(
            f"A TheWorld checkpoint holds exactly one PEFT adapter with its tuner layers; the model has "
            f"{len(configs)} adapter config(s) {sorted(configs)} and {len(layers)} tuner layer(s). Merge the adapters "
            "(theworld.checkpoint_theworld.merge_adapters) or delete the others (peft's delete_adapter) before "
            "saving."
        )
    ((name, config),) = configs.items()
    return {"format": ADAPTER_FORMAT_VERSION, "adapter_name": name, "peft_config": _jsonable(config.to_dict())}


def read_adapter_file(source: str, subfolder: str, hub: dict, where: str) -> dict | None:
    """The checkpoint's `ADAPTER_FILE`, validated; ``None`` when it has no adapter."""
    path = resolve_file(source, ADAPTER_FILE, subfolder, **hub)
    if path is None:
        return None
    try:
        data = read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: {ADAPTER_FILE} is not valid json ({err}); the checkpoint is damaged.") from err
    valid = (
        isinstance(data, dict)
        and data.get("format") == ADAPTER_FORMAT_VERSION
        and isinstance(data.get("adapter_name"), str)
        and bool(data["adapter_name"])
        and isinstance(data.get("peft_config"), dict)
        and isinstance(data["peft_config"].get("peft_type"), str)
    )
    if not valid:
        raise ValueError(
            f"{where}: {ADAPTER_FILE} must hold {{'format': {ADAPTER_FORMAT_VERSION}, 'adapter_name': str, "
            "'peft_config': {'peft_type': ..., ...}} as TheWorld saves it; the file is damaged or was written by "
            "another program."
        )
    return data


def import_peft(where: str):
    """``import peft``, or an `ImportError` saying how to install it."""
    try:
        import peft
    except ImportError as err:
        raise ImportError(
            f"{where} holds a PEFT adapter ({ADAPTER_FILE}); loading it needs the peft library: {PEFT_INSTALL_HINT}. "
            "Alternatively load a copy with the adapter merged (theworld export SOURCE DEST --merge-lora)."
        ) from err
    return peft


def adapter_peft_config(adapter: dict, where: str):
    """The ``peft.PeftConfig`` of a checkpoint's adapter file (imports peft)."""
    peft = import_peft(where)
    try:
        return peft.PeftConfig.from_peft_type(**copy.deepcopy(adapter["peft_config"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"{where}: peft {peft.__version__} cannot read the adapter config in {ADAPTER_FILE} ({err!r}); it was "
            "written by another peft version. Upgrade peft (pip install -U peft)."
        ) from err


def adapter_key_prefix(peft_config) -> str:
    """The key prefix of the adapter type's tensors (``"lora_"`` for LoRA)."""
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(peft_config.peft_type)
    if not prefix:
        raise ValueError(
            f"Adapters of type {peft_config.peft_type} cannot be injected into a model with "
            "peft.inject_adapter_in_model; TheWorld checkpoints hold LoRA-style adapters."
        )
    return prefix


def attach_adapter(model, name: str, peft_config, tensors: dict[str, Any], what: str) -> None:
    """Inject the adapter ``name`` described by ``peft_config`` into ``model`` and load its tensors strictly: a
    missing, unexpected or mis-shaped adapter tensor is an error naming it."""
    peft = import_peft(what)
    try:
        peft.inject_adapter_in_model(peft_config, model, adapter_name=name)
    except ValueError as err:
        raise ValueError(
            f"{what}: its adapter ({ADAPTER_FILE}) does not fit the model ({err}); the adapter file belongs to "
            "another model or is damaged."
        ) from err
    expected = adapter_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = []
    for key in sorted(set(expected) & set(tensors)):
        stored = tuple(tensors[key].shape) if isinstance(tensors[key], torch.Tensor) else tuple(tensors[key].get_shape())
        if stored != tuple(expected[key].shape):
            mismatched.append(f"{key}: checkpoint {stored} vs model {tuple(expected[key].shape)}")
    problems = _key_problems(missing, unexpected, mismatched)
    if problems:
        raise ValueError(
            f"{what}: its adapter tensors do not match the adapter {name!r} that its {ADAPTER_FILE} describes: "
            f"{'; '.join(problems)}. The adapter file and the weights belong to different adapters or are damaged; "
            "nothing was loaded."
        )
    with torch.no_grad():
        for key, target in expected.items():
            value = tensors[key] if isinstance(tensors[key], torch.Tensor) else tensors[key][:]
            target.copy_(value.to(device=target.device, dtype=target.dtype))


def merge_adapters(model) -> list[str]:
    """Fold the model's PEFT adapter into the weights it adapts (PEFT's own ``merge``, refusing non-finite results)
    and remove the tuner layers: the model then computes the same outputs (up to float rounding) without peft.
    Returns the names of the merged modules. A merged model whose language model changed saves only as a full
    checkpoint (``save_pretrained(..., save_full_model=True)``)."""
    layers = adapter_layers(model)
    if not layers:
        raise ValueError("The model holds no PEFT adapter to merge.")
    for name in sorted(layers, key=lambda n: n.count("."), reverse=True):  # innermost first
        layer = layers[name]
        layer.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    if getattr(model, "_hf_peft_config_loaded", False):
        model._hf_peft_config_loaded = False
    setattr(model, MERGED_ADAPTER_ATTR, sorted(set(getattr(model, MERGED_ADAPTER_ATTR, ())) | set(layers)))
    apply_freeze_flags(model)
    return sorted(layers)


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
    # CODEPATH: Gemma 3 checkpoints with sliding-window layers (the real 4B) give the processor their window.
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
    # CODEPATH: partial checkpoints without processor files (research format) take the Gemma base's processor; a
    # full checkpoint of a model built from a config alone has none and needs no base.
    elif config.checkpoint_kind != "full":
        processor = _gemma_processor(config.gemma_model_name, config, _gemma_hub(config, hub))
    else:
        return None
    for key, value in _processor_settings(config).items():
        setattr(processor, key, value)
    ids = (processor.start_of_world_token_id, processor.end_of_world_token_id, processor.world_token_id)
    # CODEPATH: world checkpoints check their tokenizer's world ids; Gemma-only checkpoints have no world tokens.
    if config.enable_world and ids != config.world_token_ids:
        raise ValueError(
            f"The checkpoint's tokenizer gives the world tokens ids {ids} but its config records "
            f"{config.world_token_ids}: the tokenizer files do not belong to this checkpoint."
        )
    return processor


def _generation_config(source: str, subfolder: str, hub: dict, config: TheWorldConfig) -> GenerationConfig:
    path = resolve_file(source, "generation_config.json", subfolder, **hub)
    base = config.gemma_model_name
    # CODEPATH: checkpoints without generation_config.json (research format) take their Gemma base's.
    if path is None and base != source:
        path = resolve_file(base, "generation_config.json", "", **_gemma_hub(config, hub))
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
    safe_serialization: bool = True,
    **kwargs,
):
    """Write a checkpoint folder and publish it atomically (see the module docstring).

    Args:
        save_directory: the checkpoint folder (created, or replaced as a whole; files a checkpoint does not own, such
            as a trainer's state, are carried over).
        save_full_model: ``False``: only what training could change (a PEFT adapter included: its tensors in
            ``model.safetensors``, its config in ``theworld_adapter_config.json``); ``True``: every weight
            (transformers' format, sharded above ``max_shard_size``; an adapter stays unmerged, see `merge_adapters`).
        state_dict: replaces ``model.state_dict()`` as the source of the tensors (what ``Trainer``/accelerate pass);
            keys as in ``model.state_dict()``.
        is_main_process: only the main process writes (distributed training).
        safe_serialization: accepted for transformers' callers; the weights are always safetensors.
        push_to_hub: also upload the published folder (``repo_id=`` (default: the folder name), ``token=``,
            ``private=``, ``commit_message=``, ``commit_description=``, ``revision=``, ``create_pr=``).
    """
    push = {k: kwargs.pop(k) for k in list(kwargs) if k in PUSH_KWARGS}
    for key in IGNORED_SAVE_KWARGS:
        kwargs.pop(key, None)
    if kwargs.pop("variant", None) is not None:
        raise ValueError("variant= is not supported: a TheWorld checkpoint folder holds one set of weights.")
    if kwargs.pop("distributed_checkpoint", False):
        raise ValueError("distributed_checkpoint=True is not supported: TheWorld saves one safetensors checkpoint.")
    if kwargs:
        raise TypeError(f"save_pretrained() got unexpected keyword argument(s) {sorted(kwargs)}.")
    if not safe_serialization:
        logger.warning("safe_serialization=False is ignored: TheWorld checkpoints are always safetensors, never pickle.")
    if not is_main_process:
        return None
    save_directory = os.path.abspath(os.fspath(save_directory))
    if os.path.islink(save_directory) and os.path.isdir(save_directory):
        save_directory = os.path.realpath(save_directory)  # publish into the folder the link points at
    if os.path.exists(save_directory) and not os.path.isdir(save_directory):
        raise ValueError(f"{save_directory} is a file; save_pretrained needs a folder path.")
    parent, name = os.path.split(save_directory)
    os.makedirs(parent, exist_ok=True)
    kind = "full" if save_full_model else "partial"
    adapter = adapter_file_content(model)
    _remove_stale_staging(parent, name)
    staging, lock = _new_staging(parent, name)
    try:
        state = write_weights(model, staging, kind, max_shard_size, state_dict)
        write_metadata_files(model, staging, kind)
        # CODEPATH: models with a PEFT adapter also save its config (the adapter tensors are in the weights).
        if adapter is not None:
            with open(os.path.join(staging, ADAPTER_FILE), "w", encoding="utf-8") as f:
                f.write(json.dumps(adapter, indent=2, sort_keys=True) + "\n")
        for hook in list(SAVE_HOOKS):
            hook(model, staging, kind, state)
        _carry_foreign_files(save_directory, staging)
        _finalise_permissions(staging)
        old = publish_folder(staging, save_directory)
    except BaseException as err:
        _release(lock)
        lock = None
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, (OSError, SafetensorError)):
            code = getattr(err, "errno", None)
            message = (
                f"Saving the checkpoint to {save_directory} failed: {err}. The previous checkpoint there (if any) is "
                "unchanged and nothing was left behind; free disk space (or fix the permissions) and save again."
            )
            raise (OSError(code, message) if code else OSError(message)) from err
        raise
    finally:
        _release(lock)
    if old is not None:
        _remove_unread(old)
    if push_to_hub:
        return upload_folder(save_directory, push.pop("repo_id", None) or name, **push)
    return None


def push_checkpoint(model, repo_id: str, save_full_model: bool = False, max_shard_size: int | str = "5GB", **push):
    """``push_to_hub``: save the checkpoint into a temporary folder and upload exactly that folder as one commit."""
    with tempfile.TemporaryDirectory(prefix="theworld-push-") as tmp:
        folder = os.path.join(tmp, "checkpoint")
        save_checkpoint(model, folder, save_full_model=save_full_model, max_shard_size=max_shard_size)
        return upload_folder(folder, repo_id, **push)


def upload_folder(folder: str, repo_id: str, **push):
    """Upload a saved checkpoint folder with the uploader the theworld package registers (`UPLOAD_HOOKS`)."""
    if not UPLOAD_HOOKS:
        raise RuntimeError(
            "Uploading needs the theworld package (pip install theworld), which registers the uploader. Without it, "
            f"upload the saved folder {folder} with huggingface_hub: HfApi().upload_folder(repo_id=..., "
            "folder_path=...)."
        )
    return UPLOAD_HOOKS[-1](folder, repo_id, **push)


def write_weights(model, folder: str, kind: str, max_shard_size, state_dict: dict | None) -> dict:
    """The weight files of a checkpoint; returns the tensors written (a partial save) or an empty dict (a full one)."""
    if kind == "full":
        if state_dict is not None:  # tied copies are stored once, whether or not the given tensors share memory
            tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
            state_dict = {k: v for k, v in state_dict.items() if k not in tied}
        # transformers saves only the adapter of a model given one with `add_adapter`; a full checkpoint holds all.
        peft_flag = getattr(model, "_hf_peft_config_loaded", False)
        if peft_flag:
            model._hf_peft_config_loaded = False
        try:
            PreTrainedModel.save_pretrained(
                model, folder, max_shard_size=max_shard_size, state_dict=state_dict, is_main_process=True
            )
        finally:
            if peft_flag:
                model._hf_peft_config_loaded = True
        for stray in ("config.json", "generation_config.json"):  # written again below, with TheWorld's additions
            if os.path.exists(os.path.join(folder, stray)):
                os.remove(os.path.join(folder, stray))
        return {}
    prefixes = tuple(model.config.trainable_prefixes())
    merged = [m for m in getattr(model, MERGED_ADAPTER_ATTR, ()) if not (m + ".").startswith(prefixes)]
    if merged:
        raise ValueError(
            f"An adapter was merged into {merged[:5]}{' ...' if len(merged) > 5 else ''}, which a partial checkpoint "
            "does not hold (its freeze flags keep them at the base weights). Save a full checkpoint: "
            "save_pretrained(folder, save_full_model=True)."
        )
    state = trainable_state_dict(model, state_dict)
    if state_dict is not None:
        missing = sorted(set(trainable_state_dict(model)) - set(state))
        if missing:
            raise ValueError(
                f"The state_dict passed to save_pretrained lacks {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                "which a partial checkpoint holds (the tensors training can change). Pass the unwrapped model's "
                "state_dict (keys as in model.state_dict(), no 'module.' prefixes)."
            )
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {
        "format": "pt",
        "checkpoint_kind": kind,
        "theworld_version": model.config.theworld_version,
        DIGEST_KEY: tensors_digest(state),
    }
    write_safetensors(state, os.path.join(folder, "model.safetensors"), metadata)
    return state


def config_digest(config: TheWorldConfig) -> str:
    """sha256 of a config as ``config.json`` holds it, without its own `CONFIG_DIGEST_KEY` entry. Equal to the stored
    digest exactly when the config is the saved one, unchanged."""
    config = copy.deepcopy(config)
    vars(config).pop(CONFIG_DIGEST_KEY, None)
    return hashlib.sha256(config.to_json_string(use_diff=True).encode()).hexdigest()


def write_metadata_files(model, folder: str, kind: str) -> None:
    config = copy.deepcopy(model.config)
    config.checkpoint_kind = kind
    config.checkpoint_format_version = CHECKPOINT_FORMAT_VERSION
    config.architectures = ["TheWorldForConditionalGeneration"]
    config.auto_map = dict(AUTO_MAP)
    setattr(config, CONFIG_DIGEST_KEY, config_digest(config))
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    with open(os.path.join(folder, "checkpoint_config.json"), "w", encoding="utf-8") as f:
        json.dump(checkpoint_summary(model, kind), f, indent=2)
    here = os.path.dirname(os.path.abspath(__file__))
    for filename in REMOTE_CODE_FILES:
        shutil.copyfile(os.path.join(here, filename), os.path.join(folder, filename))
    if model.processor is not None:
        _save_processor(model.processor, folder)
        path = os.path.join(folder, "processor_config.json")
        if os.path.exists(path):
            data = read_json(path)
            data["auto_map"] = {"AutoProcessor": "processing_theworld.TheWorldProcessor"}
            data["processor_class"] = "TheWorldProcessor"
            with open(path, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2, sort_keys=True)


def _save_processor(processor, folder: str) -> None:
    """``processor.save_pretrained(folder)`` without the padding/truncation state that the fast tokenizer's backend
    keeps from its last padded call (it would end up in tokenizer.json, so that two saves of one model differ)."""
    backend = getattr(getattr(processor, "tokenizer", None), "backend_tokenizer", None)
    padding = getattr(backend, "padding", None)
    truncation = getattr(backend, "truncation", None)
    if padding:
        backend.no_padding()
    if truncation:
        backend.no_truncation()
    try:
        processor.save_pretrained(folder)
    finally:
        if padding:
            backend.enable_padding(**padding)
        if truncation:
            backend.enable_truncation(**truncation)


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
        "adapter": _adapter_summary(model),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_percent": round(100.0 * trainable / max(total, 1), 4),
        "theworld_version": cfg.theworld_version,
    }


def _adapter_summary(model) -> dict | None:
    """The adapter entry of ``checkpoint_config.json``: name, type, rank, targets and size; ``None`` without one."""
    content = adapter_file_content(model)
    if content is None:
        return None
    config = content["peft_config"]
    return {
        "file": ADAPTER_FILE,
        "adapter_name": content["adapter_name"],
        "peft_type": config.get("peft_type"),
        "r": config.get("r"),
        "target_modules": config.get("target_modules"),
        "adapted_modules": len(adapter_layers(model)),
        "parameters": sum(t.numel() for t in adapter_tensors(model).values()),
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
    """Files of the previous folder that a checkpoint does not own (logs, trainer state ...) move along; leftovers of
    interrupted saves by theworld 0.1.0 (``.theworld-*``) and old weight shards do not."""
    if not os.path.isdir(old):
        return
    owned = set(OWNED_FILES)
    try:
        entries = list(os.scandir(old))
    except FileNotFoundError:
        return  # replaced meanwhile by a concurrent save
    for entry in entries:
        if entry.name in owned or entry.name.startswith("model-") or entry.name.startswith(".theworld-"):
            continue
        target = os.path.join(staging, entry.name)
        if os.path.lexists(target):
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.copytree(entry.path, target, symlinks=True, copy_function=_link_or_copy)
            else:
                _link_or_copy(entry.path, target)
        except (FileNotFoundError, shutil.Error):  # removed meanwhile (by a concurrent save): carry nothing of it
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)


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


def _lock(path: str) -> int | None:
    """Hold an exclusive lock on the folder ``path`` (released when the process dies, even by ``kill -9``); ``None``
    where folders cannot be locked."""
    if fcntl is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def _remove_unread(path: str) -> bool:
    """Delete a replaced or abandoned folder unless a load is reading it or a save is writing it (a later save removes
    it then); returns whether it was deleted."""
    try:
        fd = _lock(path)
    except OSError:
        return False
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        _release(fd)
    return True


def _new_staging(parent: str, name: str) -> tuple[str, int | None]:
    """A new staging folder for ``<parent>/<name>``, locked by this process before it gets its staging name (so that
    a concurrent save never takes it for an abandoned one).

    Until it is locked, a concurrent save's clean-up cannot tell the fresh folder from one that a save killed in that
    instant left behind, and may remove it; then another one is made."""
    prefix = f".{name}{NEW_STAGING_TAG}"
    for _ in range(100):
        fresh = tempfile.mkdtemp(prefix=prefix, dir=parent)
        try:
            lock = _lock(fresh)
        except OSError:
            continue  # a clean-up holds it and is removing it
        staging = os.path.join(parent, f".{name}{STAGING_TAG}{os.path.basename(fresh)[len(prefix) :]}")
        try:
            os.rename(fresh, staging)
        except FileNotFoundError:
            _release(lock)
            continue  # removed by a clean-up before this process held it
        return staging, lock
    raise OSError(f"Could not create a staging folder in {parent}: concurrent saves kept removing it.")


def _remove_stale_staging(parent: str, name: str) -> None:
    """Remove what earlier saves of ``<parent>/<name>`` left next to it: staging folders of saves that died (even by
    ``kill -9``, also in the instant between creating a staging folder and locking it) and replaced folders that were
    being read when they were replaced; never one that a living save or a load holds (locked). Only folders named for
    this target."""
    staging_prefix, new_prefix = f".{name}{STAGING_TAG}", f".{name}{NEW_STAGING_TAG}"
    for entry in os.scandir(parent):
        if not entry.is_dir(follow_symlinks=False) or not entry.name.startswith((staging_prefix, new_prefix)):
            continue
        if fcntl is not None:
            _remove_unread(entry.path)  # skipped while a living save writes it or a load reads it
        elif _age_seconds(entry) > (600 if entry.name.startswith(staging_prefix) else 3600):
            shutil.rmtree(entry.path, ignore_errors=True)  # no locks here: old enough to be abandoned


def _age_seconds(entry: os.DirEntry) -> float:
    """Seconds since ``entry`` last changed; 0 when it is gone already (a concurrent save renamed it after the scan)."""
    try:
        return time.time() - entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return 0.0


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


__all__ = [
    "SafetensorsFile",
    "adapter_layers",
    "adapter_tensors",
    "apply_freeze_flags",
    "has_adapter",
    "load_pretrained",
    "merge_adapters",
    "push_checkpoint",
    "recover_interrupted_save",
    "save_checkpoint",
    "trainable_state_dict",
]
