"""TheWorld: Gemma 3 that reads "world tokens" made from Cosmos-Predict2 latents.

This file is shipped next to every checkpoint as remote code. It is flat and self-contained: it imports only
``torch``, ``transformers``, ``huggingface_hub``, ``safetensors`` and its two sibling files; ``diffusers`` is imported
lazily, inside a guard that tells the user to install it.

Data flow (shapes for one batch of ``B`` prompts, ``B_w`` of which carry an image)::

    world_pixel_values (B_w, 3, S, S) in [-1, 1]
      -> Wan VAE encoder, latent_dist.mode()         (B_w, z, 1, h, w)
      -> (mu - latents_mean) / latents_std           (B_w, z, h, w)
      -> [optional Cosmos DiT rollout]               (B_w, z, 1 + k, h, w)
      -> reduce (spatial | channel), pool            (B_w, N, D_in)
      -> projector (fp32)                            (B_w, N, d_model)
      -> scattered into inputs_embeds at the <world_soft_token> positions; learned boundary embeddings at
         <start_of_world>/<end_of_world>; then Gemma 3's language model as usual.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import os
import struct
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from transformers import Gemma3ForConditionalGeneration
from transformers.models.gemma3.modeling_gemma3 import Gemma3Model, Gemma3PreTrainedModel
from transformers.utils.hub import cached_file

from .configuration_theworld import TheWorldConfig
from .processing_theworld import TheWorldProcessor
from .rollout_theworld import TheWorldRollout, check_transformer_config, encode_fixed_prompt, strip_private

logger = logging.getLogger(__name__)

DIFFUSERS_HINT = (
    "TheWorld's world encoder needs diffusers (the Cosmos Wan VAE lives there). Install it with "
    "`pip install diffusers`, or load the checkpoint with enable_world=False."
)

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


#: Set by the loaders around ``cls(config)`` to build TheWorld around an already loaded Gemma 3 (see `_skeleton_around`).
_PREBUILT_GEMMA: contextvars.ContextVar = contextvars.ContextVar("theworld_prebuilt_gemma", default=None)


def _import_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError as err:  # pragma: no cover - exercised in the no-diffusers subprocess test
        raise ImportError(DIFFUSERS_HINT) from err
    return diffusers


# ----------------------------------------------------------------------------------------------------------------------
# Small pure functions for tensor plumbing
# ----------------------------------------------------------------------------------------------------------------------
def normalize_latents(mu: torch.Tensor, latents_mean: torch.Tensor, latents_std: torch.Tensor) -> torch.Tensor:
    """``(mu - mean) / std`` per channel. ``mu``: ``(B, z, ...)``; ``latents_mean``/``latents_std``: ``(z,)``."""
    shape = (1, -1) + (1,) * (mu.ndim - 2)
    return (mu - latents_mean.view(shape).to(mu)) / latents_std.view(shape).to(mu)


def latents_to_world_tokens(latents: torch.Tensor, mode: str, pooling: int = 1) -> torch.Tensor:
    """Turn latent frames into token vectors.

    Args:
        latents: ``(B, z, T, h, w)`` normalised latents (``T`` frames).
        mode: ``"spatial"`` gives ``T*h'*w'`` tokens of ``z`` dims; ``"channel"`` gives ``T*z`` tokens of ``h'*w'``
            dims, where ``h' = h // pooling``.
        pooling: average-pooling factor over the latent grid.

    Returns:
        ``(B, N, D_in)``, frames in order (all tokens of frame 0 first).
    """
    b, z, t, h, w = latents.shape
    frames = latents.permute(0, 2, 1, 3, 4).reshape(b * t, z, h, w)
    if pooling > 1:
        frames = nn.functional.avg_pool2d(frames, kernel_size=pooling, stride=pooling)
    hp, wp = frames.shape[-2:]
    if mode == "spatial":
        tokens = frames.flatten(2).transpose(1, 2)  # (B*T, h'*w', z)
        return tokens.reshape(b, t * hp * wp, z)
    if mode == "channel":
        tokens = frames.flatten(2)  # (B*T, z, h'*w')
        return tokens.reshape(b, t * z, hp * wp)
    raise ValueError(f"world_projection_mode must be 'spatial' or 'channel', got {mode!r}.")


def scatter_world_embeddings(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    world_embeds: torch.Tensor,
    boundary: torch.Tensor,
    world_token_id: int,
    start_id: int,
    end_id: int,
) -> torch.Tensor:
    """Place world features and boundary embeddings into ``inputs_embeds``.

    Args:
        inputs_embeds: ``(B, L, d)``.
        input_ids: ``(B, L)``.
        world_embeds: ``(B_w, N, d)`` for the ``B_w`` rows that hold a world block, in row order.
        boundary: ``(2, d)``: the ``<start_of_world>`` and ``<end_of_world>`` embeddings.

    Returns:
        ``(B, L, d)``, differentiable with respect to ``world_embeds`` and ``boundary``.
    """
    world_mask = (input_ids == world_token_id).unsqueeze(-1)
    out = inputs_embeds.masked_scatter(world_mask, world_embeds.to(inputs_embeds.dtype))
    boundary = boundary.to(inputs_embeds.dtype)
    out = torch.where((input_ids == start_id).unsqueeze(-1), boundary[0], out)
    out = torch.where((input_ids == end_id).unsqueeze(-1), boundary[1], out)
    return out


def check_world_layout(input_ids: torch.Tensor, config: TheWorldConfig, num_world_inputs: int | None) -> int:
    """Validate the world blocks in ``input_ids`` ``(B, L)``; return how many rows hold one.

    Every row holds either no world placeholder or exactly ``config.num_world_tokens`` of them plus one start and one
    end marker, and the number of such rows must equal ``num_world_inputs`` (world images or latents supplied).
    """
    counts = (input_ids == config.world_token_id).sum(-1)
    starts = (input_ids == config.start_of_world_token_id).sum(-1)
    ends = (input_ids == config.end_of_world_token_id).sum(-1)
    n = config.num_world_tokens
    bad = [i for i in range(counts.shape[0]) if int(counts[i]) not in (0, n)]
    if bad:
        raise ValueError(
            f"Rows {bad} hold {[int(counts[i]) for i in bad]} {config.world_token} placeholders, expected "
            f"{n} (config.num_world_tokens). Build inputs with the model's processor (TheWorldProcessor)."
        )
    has_world = counts > 0
    if not torch.equal(starts, has_world.long()) or not torch.equal(ends, has_world.long()):
        raise ValueError(
            f"Each world block needs exactly one {config.start_of_world_token} and one {config.end_of_world_token}; "
            f"got starts {starts.tolist()} and ends {ends.tolist()} for placeholder counts {counts.tolist()}."
        )
    rows = int(has_world.sum())
    if num_world_inputs is None:
        if rows:
            raise ValueError(
                f"input_ids hold {rows} world block(s) but no world_pixel_values (or world_latents) were given; pass "
                "the processor's world_pixel_values, or images=[...]."
            )
    elif num_world_inputs != rows:
        raise ValueError(
            f"Got {num_world_inputs} world images/latents for {rows} prompts with a world block; pass one per prompt "
            "that holds a world block."
        )
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# safetensors helpers: exact reads (no mmap, so that bytes read can be measured) and fingerprints
# ----------------------------------------------------------------------------------------------------------------------
def read_safetensors_header(path: str) -> tuple[dict[str, Any], int]:
    """Return ``(header, data_offset)`` of a safetensors file, with a clear error when it is truncated or corrupt."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            size = os.fstat(f.fileno()).st_size
            if length > size - 8:
                raise ValueError(f"header length {length} exceeds the file size {size}")
            header = json.loads(f.read(length))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a valid safetensors file ({err}). It is truncated or corrupt: re-download or re-save it."
        ) from err
    data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + length + data_end > size:
        raise ValueError(
            f"{path} is truncated: its header describes {8 + length + data_end} bytes but the file has {size}. "
            "Re-download or re-save it."
        )
    return header, 8 + length


def read_safetensors(path: str, keep: Iterable[str] | None = None, prefix_filter: tuple[str, ...] = ()) -> dict:
    """Read tensors from a safetensors file with plain reads of exactly their bytes.

    Args:
        path: the file.
        keep: exact names to read (``None``: all).
        prefix_filter: when given, only names starting with one of these prefixes are read.

    Returns:
        ``{name: tensor}`` on CPU.
    """
    header, offset = read_safetensors_header(path)
    keep = set(keep) if keep is not None else None
    out = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if keep is not None and name not in keep:
                continue
            if prefix_filter and not name.startswith(prefix_filter):
                continue
            if info["dtype"] not in SAFETENSORS_DTYPES:
                raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
            start, end = info["data_offsets"]
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            tensor = torch.empty(info["shape"], dtype=dtype)  # its own storage, filled by one read (no zero-fill)
            raw = tensor.reshape(-1).view(torch.uint8)
            if raw.numel() != end - start:
                raise ValueError(
                    f"{path}: tensor {name} has {end - start} bytes for shape {info['shape']} {info['dtype']}; the "
                    "file is corrupt. Re-download or re-save it."
                )
            if end > start:
                f.seek(offset + start)
                if f.readinto(memoryview(raw.numpy())) != end - start:
                    raise ValueError(f"{path} is truncated while reading {name}; re-download or re-save it.")
            out[name] = tensor
    return out


def fingerprint_safetensors(
    path: str, keys: Iterable[str] | None = None, samples: int = 4, block: int = 256, whole_below: int = 65536
) -> str:
    """Cheap, content-sensitive fingerprint of (a subset of) a safetensors file, without reading all of it.

    sha256 over every selected tensor's name, dtype and shape plus its bytes: all of them for tensors of at most
    ``whole_below`` bytes, else ``samples`` evenly spaced ``block``-byte slices (the first and last included). Any
    change to the tensor set, a shape or a dtype, and any change that touches a whole tensor (fine-tuning,
    re-quantisation, another model, one re-scaled tensor) changes it; an edit of a few elements in the middle of a
    large tensor may not. It reads about ``samples * block`` bytes per large tensor, nothing next to loading.
    """
    header, offset = read_safetensors_header(path)
    wanted = set(keys) if keys is not None else None
    names = sorted(k for k in header if k != "__metadata__" and (wanted is None or k in wanted))
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for name in names:
            info = header[name]
            start = offset + info["data_offsets"][0]

            def read(pos: int, n: int, start: int = start) -> bytes:
                f.seek(start + pos)
                return f.read(n)

            size = info["data_offsets"][1] - info["data_offsets"][0]
            _fingerprint_tensor(digest, name, info["dtype"], info["shape"], size, read, samples, block, whole_below)
    return "sha256t:" + digest.hexdigest()


def fingerprint_tensors(
    state: dict[str, torch.Tensor], samples: int = 4, block: int = 256, whole_below: int = 65536
) -> str:
    """`fingerprint_safetensors` of tensors already in memory (read from a file): the same value, no further reads."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name]
        raw = memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())

        def read(pos: int, n: int, raw: memoryview = raw) -> bytes:
            return bytes(raw[pos : pos + n])

        dtype = names[tensor.dtype]
        _fingerprint_tensor(digest, name, dtype, list(tensor.shape), len(raw), read, samples, block, whole_below)
    return "sha256t:" + digest.hexdigest()


def _fingerprint_tensor(digest, name: str, dtype: str, shape: list, size: int, read, samples, block, whole_below):
    digest.update(f"{name}|{dtype}|{shape}\n".encode())
    if size <= whole_below:
        digest.update(read(0, size))
        return
    for i in range(samples):
        digest.update(read((size - block) * i // max(samples - 1, 1), block))


def resolve_file(source: str, filename: str, subfolder: str = "", **hub_kwargs) -> str | None:
    """Resolve ``filename`` in a local folder or hub repo (through the hub cache); ``None`` if it does not exist."""
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
            return None  # neither an existing folder nor a valid repo id (e.g. a mistyped local path)
        raise


def commit_of(resolved_path: str | None) -> str | None:
    """The commit hash of a file resolved inside the hub cache (``.../snapshots/<hash>/...``), else ``None``."""
    if not resolved_path:
        return None
    parts = os.path.normpath(resolved_path).split(os.sep)
    if "snapshots" in parts:
        idx = parts.index("snapshots")
        if idx + 1 < len(parts) and len(parts[idx + 1]) == 40:
            return parts[idx + 1]
    return None


def weight_files(source: str, stem: str, subfolder: str = "", **hub_kwargs) -> list[str]:
    """Resolve ``{stem}.safetensors`` or its sharded index in a folder or hub repo. Never pickle."""
    single = resolve_file(source, f"{stem}.safetensors", subfolder, **hub_kwargs)
    if single:
        return [single]
    index = resolve_file(source, f"{stem}.safetensors.index.json", subfolder, **hub_kwargs)
    if index:
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [resolve_file(source, s, subfolder, **hub_kwargs) for s in shards]
        missing = [s for s, p in zip(shards, files) if not p]
        if missing:
            raise FileNotFoundError(f"{source}/{subfolder}: shards {missing} named in the index are missing.")
        return files
    where = f"{source}/{subfolder}" if subfolder else source
    raise FileNotFoundError(
        f"No {stem}.safetensors (or sharded index) found in {where}. Only safetensors weights are loaded; check the "
        "path or repo id, run without HF_HUB_OFFLINE to download it, or convert the weights to safetensors."
    )


# ----------------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------------
class TheWorldProjector(nn.Module):
    """Projects world-token vectors ``(B, N, D_in)`` to Gemma's hidden size ``(B, N, d_model)``.

    ``mlp``: Linear(D_in, d) -> GELU -> Linear(d, d) -> GELU; ``mlp_no_final_gelu`` drops the last GELU; ``linear`` is
    one Linear. The parameter names (``projection.{0,2}`` / ``projection``) match the earlier research code.
    """

    def __init__(self, in_dim: int, out_dim: int, architecture: str = "mlp"):
        super().__init__()
        if architecture == "linear":
            self.projection = nn.Linear(in_dim, out_dim)
        else:
            layers = [nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)]
            if architecture == "mlp":
                layers.append(nn.GELU())
            self.projection = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.projection(tokens)


def build_wan_encoder(vae_config: dict | None) -> nn.Module:
    """An ``AutoencoderKLWan`` built from its config with the decoder removed (only ``encode`` is used)."""
    diffusers = _import_diffusers()
    vae = diffusers.AutoencoderKLWan.from_config(dict(vae_config or {}))
    vae.decoder = None
    vae.post_quant_conv = None
    return vae


class TheWorld(Gemma3ForConditionalGeneration):
    r"""Gemma 3 with Cosmos world tokens.

    It is a `Gemma3ForConditionalGeneration` (same module names, same generation) plus:

    - ``cosmos_vae``: the Cosmos (Wan) VAE encoder, built from ``config.vae_config``;
    - ``world_projector``: a small MLP from latent tokens to Gemma's hidden size, kept in fp32;
    - ``world_boundary_embeddings``: learned embeddings ``(2, d_model)`` of ``<start_of_world>``/``<end_of_world>``
      (Gemma's 262k-row vocabulary matrix is never resized);
    - ``world_step_embeddings``: learned per-frame embeddings ``(1 + k, d_model)`` when rollout is on.

    Build it around a Gemma 3 model with ``TheWorld.from_pretrained("google/gemma-3-4b-it", cosmos_model_name=...)``
    or load a TheWorld checkpoint with ``TheWorld.from_pretrained(dir_or_repo)`` /
    ``AutoModel.from_pretrained(dir_or_repo, trust_remote_code=True)``.
    """

    config_class = TheWorldConfig
    _keep_in_fp32_modules = ["world_projector", "world_boundary_embeddings", "world_step_embeddings"]

    def __init__(self, config: TheWorldConfig):
        Gemma3PreTrainedModel.__init__(self, config)
        prebuilt = _PREBUILT_GEMMA.get()
        if prebuilt is not None:  # a loader hands in the Gemma 3 it loaded: no throwaway Gemma skeleton is built
            self.model, self.lm_head = prebuilt.model, prebuilt.lm_head
        else:
            self.model = Gemma3Model(config)
            self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        d_model = config.text_config.hidden_size
        if config.enable_world:
            self.cosmos_vae = build_wan_encoder(config.vae_config)
            self.world_projector = TheWorldProjector(config.world_token_dim, d_model, config.projection_architecture)
            self.world_boundary_embeddings = nn.Embedding(2, d_model)
            if config.num_world_steps > 0:
                self.world_step_embeddings = nn.Embedding(config.num_world_frames, d_model)
            if config.rollout_enabled:
                self.world_rollout = self._build_rollout(config)
        self.processor: TheWorldProcessor | None = None
        self.post_init()

    def _build_rollout(self, config: TheWorldConfig) -> nn.Module | None:
        """The frozen Cosmos DiT rollout module (`TheWorldRollout`, see ``rollout_theworld.py``), built from
        ``config.transformer_config``/``scheduler_config``. ``None`` at a fresh build, where those configs are not known
        yet: ``_load_rollout`` then reads them from the Cosmos source and builds it."""
        if config.transformer_config is None:
            return None
        check_transformer_config(config.transformer_config, config.latent_channels, config.cosmos_model_name)
        return TheWorldRollout(config.transformer_config, config.scheduler_config or {}, _import_diffusers())

    # ------------------------------------------------------------------ init
    def _init_weights(self, module: nn.Module) -> None:
        """Gemma's init for Gemma modules; Xavier (or N(0, initializer_range)) for the projector, N(0, 1) scaled to
        Gemma's embedding scale for the boundary embeddings, zeros for the per-step embeddings."""
        std = self.config.initializer_range
        if isinstance(module, TheWorldProjector):
            for layer in module.modules():
                if isinstance(layer, nn.Linear):
                    if self.config.random_projection_init:
                        nn.init.normal_(layer.weight, std=std)
                    else:
                        nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
                    layer._is_hf_initialized = True
            return
        if module is getattr(self, "world_boundary_embeddings", None):
            nn.init.normal_(module.weight, std=1.0)
            return
        if module is getattr(self, "world_step_embeddings", None):
            nn.init.zeros_(module.weight)
            return
        if isinstance(module, nn.Linear) and getattr(module, "_is_hf_initialized", False):
            return
        super()._init_weights(module)

    # ------------------------------------------------------------------ parameters
    def get_trainable_parameters(self) -> tuple[int, int, float]:
        """``(trainable, total, percent)`` parameter counts (tied weights counted once)."""
        seen: set[int] = set()
        trainable = total = 0
        for p in self.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            trainable += p.numel() if p.requires_grad else 0
        return trainable, total, 100.0 * trainable / max(total, 1)

    def apply_freeze_flags(self) -> None:
        """Set ``requires_grad`` exactly as the config's freeze flags say (world modules always train)."""
        prefixes = tuple(self.config.trainable_prefixes())
        for name, param in self.named_parameters(remove_duplicate=False):
            param.requires_grad_(name.startswith(prefixes))
        if not self.config.freeze_gemma_language:
            self.lm_head.weight.requires_grad_(True)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a partial checkpoint holds: everything training may change, tied copies dropped."""
        prefixes = tuple(self.config.trainable_prefixes())
        state = {k: v for k, v in self.state_dict().items() if k.startswith(prefixes)}
        for target in (self._tied_weights_keys or {}) if self.config.tie_word_embeddings else {}:
            state.pop(target, None)
        return state

    # ------------------------------------------------------------------ world encoding
    @property
    def world_device(self) -> torch.device:
        return self.world_projector.projection.parameters().__next__().device

    def encode_world(self, world_pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode world images to normalised Cosmos latents.

        Args:
            world_pixel_values: ``(B, 3, S, S)`` in [-1, 1], ``S = config.world_image_size``.

        Returns:
            ``(B, z, T, h, w)`` with ``T = 1 + num_world_steps`` (predicted frames appended when rollout is on).
        """
        if not self.config.enable_world:
            raise ValueError("This model was built with enable_world=False; it has no world encoder.")
        size = self.config.world_image_size
        if world_pixel_values.ndim != 4 or tuple(world_pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"world_pixel_values must have shape (B, 3, {size}, {size}), got {tuple(world_pixel_values.shape)}; "
                "use the model's processor to make them."
            )
        if torch.isnan(world_pixel_values).any():
            raise ValueError("world_pixel_values contain NaN values.")
        lo, hi = float(world_pixel_values.min()), float(world_pixel_values.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(
                f"world_pixel_values must lie in [-1, 1] (got [{lo:.3g}, {hi:.3g}]); pixels in [0, 255] or [0, 1] "
                "must be rescaled. The processor does this."
            )
        vae = self.cosmos_vae
        vae_param = next(vae.parameters())
        x = world_pixel_values.to(device=vae_param.device, dtype=vae_param.dtype).unsqueeze(2)
        train_vae = any(p.requires_grad for p in vae.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and train_vae):
            mu = vae.encode(x).latent_dist.mode()
        mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32)
        std = torch.tensor(vae.config.latents_std, dtype=torch.float32)
        latents = normalize_latents(mu.float(), mean, std)
        if self.config.num_world_steps > 0:
            latents = self.rollout_latents(latents)
        return latents

    def rollout_latents(self, latents: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
        """Append predicted future frames to normalised latents.

        The Cosmos DiT (frozen, run under ``torch.no_grad()``) predicts ``num_steps`` (default
        ``config.num_world_steps``) latent frames after the last frame of ``latents``, autoregressively, with
        ``config.rollout_num_inference_steps`` denoising steps each and noise seeded by ``config.rollout_seed``.
        Gradients still flow into the given frames.

        Args:
            latents: ``(B, z, T, h, w)`` normalised latents (``T = 1``: the current frame).
            num_steps: frames to predict; ``None`` uses ``config.num_world_steps``.

        Returns:
            ``(B, z, T + num_steps, h, w)``, same dtype and device as ``latents``.
        """
        cfg = self.config
        k = cfg.num_world_steps if num_steps is None else int(num_steps)
        if k < 0:
            raise ValueError(f"num_steps must be >= 0, got {k}.")
        if k == 0:
            return latents
        rollout = getattr(self, "world_rollout", None)
        if rollout is None:
            raise ValueError(
                "This model has no Cosmos DiT (world_rollout): rollout needs num_world_steps > 0 or "
                "load_full_cosmos_pipeline=True when the model is built or loaded."
            )
        if latents.ndim != 5:
            raise ValueError(f"latents must have shape (B, z, T, h, w), got {tuple(latents.shape)}.")
        predicted = rollout(
            latents[:, :, -1:].detach().float(),
            num_steps=k,
            num_inference_steps=cfg.rollout_num_inference_steps,
            seed=cfg.rollout_seed,
        )
        return torch.cat([latents, predicted.to(device=latents.device, dtype=latents.dtype)], dim=2)

    def world_features(self, latents: torch.Tensor) -> torch.Tensor:
        """Project normalised latents ``(B, z, T, h, w)`` to world embeddings ``(B, N, d_model)`` (fp32)."""
        if latents.ndim == 4:
            latents = latents.unsqueeze(2)
        tokens = latents_to_world_tokens(latents.float(), self.config.world_projection_mode, self.config.world_pooling)
        device = self.world_device
        embeds = self.world_projector(tokens.to(device))
        if self.config.num_world_steps > 0:
            per_frame = self.config.world_tokens_per_frame
            steps = torch.arange(latents.shape[2], device=device).repeat_interleave(per_frame)
            embeds = embeds + self.world_step_embeddings(steps).unsqueeze(0)
        return embeds

    # ------------------------------------------------------------------ embeddings
    def build_inputs_embeds(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.Tensor | None = None,
        world_pixel_values: torch.Tensor | None = None,
        world_latents: torch.Tensor | None = None,
        world_embeds_override: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gemma's text embeddings with SigLIP image features and world features scattered in.

        Args:
            input_ids: ``(B, L)`` from the processor.
            pixel_values: ``(B_img, 3, H, W)`` SigLIP pixels, or ``None``.
            world_pixel_values: ``(B_w, 3, S, S)`` in [-1, 1], or ``None``.
            world_latents: ``(B_w, z, T, h, w)`` precomputed normalised latents (skips the VAE), or ``None``.
            world_embeds_override: ``(B_w, N, d_model)`` world features to use as they are (ablations).

        Returns:
            ``(B, L, d_model)``.
        """
        cfg = self.config
        embed = self.get_input_embeddings()
        # Ids whose rows are replaced below (an out-of-vocabulary image token, the world ids) are looked up as 0. One
        # scan finds the world ids; without them and without world inputs (text-only prompts, and every decode step
        # of generate) the world checks and the scatter are skipped, so decoding costs what Gemma 3's does.
        special = (input_ids == cfg.image_token_id) if cfg.image_token_id >= cfg.text_config.vocab_size else None
        has_world_ids = False
        if cfg.enable_world:
            world_ids = (cfg.world_token_id, cfg.start_of_world_token_id, cfg.end_of_world_token_id)
            world_mask = torch.isin(input_ids, torch.tensor(world_ids, device=input_ids.device))
            has_world_ids = bool(world_mask.any())
            if has_world_ids:
                special = world_mask if special is None else special | world_mask
        llm_ids = input_ids if special is None else input_ids.masked_fill(special, 0)
        inputs_embeds = embed(llm_ids)
        if pixel_values is not None:
            image_features = self.model.get_image_features(pixel_values, return_dict=True).pooler_output
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            image_mask = self.model.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_features)
        if not cfg.enable_world:
            return inputs_embeds
        given = [x for x in (world_pixel_values, world_latents, world_embeds_override) if x is not None]
        if not given and not has_world_ids:
            return inputs_embeds
        rows = check_world_layout(input_ids, cfg, given[0].shape[0] if given else None)
        if rows == 0:
            return inputs_embeds
        if world_embeds_override is not None:
            world_embeds = world_embeds_override
        else:
            latents = world_latents if world_latents is not None else self.encode_world(world_pixel_values)
            if latents.ndim == 5 and latents.shape[2] != cfg.num_world_frames:
                raise ValueError(
                    f"world_latents hold {latents.shape[2]} frame(s) but this model (num_world_steps="
                    f"{cfg.num_world_steps}) needs {cfg.num_world_frames}: the current frame plus the predicted ones. "
                    "Recompute cached latents with the model's num_world_steps (latent caches are keyed by it)."
                )
            world_embeds = self.world_features(latents)
        boundary = self.world_boundary_embeddings.weight
        return scatter_world_embeddings(
            inputs_embeds,
            input_ids,
            world_embeds.to(inputs_embeds.device),
            boundary.to(inputs_embeds.device),
            cfg.world_token_id,
            cfg.start_of_world_token_id,
            cfg.end_of_world_token_id,
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        world_pixel_values: torch.Tensor | None = None,
        world_latents: torch.Tensor | None = None,
        world_embeds_override: torch.Tensor | None = None,
        images: list | None = None,
        past_key_values=None,
        **kwargs,
    ):
        r"""Gemma 3's forward with world features scattered into the world-block positions.

        Args:
            input_ids: ``(B, L)`` from `TheWorldProcessor` (world blocks already expanded).
            pixel_values: ``(B_img, 3, H, W)`` SigLIP pixels.
            world_pixel_values: ``(B_w, 3, S, S)`` in [-1, 1], one per row holding a world block.
            world_latents: ``(B_w, z, T, h, w)`` cached normalised latents instead of ``world_pixel_values``.
            world_embeds_override: ``(B_w, N, d_model)`` world features to use as they are (ablation studies).
            images: earlier API: a list of images, one per row; turned into ``world_pixel_values`` (and world blocks
                inserted after ``<bos>`` when ``input_ids`` have none).
            labels: ``(B, L)``; positions set to -100 (and every world-block position) carry no loss.
            cache / past_key_values: the KV cache (both names accepted).
        """
        if cache is None and past_key_values is not None:
            cache = past_key_values
        if images is not None:
            input_ids, attention_mask, labels, token_type_ids, world_pixel_values = self._legacy_images(
                input_ids, attention_mask, labels, token_type_ids, images
            )
        if labels is not None and self.config.enable_world and input_ids is not None:
            labels = self.mask_world_labels(input_ids, labels)
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass input_ids (or inputs_embeds).")
            inputs_embeds = self.build_inputs_embeds(
                input_ids, pixel_values, world_pixel_values, world_latents, world_embeds_override
            )
        return super().forward(
            input_ids=None,
            pixel_values=None,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def mask_world_labels(self, input_ids: torch.LongTensor, labels: torch.LongTensor) -> torch.LongTensor:
        """Labels with every world-block position (markers and placeholders) set to -100."""
        cfg = self.config
        ids = torch.tensor(
            [cfg.world_token_id, cfg.start_of_world_token_id, cfg.end_of_world_token_id], device=input_ids.device
        )
        return labels.masked_fill(torch.isin(input_ids, ids), -100)

    def _legacy_images(self, input_ids, attention_mask, labels, token_type_ids, images):
        """Earlier API: ``images=[PIL, ...]`` (one per row) becomes ``world_pixel_values``; world blocks are inserted
        right after each row's first attended token (``<bos>``) when ``input_ids`` hold none."""
        if not self.config.enable_world:
            return input_ids, attention_mask, labels, token_type_ids, None
        if self.processor is None:
            raise ValueError("images=[...] needs model.processor; load the model with from_pretrained.")
        if input_ids is None or len(images) != input_ids.shape[0]:
            raise ValueError(
                f"Got {len(images)} images for {0 if input_ids is None else input_ids.shape[0]} prompts; pass exactly "
                "one image per prompt."
            )
        world_pixel_values = self.processor.preprocess_world_images(images)
        if (input_ids == self.config.world_token_id).any():
            return input_ids, attention_mask, labels, token_type_ids, world_pixel_values
        cfg = self.config
        block = torch.tensor(
            [cfg.start_of_world_token_id] + [cfg.world_token_id] * cfg.num_world_tokens + [cfg.end_of_world_token_id],
            device=input_ids.device,
        )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        first = attention_mask.long().argmax(-1)  # index of <bos> in each row (left padding aware)

        def insert(t: torch.Tensor | None, fill: Any) -> torch.Tensor | None:
            if t is None:
                return None
            rows = []
            for i in range(t.shape[0]):
                k = int(first[i]) + 1
                filler = block if fill is None else torch.full_like(block, fill)
                rows.append(torch.cat([t[i, :k], filler.to(t.dtype), t[i, k:]]))
            return torch.stack(rows)

        return (
            insert(input_ids, None),
            insert(attention_mask, 1),
            insert(labels, -100),
            insert(token_type_ids, 0),
            world_pixel_values,
        )

    # ------------------------------------------------------------------ generation
    def prepare_inputs_for_generation(self, input_ids, use_cache=True, is_first_iteration=False, **kwargs):
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, use_cache=use_cache, is_first_iteration=is_first_iteration, **kwargs
        )
        if not is_first_iteration and use_cache:
            for key in ("world_pixel_values", "world_latents", "world_embeds_override", "images", "pixel_values"):
                model_inputs.pop(key, None)
        return model_inputs

    @torch.no_grad()
    def generate(self, input_ids=None, images=None, **kwargs):
        """`GenerationMixin.generate`; also accepts the earlier API's ``images=[...]`` (one per prompt)."""
        if images is not None:
            input_ids, attention_mask, _, token_type_ids, world_pixel_values = self._legacy_images(
                input_ids, kwargs.pop("attention_mask", None), None, kwargs.pop("token_type_ids", None), images
            )
            kwargs.update(attention_mask=attention_mask, world_pixel_values=world_pixel_values)
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
        return super().generate(input_ids=input_ids, **kwargs)

    # ------------------------------------------------------------------ saving
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        save_full_model: bool = False,
        max_shard_size: int | str = "5GB",
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        """Save a TheWorld checkpoint folder, atomically.

        ``save_full_model=False`` (default) writes only what training could change (projector, boundary and step
        embeddings, unfrozen parts); ``True`` writes every parameter, sharded above ``max_shard_size`` with an index,
        so that the checkpoint loads without the base sources. Also written: ``config.json`` (with ``auto_map``),
        ``generation_config.json``, ``checkpoint_config.json``, the remote-code files, the processor and tokenizer
        files and a ``README.md`` model card. Files are staged in a temporary folder and moved into place only once
        all are written, so a crash mid-save leaves the previous checkpoint intact.
        """
        save_checkpoint(self, str(save_directory), save_full_model=save_full_model, max_shard_size=max_shard_size)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or os.path.basename(os.path.normpath(str(save_directory)))
            upload_checkpoint_folder(str(save_directory), repo_id, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        save_full_model: bool = False,
        max_shard_size: int | str = "5GB",
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **kwargs,
    ):
        """Save the checkpoint to a temporary folder and upload exactly that folder with huggingface_hub."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp, save_full_model=save_full_model, max_shard_size=max_shard_size)
            return upload_checkpoint_folder(
                tmp,
                repo_id,
                commit_message=commit_message,
                private=private,
                token=token,
                revision=revision,
                create_pr=create_pr,
                **kwargs,
            )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs) -> TheWorld:
        """Build TheWorld around a Gemma 3 model, or load a TheWorld checkpoint (partial, full or earlier format).

        See `load_theworld` for the arguments.
        """
        if model_args:
            raise TypeError("TheWorld.from_pretrained takes no positional arguments besides the model id or path.")
        return load_theworld(cls, str(pretrained_model_name_or_path), **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str, **kwargs) -> TheWorld:
        """Earlier API: load a checkpoint folder (same as `from_pretrained`)."""
        return cls.from_pretrained(checkpoint_dir, **kwargs)

    @classmethod
    def from_checkpoint_hub(cls, repo_id: str, checkpoint_name: str | None = None, **kwargs) -> TheWorld:
        """Earlier API: load a hub checkpoint repo, optionally one of its ``checkpoint-N/`` subfolders."""
        return cls.from_pretrained(repo_id, checkpoint_name=checkpoint_name, **kwargs)


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download", "proxies")
ARCHITECTURE_FIELDS = (
    "enable_world",
    "world_projection_mode",
    "projection_architecture",
    "world_image_size",
    "world_pooling",
    "num_world_steps",
    "max_world_steps",
)
FREEZE_FIELDS = ("freeze_gemma_vision", "freeze_gemma_language", "freeze_cosmos_vae")
#: Base sources: a checkpoint may be pointed at another copy of its bases (the fingerprints are still checked).
SOURCE_FIELDS = ("gemma_model_name", "gemma_revision", "cosmos_model_name", "cosmos_revision")
BUILD_FIELDS = ARCHITECTURE_FIELDS + FREEZE_FIELDS + SOURCE_FIELDS + (
    "load_full_cosmos_pipeline",
    "random_projection_init",
    "rollout_num_inference_steps",
    "rollout_seed",
)


def _hub(kwargs: dict, **override) -> dict:
    out = {k: kwargs[k] for k in HUB_KWARGS if kwargs.get(k) is not None}
    out.update({k: v for k, v in override.items() if v is not None})
    return out


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def load_theworld(
    cls: type[TheWorld],
    source: str,
    *,
    config: TheWorldConfig | None = None,
    checkpoint_name: str | None = None,
    subfolder: str = "",
    dtype: Any = None,
    torch_dtype: Any = None,
    device_map: Any = None,
    ignore_fingerprint_mismatch: bool = False,
    trust_remote_code: bool | None = None,
    attn_implementation: str | None = None,
    **kwargs,
) -> TheWorld:
    """Load TheWorld from ``source`` (hub id or local path).

    - ``source`` is a Gemma 3 model: build a fresh TheWorld around it; the Cosmos source is ``cosmos_model_name=``
      and the world settings (``enable_world``, ``world_projection_mode``, ``projection_architecture``,
      ``world_image_size``, ``world_pooling``, freeze flags, ``num_world_steps``...) come from keyword arguments.
    - ``source`` is a TheWorld checkpoint: build the skeleton from its config, load the base weights from the pinned
      sources (or nothing for a full checkpoint), then apply the checkpoint strictly. Freeze flags may be overridden
      (multi-stage training); architecture fields that differ from the checkpoint are an error.

    Hub arguments ``revision``, ``token``, ``cache_dir``, ``local_files_only`` are honoured; ``checkpoint_name`` (or
    ``subfolder``) selects a ``checkpoint-N/`` folder of a repo. ``ignore_fingerprint_mismatch=True`` turns a base
    weight fingerprint mismatch into a warning.
    """
    dtype = dtype if dtype is not None else torch_dtype
    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    subfolder = checkpoint_name or subfolder or ""
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in BUILD_FIELDS}
    hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
    for k in ("output_loading_info", "use_safetensors", "low_cpu_mem_usage", "_from_auto", "_from_pipeline"):
        kwargs.pop(k, None)
    kwargs.pop("adapter_kwargs", None)
    kwargs.pop("code_revision", None)
    if kwargs:
        raise TypeError(f"TheWorld.from_pretrained got unexpected keyword argument(s) {sorted(kwargs)}.")

    recover_interrupted_save(os.path.join(source, subfolder))  # a local folder whose save was killed midway
    config_path = resolve_file(source, "config.json", subfolder, **hub_kwargs)
    if config_path is None:
        where = f"{source}/{subfolder}" if subfolder else source
        raise FileNotFoundError(
            f"No config.json found at {where}. Pass a Gemma 3 model or a TheWorld checkpoint (local folder or hub "
            "repo id); for hub repos check the id, the revision and that the cache holds it when HF_HUB_OFFLINE=1."
        )
    raw = _read_json(config_path)
    model_type = raw.get("model_type")
    loader_kwargs = dict(
        dtype=dtype, device_map=device_map, hub_kwargs=hub_kwargs, attn_implementation=attn_implementation
    )
    if model_type == "gemma3":
        return _build_fresh(cls, source, raw, config_path, subfolder, overrides, **loader_kwargs)
    if model_type in ("theworld", "the_world"):
        if config is None or model_type == "the_world":
            config = config_from_dict(raw) if model_type == "the_world" else TheWorldConfig.from_dict(raw)
        if model_type == "the_world" and "world_image_size" not in raw and "world_image_size" in overrides:
            # The earlier code never recorded its world image size (it squashed every image to 512 px), so it may be
            # chosen at load time; the projector's shapes are still checked strictly.
            config.world_image_size = overrides.pop("world_image_size")
        return _load_checkpoint(
            cls, source, config, subfolder, overrides, ignore_fingerprint_mismatch, legacy=model_type == "the_world",
            **loader_kwargs,
        )
    raise ValueError(
        f"{source} has model_type {model_type!r}; TheWorld loads Gemma 3 models ('gemma3') and TheWorld checkpoints "
        "('theworld', or 'the_world' from the earlier research code)."
    )


def config_from_dict(raw: dict) -> TheWorldConfig:
    """Convert the earlier research code's config (``model_type: "the_world"``) to a `TheWorldConfig`."""
    keep = {f for f in TheWorldConfig.__dataclass_fields__}
    data = {k: v for k, v in raw.items() if k in keep or k in ("text_config", "vision_config")}
    for key in ("architectures", "model_type", "auto_map"):  # converted: it becomes a current "theworld" config
        data.pop(key, None)
    data.setdefault("checkpoint_kind", "partial")
    # The earlier code loaded the whole Cosmos pipeline but never rolled out: its checkpoints reproduce with no rollout.
    if data.get("num_world_steps") or data.get("load_full_cosmos_pipeline"):
        logger.info(
            "Earlier checkpoint: num_world_steps=%s / load_full_cosmos_pipeline=%s never influenced its outputs; "
            "loading it without rollout.",
            data.get("num_world_steps"),
            data.get("load_full_cosmos_pipeline"),
        )
    data["num_world_steps"] = 0
    data["load_full_cosmos_pipeline"] = False
    return TheWorldConfig(**data)


def _gemma_from_pretrained(source: str, subfolder: str, dtype, device_map, hub_kwargs, attn_implementation):
    kw = dict(hub_kwargs)
    if subfolder:
        kw["subfolder"] = subfolder
    if dtype is not None:
        kw["dtype"] = dtype
    move_to = None
    if device_map is not None:
        import importlib.util

        single = isinstance(device_map, (str, int, torch.device)) or (
            isinstance(device_map, dict) and len(set(device_map.values())) == 1
        )
        if single and importlib.util.find_spec("accelerate") is None:
            # transformers needs accelerate for any device_map; a one-device map needs nothing but a move.
            move_to = _single_device(device_map)
        else:
            kw["device_map"] = device_map
    if attn_implementation is not None:
        kw["attn_implementation"] = attn_implementation
    # Only safetensors, never pickle: a base that ships only pytorch_model.bin is refused.
    gemma = Gemma3ForConditionalGeneration.from_pretrained(source, use_safetensors=True, **kw)
    return gemma.to(move_to) if move_to is not None else gemma


def _gemma_weight_files(source: str, subfolder: str, hub_kwargs: dict) -> list[str]:
    return weight_files(source, "model", subfolder, **hub_kwargs)


def _vae_source(config: TheWorldConfig, hub_kwargs: dict) -> tuple[dict, list[str]]:
    """Resolve the Cosmos VAE config and weight files, honouring the pinned revision."""
    kw = _hub(hub_kwargs)
    if config.cosmos_revision:
        kw["revision"] = config.cosmos_revision
    else:
        kw.pop("revision", None)
    cfg_path = resolve_file(config.cosmos_model_name, "config.json", "vae", **kw)
    if cfg_path is None:
        raise FileNotFoundError(
            f"No vae/config.json in the Cosmos source {config.cosmos_model_name!r}. It must be a Cosmos-Predict2 "
            "pipeline folder or repo (model_index.json with a vae/ subfolder); pass cosmos_model_name=... or, for a "
            "checkpoint, save it with save_full_model=True to be independent of the base sources."
        )
    return _read_json(cfg_path), weight_files(config.cosmos_model_name, "diffusion_pytorch_model", "vae", **kw)


VAE_ENCODER_PREFIXES = ("encoder.", "quant_conv.")


def _load_vae_encoder(model: TheWorld, files: list[str], device, dtype) -> dict[str, str]:
    """Read only the VAE encoder tensors into ``model.cosmos_vae``; return their fingerprints per file."""
    state, prints = _read_vae_encoder(files)
    _assign_strict(model.cosmos_vae, state, "Cosmos VAE encoder", device=device, dtype=dtype)
    return prints


def _read_vae_encoder(files: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The VAE encoder tensors of the Cosmos VAE files (nothing else is read) and their fingerprints per file."""
    state, prints = {}, {}
    for path in files:
        part = read_safetensors(path, prefix_filter=VAE_ENCODER_PREFIXES)
        if part:
            # from the bytes just read: the same value as fingerprint_safetensors(path, keys), no second read
            prints[os.path.basename(path)] = fingerprint_tensors(part)
        state.update(part)
    return state, prints


def _assign_strict(module: nn.Module, state: dict, what: str, device=None, dtype=None) -> None:
    """Load ``state`` into ``module`` strictly (same key set and shapes), materialising meta tensors."""
    _strict_check(state, module.state_dict(), f"{what} weights")
    cast = {
        k: v.to(device=device, dtype=dtype if (dtype is not None and v.is_floating_point()) else v.dtype)
        for k, v in state.items()
    }
    module.load_state_dict(cast, strict=True, assign=True)


def _gemma_device(model: TheWorld) -> torch.device:
    return model.model.language_model.embed_tokens.weight.device


def _install_world_modules(model: TheWorld, device) -> None:
    """Allocate the projector/boundary/step embeddings in fp32 and initialise them."""
    for name in ("world_projector", "world_boundary_embeddings", "world_step_embeddings"):
        module = getattr(model, name, None)
        if module is not None:
            module.to_empty(device=device)
            module.to(torch.float32)
            model._init_weights(module)


def _init_boundaries_from_gemma(model: TheWorld) -> None:
    """Start the boundary embeddings at Gemma's (scaled) ``<start_of_image>``/``<end_of_image>`` embeddings."""
    cfg = model.config
    with torch.no_grad():
        ids = torch.tensor([cfg.boi_token_index, cfg.eoi_token_index], device=_gemma_device(model))
        model.world_boundary_embeddings.weight.copy_(model.get_input_embeddings()(ids).float())


def _fingerprints_gemma(files: list[str]) -> dict[str, str]:
    return {os.path.basename(p): fingerprint_safetensors(p) for p in files}


def _build_fresh(cls, source, raw, config_path, subfolder, overrides, *, dtype, device_map, hub_kwargs, attn_implementation):
    """Case A: a fresh TheWorld around a Gemma 3 model."""
    from transformers import AutoProcessor, Gemma3Config

    gemma_config = Gemma3Config.from_dict(raw)
    for key in ("gemma_model_name", "gemma_revision"):
        if key in overrides:
            raise ValueError(
                f"{key}= applies to loading a TheWorld checkpoint; {source!r} is itself the Gemma base. Pass the Gemma "
                "source as the first argument and its revision as revision=."
            )
    cosmos = overrides.pop("cosmos_model_name", None) or TheWorldConfig.cosmos_model_name
    cosmos_pin = overrides.pop("cosmos_revision", None)
    gemma_revision = commit_of(config_path)
    gemma_dict = gemma_config.to_dict()
    for k in ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype"):
        gemma_dict.pop(k, None)
    config = TheWorldConfig(
        **gemma_dict,
        gemma_model_name=source,
        gemma_revision=gemma_revision,
        cosmos_model_name=cosmos,
        **overrides,
    )
    enable_world = config.enable_world
    vae_files: list[str] = []
    if enable_world:
        _import_diffusers()
        # ``revision=`` names the Gemma revision; the Cosmos source has its own (``cosmos_revision=``, default main).
        cosmos_kw = _hub(hub_kwargs)
        cosmos_kw.pop("revision", None)
        if cosmos_pin:
            cosmos_kw["revision"] = cosmos_pin
        vae_cfg_path = resolve_file(cosmos, "config.json", "vae", **cosmos_kw)
        if vae_cfg_path is None:
            raise FileNotFoundError(
                f"No vae/config.json in the Cosmos source {cosmos!r}; pass cosmos_model_name= a Cosmos-Predict2 "
                "pipeline folder or hub repo id."
            )
        vae_cfg = {k: v for k, v in _read_json(vae_cfg_path).items() if not k.startswith("_")}
        config.vae_config = vae_cfg
        config.cosmos_revision = commit_of(vae_cfg_path)
        config.validate_world()
    processor = world_processor_from_gemma(
        AutoProcessor.from_pretrained(source, subfolder=subfolder, **_hub(hub_kwargs)), config
    )
    config.start_of_world_token_id = processor.start_of_world_token_id
    config.end_of_world_token_id = processor.end_of_world_token_id
    config.world_token_id = processor.world_token_id

    gemma = _gemma_from_pretrained(source, subfolder, dtype, device_map, _hub(hub_kwargs), attn_implementation)
    model = _skeleton_around(cls, config, gemma)
    device = _gemma_device(model)
    gemma_files = _gemma_weight_files(source, subfolder, _hub(hub_kwargs))
    fingerprints = {"gemma": _fingerprints_gemma(gemma_files)}
    if enable_world:
        vae_cfg, vae_files = _vae_source(config, hub_kwargs)
        fingerprints["cosmos_vae"] = _load_vae_encoder(model, vae_files, device, model.dtype)
        _install_world_modules(model, device)
        _init_boundaries_from_gemma(model)
        fingerprints.update(model._load_rollout(hub_kwargs) or {})
    config.base_fingerprints = fingerprints
    model.processor = processor
    model.apply_freeze_flags()
    model.eval()
    return model


def _skeleton_around(cls: type[TheWorld], config: TheWorldConfig, gemma: Gemma3ForConditionalGeneration) -> TheWorld:
    """TheWorld around a loaded Gemma 3: Gemma's modules are used as they are and only the world modules are created,
    without initialising them (the loader fills or initialises every one). Without rollout they are allocated but
    never written (so never resident) until filled, which builds faster than the meta device; the rollout loader needs
    its placeholders on the meta device."""
    from transformers.initialization import no_init_weights

    token = _PREBUILT_GEMMA.set(gemma)
    try:
        with torch.device("meta") if config.rollout_enabled else no_init_weights():
            model = cls(config)
    finally:
        _PREBUILT_GEMMA.reset(token)
    _adopt_gemma(model, gemma)
    return model


def _adopt_gemma(model: TheWorld, gemma: Gemma3ForConditionalGeneration) -> None:
    """Move a loaded Gemma 3's modules into the (meta) TheWorld skeleton."""
    model.model = gemma.model
    model.lm_head = gemma.lm_head
    if getattr(gemma, "hf_device_map", None):
        model.hf_device_map = gemma.hf_device_map
    model.generation_config = gemma.generation_config
    model.config.text_config = gemma.config.text_config
    model.config.vision_config = gemma.config.vision_config
    model.config._attn_implementation = gemma.config._attn_implementation


def _check_overrides(config: TheWorldConfig, overrides: dict) -> None:
    """Architecture fields must match the checkpoint; freeze flags and base sources may be overridden."""
    for key in ARCHITECTURE_FIELDS:
        if key in overrides and overrides[key] != getattr(config, key):
            raise ValueError(
                f"The checkpoint was trained with {key}={getattr(config, key)!r} but {key}={overrides[key]!r} was "
                "passed. Architecture fields cannot change at load time; drop the argument, or build a new model from "
                "the Gemma base with these settings."
            )
    for base in ("gemma", "cosmos"):
        # A new source invalidates the recorded commit unless a revision for it is given too.
        if f"{base}_model_name" in overrides and f"{base}_revision" not in overrides:
            overrides[f"{base}_revision"] = None
    for key, value in overrides.items():
        if key not in ARCHITECTURE_FIELDS:
            setattr(config, key, value)
    config.validate_world()


def _read_checkpoint_tensors(source: str, subfolder: str, hub_kwargs: dict) -> tuple[dict, dict]:
    """All tensors of a checkpoint's ``model.safetensors`` (or shards) and the header metadata."""
    files = weight_files(source, "model", subfolder, **hub_kwargs)
    state, metadata = {}, {}
    for path in files:
        header, _ = read_safetensors_header(path)
        file_meta = dict(header.get("__metadata__") or {})
        recorded = file_meta.pop(DIGEST_KEY, None)
        metadata.update(file_meta)
        part = read_safetensors(path)
        if recorded is not None and tensors_digest(part) != recorded:
            raise ValueError(
                f"{path} is corrupt: its tensor data do not match the sha256 recorded when it was saved. Re-download "
                "it (delete it from the hub cache) or re-save the checkpoint."
            )
        state.update(part)
    return state, metadata


def _check_fingerprints(recorded: dict | None, current: dict, ignore: bool) -> None:
    if not recorded:
        return
    diffs = []
    for part, files in current.items():
        for name, fp in files.items():
            old = (recorded.get(part) or {}).get(name)
            if old is not None and old.split(":")[0] != fp.split(":")[0]:
                logger.warning("%s/%s was fingerprinted with another scheme (%s); not verified.", part, name, old[:8])
            elif old is not None and old != fp:
                diffs.append(f"{part}/{name}")
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


def _strict_check(state: dict, expected: dict, what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unknown = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or unknown or shapes:
        detail = []
        if unknown:
            detail.append(f"unknown keys {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
        if missing:
            detail.append(f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if shapes:
            detail.append(
                "shape mismatches "
                + ", ".join(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}" for k in shapes[:10])
            )
        raise ValueError(
            f"{what} does not match the model: " + "; ".join(detail) + ". The checkpoint belongs to another "
            "configuration or is damaged; nothing was loaded."
        )


def _convert_legacy_state(state: dict) -> dict:
    """Earlier research checkpoints: drop the VAE decoder tensors, which never influenced outputs."""
    dropped = [k for k in state if k.startswith(("cosmos_vae.decoder.", "cosmos_vae.post_quant_conv."))]
    if dropped:
        logger.info("Dropping %d Cosmos VAE decoder tensors from the earlier checkpoint (never used).", len(dropped))
    return {k: v for k, v in state.items() if k not in set(dropped)}


def _load_checkpoint(cls, source, config, subfolder, overrides, ignore_fingerprint_mismatch, legacy, **loader):
    """Load a TheWorld checkpoint (see `load_theworld`)."""
    hub_kwargs = loader["hub_kwargs"]
    saved_prefixes = tuple(config.trainable_prefixes())  # what the checkpoint holds (before freeze overrides)
    _check_overrides(config, overrides)
    if legacy and config.enable_world and config.vae_config is None:
        vae_cfg, _ = _vae_source(config, hub_kwargs)
        config.vae_config = {k: v for k, v in vae_cfg.items() if not k.startswith("_")}
        config.validate_world()
    state, metadata = _read_checkpoint_tensors(source, subfolder, hub_kwargs)
    kind = config.checkpoint_kind or metadata.get("checkpoint_kind") or "partial"
    processor = _load_processor(source, subfolder, config, hub_kwargs)
    model = _load_checkpoint_weights(cls, config, state, kind, saved_prefixes, ignore_fingerprint_mismatch, legacy, **loader)
    config.checkpoint_kind = kind
    model.processor = processor
    model.apply_freeze_flags()
    model.eval()
    return model


def _load_checkpoint_weights(cls, config, state, kind, saved_prefixes, ignore_fingerprint_mismatch, legacy, **loader):
    """The model of a checkpoint: a full one from its own tensors; a partial one from its bases plus ``state``."""
    from transformers.initialization import no_init_weights

    dtype, device_map, hub_kwargs = loader["dtype"], loader["device_map"], loader["hub_kwargs"]
    if kind == "full":
        with no_init_weights():
            model = cls(config)
        if model.config.tie_word_embeddings:
            model.tie_weights()
        expected = {k: v for k, v in model.state_dict().items()}
        for target in (model._tied_weights_keys or {}) if config.tie_word_embeddings else {}:
            expected.pop(target, None)
        _strict_check(state, expected, "Full checkpoint")
        target_dtype = dtype if isinstance(dtype, torch.dtype) else None
        fp32 = tuple(f"{m}." for m in cls._keep_in_fp32_modules)
        with torch.no_grad():
            for key, tensor in state.items():
                param = model.get_parameter(key) if _is_param(model, key) else model.get_buffer(key)
                want = param.dtype if target_dtype is None or key.startswith(fp32) else target_dtype
                if tensor.is_floating_point() and target_dtype is None:
                    want = tensor.dtype if not key.startswith(fp32) else torch.float32
                param.data = tensor.to(want) if tensor.is_floating_point() else tensor.to(param.dtype)
        if config.tie_word_embeddings:
            model.tie_weights()
        device = _single_device(device_map)
        if device is not None:
            model.to(device)
        model._load_rollout(hub_kwargs)
    else:
        if config.enable_world:
            _import_diffusers()  # fail before the long Gemma load, not after it
        gemma_kw = _hub(hub_kwargs)
        gemma_kw.pop("revision", None)
        if config.gemma_revision:
            gemma_kw["revision"] = config.gemma_revision
        try:
            gemma = _gemma_from_pretrained(
                config.gemma_model_name, "", dtype, device_map, gemma_kw, loader["attn_implementation"]
            )
        except OSError as err:
            raise OSError(
                f"Could not load the Gemma base {config.gemma_model_name!r} (revision {config.gemma_revision}) that "
                f"this partial checkpoint needs: {err}. Make it available (download it, or pass "
                "gemma_model_name=<local path>), or use a full checkpoint (save_pretrained(save_full_model=True))."
            ) from err
        model = _skeleton_around(cls, config, gemma)
        device = _gemma_device(model)
        fingerprints = {"gemma": _fingerprints_gemma(_gemma_weight_files(config.gemma_model_name, "", gemma_kw))}
        if config.enable_world:
            vae_state, fingerprints["cosmos_vae"] = _read_vae_encoder(_vae_source(config, hub_kwargs)[1])
            _assign_strict(model.cosmos_vae, vae_state, "Cosmos VAE encoder", device=device, dtype=model.dtype)
            _install_world_modules(model, device)
            _init_boundaries_from_gemma(model)
            fingerprints.update(model._load_rollout(hub_kwargs) or {})
        if not legacy:
            _check_fingerprints(config.base_fingerprints, fingerprints, ignore_fingerprint_mismatch)
        else:
            config.base_fingerprints = fingerprints
            state = _convert_legacy_state(state)
        full = model.state_dict()
        expected = {k: v for k, v in full.items() if k.startswith(saved_prefixes)}
        for target in (model._tied_weights_keys or {}) if config.tie_word_embeddings else {}:
            expected.pop(target, None)
        if legacy:
            # The earlier code never saved its boundary rows (they lived in the frozen embedding matrix).
            expected = {k: v for k, v in expected.items() if not k.startswith("world_boundary_embeddings.")}
        _strict_check(state, expected, "Checkpoint model.safetensors")
        with torch.no_grad():
            for key, tensor in state.items():
                target = full[key]
                target.copy_(tensor.to(device=target.device, dtype=target.dtype))
    return model


def _is_param(model: nn.Module, key: str) -> bool:
    module_name, _, name = key.rpartition(".")
    return name in model.get_submodule(module_name)._parameters


def _single_device(device_map) -> torch.device | None:
    if device_map is None:
        return None
    if isinstance(device_map, dict):
        devices = set(device_map.values())
        if len(devices) != 1:
            raise ValueError("A full TheWorld checkpoint loads onto one device; pass device_map='cpu' or 'cuda:0'.")
        device_map = devices.pop()
    if device_map == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device_map) if not isinstance(device_map, int) else torch.device("cuda", device_map)


def world_processor_from_gemma(base, config: TheWorldConfig) -> TheWorldProcessor:
    """A `TheWorldProcessor` around a Gemma 3 processor's image processor, tokenizer and chat template."""
    return TheWorldProcessor(
        image_processor=base.image_processor,
        tokenizer=base.tokenizer,
        chat_template=base.chat_template,
        image_seq_length=base.image_seq_length,
        num_world_tokens=config.num_world_tokens,
        world_image_size=config.world_image_size,
        start_of_world_token=config.start_of_world_token,
        end_of_world_token=config.end_of_world_token,
        world_token=config.world_token,
    )


def _load_processor(source: str, subfolder: str, config: TheWorldConfig, hub_kwargs: dict) -> TheWorldProcessor:
    """The checkpoint's processor, or (earlier checkpoints, which saved none) the Gemma base's plus world tokens."""
    if resolve_file(source, "processor_config.json", subfolder, **_hub(hub_kwargs)):
        kw = _hub(hub_kwargs)
        if subfolder:
            kw["subfolder"] = subfolder
        # This code is the checkpoint's own (or the installed package): its tokenizer lookup reads config.json, whose
        # auto_map points back at this same code, so no further trust decision is involved.
        processor = TheWorldProcessor.from_pretrained(source, trust_remote_code=True, **kw)
    else:
        from transformers import AutoProcessor

        kw = _hub(hub_kwargs)
        kw.pop("revision", None)
        if config.gemma_revision:
            kw["revision"] = config.gemma_revision
        processor = world_processor_from_gemma(AutoProcessor.from_pretrained(config.gemma_model_name, **kw), config)
    processor.num_world_tokens = config.num_world_tokens
    processor.world_image_size = config.world_image_size
    ids = (processor.start_of_world_token_id, processor.end_of_world_token_id, processor.world_token_id)
    if config.world_token_id is None:
        config.start_of_world_token_id, config.end_of_world_token_id, config.world_token_id = ids
    elif ids != (config.start_of_world_token_id, config.end_of_world_token_id, config.world_token_id):
        raise ValueError(
            f"The checkpoint's tokenizer gives world token ids {ids} but its config records "
            f"{(config.start_of_world_token_id, config.end_of_world_token_id, config.world_token_id)}; the tokenizer "
            "files do not belong to this checkpoint."
        )
    return processor


# ----------------------------------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------------------------------
REMOTE_CODE_FILES = (
    "configuration_theworld.py",
    "modeling_theworld.py",
    "processing_theworld.py",
    "rollout_theworld.py",
)
AUTO_MAP = {
    "AutoConfig": "configuration_theworld.TheWorldConfig",
    "AutoModel": "modeling_theworld.TheWorld",
    "AutoModelForImageTextToText": "modeling_theworld.TheWorld",
}
#: Files a checkpoint owns; stale ones (e.g. old shards) are removed when a new checkpoint replaces it.
_OWNED_PATTERNS = ("model.safetensors", "model-", "model.safetensors.index.json")


def parse_size(size: int | str) -> int:
    """``"5GB"``/``"200MB"``/``"10KB"`` or an int -> bytes."""
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    text = size.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    return int(text)


def shard_state_dict(state: dict, max_shard_size: int) -> list[dict]:
    """Split ``state`` into shards of at most ``max_shard_size`` bytes (a larger tensor gets its own shard)."""
    shards: list[dict] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


#: safetensors header metadata key holding `tensors_digest` of the file's tensors (checked on load).
DIGEST_KEY = "theworld_tensors_sha256"


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and raw bytes of ``state``'s tensors (in name order)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def write_safetensors(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file`` plus the `tensors_digest` in the metadata, with a canonical header.

    safetensors writes the metadata map in a random order, so two saves of the same model would differ in bytes; the
    header is rewritten in place with sorted keys (same length, same content), making saves byte-reproducible (equal
    hashes, so hub uploads of an unchanged checkpoint deduplicate).
    """
    from safetensors.torch import save_file

    save_file(tensors, path, metadata={**metadata, DIGEST_KEY: tensors_digest(tensors)})
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
        if len(canonical) <= length:
            f.seek(8)
            f.write(canonical + b" " * (length - len(canonical)))


def checkpoint_metadata(model: TheWorld, kind: str) -> dict:
    """String metadata written into every safetensors header."""
    cfg = model.config
    return {
        "format": "pt",
        "checkpoint_kind": kind,
        "theworld_version": cfg.theworld_version,
        "base_fingerprints": json.dumps(cfg.base_fingerprints or {}, sort_keys=True),
        "gemma_model_name": str(cfg.gemma_model_name),
        "cosmos_model_name": str(cfg.cosmos_model_name),
    }


def legacy_checkpoint_config(model: TheWorld, kind: str) -> dict:
    """The seed document's backward-compatible ``checkpoint_config.json``."""
    cfg = model.config
    trainable, total, pct = model.get_trainable_parameters()
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
        "trainable_percent": round(pct, 4),
        "theworld_version": cfg.theworld_version,
    }


def model_card(model: TheWorld, kind: str, saved: dict) -> str:
    """A README.md model card: base models, what was trained, parameter counts and how to load."""
    cfg = model.config
    trainable, total, pct = model.get_trainable_parameters()
    nbytes = sum(t.numel() * t.element_size() for t in saved.values())
    modules: dict[str, int] = {}
    for key, tensor in saved.items():
        top = ".".join(key.split(".")[:2]) if key.startswith("model.") else key.split(".")[0]
        modules[top] = modules.get(top, 0) + tensor.numel()
    rows = "\n".join(f"| `{m}` | {n:,} |" for m, n in sorted(modules.items()))
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
base_model:
- {cfg.gemma_model_name}
- {cfg.cosmos_model_name}
tags:
- theworld
- world-model
- custom_code
---

# TheWorld checkpoint ({kind})

Gemma 3 fused with the Cosmos-Predict2 world model: Cosmos VAE latents of the input image become
{cfg.num_world_tokens} world tokens between `<start_of_world>` and `<end_of_world>`.

| | |
|---|---|
| Gemma base | `{cfg.gemma_model_name}` @ `{cfg.gemma_revision or "local"}` |
| Cosmos base | `{cfg.cosmos_model_name}` @ `{cfg.cosmos_revision or "local"}` |
| world projection | {cfg.world_projection_mode} / {cfg.projection_architecture}, image {cfg.world_image_size}px, pooling {cfg.world_pooling}, rollout steps {cfg.num_world_steps} |
| frozen | vision={cfg.freeze_gemma_vision}, language={cfg.freeze_gemma_language}, cosmos_vae={cfg.freeze_cosmos_vae} |
| trainable parameters | {trainable:,} of {total:,} ({pct:.4f}%) |
| saved tensors | {sum(t.numel() for t in saved.values()):,} elements, {nbytes:,} bytes |

## What was trained

| module | parameters saved |
|---|---|
{rows}

## Load

```python
from transformers import AutoModel, AutoProcessor

# Pin the revision: trust_remote_code runs this repository's Python code.
model = AutoModel.from_pretrained("REPO_OR_DIR", trust_remote_code=True, revision="COMMIT_SHA")
processor = AutoProcessor.from_pretrained("REPO_OR_DIR", trust_remote_code=True, revision="COMMIT_SHA")
```

With `pip install theworld`, no remote code is needed: `import theworld` and then `AutoModel.from_pretrained("REPO_OR_DIR")`.
A partial checkpoint also loads its base models (`{cfg.gemma_model_name}` and the VAE encoder of
`{cfg.cosmos_model_name}`) at the pinned revisions and checks their fingerprints.
"""


def save_checkpoint(model: TheWorld, save_directory: str, save_full_model: bool = False, max_shard_size="5GB") -> None:
    """Write a checkpoint folder atomically (see `TheWorld.save_pretrained`)."""
    import shutil
    import tempfile

    kind = "full" if save_full_model else "partial"
    if save_full_model:
        state = dict(model.state_dict())
        for target in (model._tied_weights_keys or {}) if model.config.tie_word_embeddings else {}:
            state.pop(target, None)
    else:
        state = model.trainable_state_dict()
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    os.makedirs(save_directory, exist_ok=True)
    recover_interrupted_save(save_directory, roll_back_incomplete=True)
    staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=save_directory)
    try:
        metadata = checkpoint_metadata(model, kind)
        shards = shard_state_dict(state, parse_size(max_shard_size)) if save_full_model else [state]
        if len(shards) == 1:
            write_safetensors(shards[0], os.path.join(staging, "model.safetensors"), metadata)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                write_safetensors(shard, os.path.join(staging, name), metadata)
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(t.numel() * t.element_size() for t in state.values())
            with open(os.path.join(staging, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}, f, indent=2)

        config = model.config.__class__.from_dict(model.config.to_dict())
        config.checkpoint_kind = kind
        config.architectures = ["TheWorld"]
        config.auto_map = dict(AUTO_MAP)
        config.save_pretrained(staging)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(staging)
        with open(os.path.join(staging, "checkpoint_config.json"), "w") as f:
            json.dump(legacy_checkpoint_config(model, kind), f, indent=2)
        here = os.path.dirname(os.path.abspath(__file__))
        for name in REMOTE_CODE_FILES:
            shutil.copyfile(os.path.join(here, name), os.path.join(staging, name))
        if model.processor is not None:
            model.processor.save_pretrained(staging)
            _add_processor_auto_map(staging)
        with open(os.path.join(staging, "README.md"), "w") as f:
            f.write(model_card(model, kind, state))

        umask = os.umask(0)
        os.umask(umask)
        for name in os.listdir(staging):  # safetensors writes 0600 temp files; give them the usual permissions
            os.chmod(os.path.join(staging, name), 0o666 & ~umask)
        # Commit point: the marker (written atomically) lists every file; from here on the save rolls forward.
        marker = os.path.join(staging, COMPLETE_MARKER)
        with open(marker + ".tmp", "w") as f:
            json.dump(sorted(os.listdir(staging)), f)
        os.replace(marker + ".tmp", marker)
        _publish_staged(save_directory, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


STAGING_PREFIX = ".theworld-staging-"
COMPLETE_MARKER = ".theworld-complete"


def _publish_staged(save_directory: str, staging: str) -> None:
    """Move a complete staged checkpoint into ``save_directory`` (weights first, ``config.json`` last), then remove
    stale weight files of the previous checkpoint (e.g. old shards) and the staging folder. Idempotent: safe to rerun
    after a crash midway."""
    import shutil

    try:
        files = _read_json(os.path.join(staging, COMPLETE_MARKER))
    except FileNotFoundError:
        return  # another process (the saver itself, or a concurrent load) finished it
    for name in sorted(files, key=lambda n: (n == "config.json", n)):
        try:
            os.replace(os.path.join(staging, name), os.path.join(save_directory, name))
        except FileNotFoundError:
            pass  # already moved
    for name in os.listdir(save_directory):
        path = os.path.join(save_directory, name)
        if name not in files and os.path.isfile(path) and name.startswith(_OWNED_PATTERNS):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    shutil.rmtree(staging, ignore_errors=True)


def recover_interrupted_save(folder: str, roll_back_incomplete: bool = False) -> None:
    """Finish or undo a save of ``folder`` that was killed midway.

    A staging folder whose completion marker was written is published (rolled forward): the save had finished writing
    and only the moves were interrupted. An incomplete one is deleted when ``roll_back_incomplete`` (the next save
    does this); the files in ``folder`` then still are the previous checkpoint, untouched.
    """
    import shutil

    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder)):
        staging = os.path.join(folder, name)
        if not (name.startswith(STAGING_PREFIX) and os.path.isdir(staging)):
            continue
        if os.path.exists(os.path.join(staging, COMPLETE_MARKER)):
            logger.warning("Completing an interrupted save of %s (its files were all written).", folder)
            try:
                _publish_staged(folder, staging)
            except OSError as err:
                raise OSError(
                    f"{folder} holds a save that was interrupted after all its files were written ({name}), and it "
                    f"could not be completed here ({err}). Make the folder writable and load it again, or delete "
                    f"{staging} to keep the checkpoint as it is."
                ) from err
        elif roll_back_incomplete:
            shutil.rmtree(staging, ignore_errors=True)


def _add_processor_auto_map(folder: str) -> None:
    """Point ``AutoProcessor`` at the shipped ``processing_theworld.py``."""
    for name in ("processor_config.json",):
        path = os.path.join(folder, name)
        if not os.path.exists(path):
            continue
        data = _read_json(path)
        auto_map = data.get("auto_map") or {}
        auto_map["AutoProcessor"] = "processing_theworld.TheWorldProcessor"
        data["auto_map"] = auto_map
        if name == "processor_config.json":
            data["processor_class"] = "TheWorldProcessor"
        with open(path, "w") as f:
            json.dump(data, f, indent=2)


def upload_checkpoint_folder(folder: str, repo_id: str, **kwargs):
    """Create ``repo_id`` (if needed) and upload ``folder`` as one commit through huggingface_hub."""
    from huggingface_hub import HfApi

    api = HfApi(token=kwargs.pop("token", None))
    private = kwargs.pop("private", None)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=kwargs.pop("commit_message", None) or "Upload TheWorld checkpoint",
        revision=kwargs.pop("revision", None),
        create_pr=kwargs.pop("create_pr", False),
        path_in_repo=kwargs.pop("path_in_repo", None),
        # never leftovers of an interrupted save
        ignore_patterns=[f"{STAGING_PREFIX}*", f"{STAGING_PREFIX}*/**", *(kwargs.pop("ignore_patterns", None) or [])],
    )


# ----------------------------------------------------------------------------------------------------------------------
# Rollout loading (the module and its math live in rollout_theworld.py)
# ----------------------------------------------------------------------------------------------------------------------
def _cosmos_hub(config: TheWorldConfig, hub_kwargs: dict) -> dict:
    """Hub arguments for the Cosmos source: the caller's, with the pinned ``cosmos_revision`` as the revision."""
    kw = _hub(hub_kwargs)
    kw.pop("revision", None)
    if config.cosmos_revision:
        kw["revision"] = config.cosmos_revision
    return kw


def _rollout_is_loaded(rollout: nn.Module | None) -> bool:
    return rollout is not None and not any(t.is_meta for t in rollout.state_dict().values())


def _load_rollout_impl(self: TheWorld, hub_kwargs: dict) -> dict[str, dict[str, str]]:
    """Load what rollout needs from the Cosmos source; return the fingerprints of the files read.

    Reads only ``transformer/`` (the DiT weights, and at a fresh build its ``config.json`` and
    ``scheduler/scheduler_config.json``), honouring ``cosmos_revision``; never the safety checker. The fixed prompt
    embedding is computed with ``text_encoder/`` + ``tokenizer/`` only at a fresh build (or when
    ``load_full_cosmos_pipeline=True`` with ``num_world_steps=0``, whose checkpoints do not carry it); a
    ``num_world_steps > 0`` partial checkpoint carries it and fills the placeholder made here. A full checkpoint
    already holds everything, so nothing is read.
    """
    cfg = self.config
    rollout = getattr(self, "world_rollout", None)
    if not cfg.rollout_enabled or _rollout_is_loaded(rollout):
        return {}
    kw = _cosmos_hub(cfg, hub_kwargs)
    source = cfg.cosmos_model_name
    vae_param = next(self.cosmos_vae.parameters())
    device, dtype = vae_param.device, vae_param.dtype
    if rollout is None:
        found = {}
        for sub, name in (("transformer", "config.json"), ("scheduler", "scheduler_config.json")):
            path = resolve_file(source, name, sub, **kw)
            if path is None:
                raise FileNotFoundError(
                    f"No {sub}/{name} in the Cosmos source {source!r}; rollout (num_world_steps > 0 or "
                    "load_full_cosmos_pipeline=True) needs a Cosmos-Predict2 Video2World pipeline with transformer/ and "
                    "scheduler/ subfolders. Pass cosmos_model_name=..., or set num_world_steps=0."
                )
            found[sub] = strip_private(_read_json(path))
        cfg.transformer_config, cfg.scheduler_config = found["transformer"], found["scheduler"]
        with torch.device("meta"):
            rollout = self._build_rollout(cfg)
        self.world_rollout = rollout
    files = weight_files(source, "diffusion_pytorch_model", "transformer", **kw)
    state, prints = {}, {}
    for path in files:
        state.update(read_safetensors(path))
        prints[os.path.basename(path)] = fingerprint_safetensors(path)
    _assign_strict(rollout.transformer, state, "Cosmos DiT (transformer/)", device=device, dtype=dtype)
    keep_fp32 = tuple(getattr(rollout.transformer, "_keep_in_fp32_modules", None) or ())
    for name, param in rollout.transformer.named_parameters():
        if keep_fp32 and any(part in keep_fp32 for part in name.split(".")):
            param.data = param.data.float()
    rollout.transformer.requires_grad_(False)
    fingerprints = {"cosmos_transformer": prints}
    shape = tuple(rollout.prompt_embeds.shape)
    if cfg.checkpoint_kind is not None and cfg.num_world_steps > 0:
        # A placeholder: the checkpoint carries the prompt embedding computed at the fresh build.
        rollout.prompt_embeds = torch.zeros(shape, device=device, dtype=dtype)
    else:
        text_files = weight_files(source, "model", "text_encoder", **kw)
        fingerprints["cosmos_text_encoder"] = {os.path.basename(p): fingerprint_safetensors(p) for p in text_files}
        rollout.prompt_embeds = encode_fixed_prompt(source, kw, shape[-1], device, dtype)
    return fingerprints


TheWorld._load_rollout = _load_rollout_impl

__all__ = ["TheWorld", "TheWorldProjector", "latents_to_world_tokens", "normalize_latents"]
