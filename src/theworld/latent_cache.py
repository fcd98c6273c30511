"""On-disk cache of world latents, so that a frozen world encoder encodes every distinct image once.

While the world encoder (the Wan 2.1 VAE encoder of Cosmos-Predict2) is frozen, the latents of an image never change
during training, and encoding them costs more than the rest of a tiny training step. `LatentCache` stores them as one
safetensors file per image:

    cache_dir/<namespace>/<key[:2]>/<key>.safetensors      tensor "latents" (z, T, h, w), float32
    cache_dir/<namespace>/namespace.json                     what the namespace was derived from

* ``key`` = sha256 of the world pixels the encoder receives (``(3, S, S)`` float32 from the processor's
  ``world_pixel_values``, after its resize), i.e. the image *content*, not its file name;
* ``namespace`` = sha256 of everything else the latents depend on (`namespace_fields`): the Cosmos weight fingerprints
  recorded at build time (``config.base_models["cosmos"]["fingerprints"]``), a digest of the world-encoder weights
  actually in memory (so a fine-tuned encoder never reuses stale latents), the encoder dtype, ``world_image_size``,
  ``world_resize_mode``, ``legacy_preprocessing``, the latent statistics, ``num_world_steps`` and, when rollout is on,
  ``rollout_mode``, ``rollout_seed``, ``rollout_num_inference_steps``, ``rollout_guidance_scale``, the scheduler config
  and a digest of the rollout weights (DiT and prompt embeddings).

Each file's safetensors metadata repeats the namespace and key; a file that does not match, or cannot be read, is
re-encoded (with a warning) rather than trusted. Writes are atomic (temporary file + ``os.replace``), so parallel
processes can share a cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import torch
from safetensors.torch import load, save_file
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = 2


def _tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's shape, dtype and bytes (exact)."""
    t = t.detach().to("cpu").contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def weights_digest(module: torch.nn.Module) -> str:
    """A digest of a module's current weights and buffers: per tensor its name, shape, dtype, sum and 64 sampled values.

    Cheap (one pass for the sums) and sensitive to any training of the module.
    """
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(module.state_dict().items()):
            flat = t.detach().reshape(-1).to("cpu", torch.float64)
            idx = torch.linspace(0, max(flat.numel() - 1, 0), steps=min(64, flat.numel())).long()
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|{float(flat.sum()):.17g}|".encode())
            h.update(flat[idx].numpy().tobytes())
    return h.hexdigest()


def world_encoder_of(model: Any) -> torch.nn.Module:
    """The world encoder of a TheWorld model (``model.model.world_encoder``)."""
    if not model.config.enable_world:
        raise ValueError("Latent caching needs a model with enable_world=True; this one has no world encoder.")
    return model.model.world_encoder


def namespace_fields(model: Any) -> dict[str, Any]:
    """Everything besides the image that a world latent depends on (see the module docs)."""
    cfg = model.config
    encoder = world_encoder_of(model)
    fields: dict[str, Any] = {
        "format": CACHE_FORMAT_VERSION,
        "cosmos_fingerprints": dict(sorted((cfg.base_fingerprints.get("cosmos") or {}).items())),
        "encoder_weights": weights_digest(encoder),
        "encoder_dtype": str(next(encoder.parameters()).dtype),
        "world_image_size": cfg.world_image_size,
        "world_resize_mode": cfg.world_resize_mode,
        "legacy_preprocessing": cfg.legacy_preprocessing,
        "latents_mean": list(cfg.world_config.latents_mean),
        "latents_std": list(cfg.world_config.latents_std),
        "num_world_steps": cfg.num_world_steps,
    }
    if cfg.num_world_steps > 0:
        rollout = model.model.world_rollout
        fields.update(
            rollout_mode=cfg.rollout_mode,
            rollout_seed=cfg.rollout_seed,
            rollout_num_inference_steps=cfg.rollout_num_inference_steps,
            rollout_guidance_scale=cfg.rollout_guidance_scale,
            rollout_scheduler_config=cfg.rollout_scheduler_config,
            rollout_weights=weights_digest(rollout),
            rollout_dtype=str(next(rollout.parameters()).dtype),
        )
    return fields


def _read_metadata(path: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read with plain file reads."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("truncated safetensors header")
        n = int.from_bytes(head, "little")
        if n > 1 << 20:
            raise ValueError("implausible safetensors header size")
        header = json.loads(f.read(n))
    return header.get("__metadata__") or {}


def _read_file(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a small safetensors file, copied into memory (no memory map: a file replaced or
    truncated later can never invalidate tensors already returned)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError("truncated safetensors file")
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return header.get("__metadata__") or {}, load(data)


def _atomic_save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class LatentCache:
    """Content-addressed world latents for one model (see the module docs).

    Args:
        cache_dir: root folder (created).
        model: a `TheWorld` with ``enable_world=True``; its frozen world encoder (and rollout) encodes missing images.

    Attributes:
        namespace: hex digest of :func:`namespace_fields`.
        stats: ``{"hits", "encoded", "rejected"}`` counts since creation.
    """

    def __init__(self, cache_dir: str | os.PathLike[str], model: Any) -> None:
        if any(p.requires_grad for p in world_encoder_of(model).parameters()):
            raise ValueError(
                "Cannot cache world latents while the world encoder is trainable (freeze_cosmos_vae=False): they would "
                "go stale after the first update. Freeze the encoder or disable latent caching."
            )
        self.model = model
        self.fields = namespace_fields(model)
        self.namespace = hashlib.sha256(json.dumps(self.fields, sort_keys=True).encode()).hexdigest()
        self.root = os.path.join(os.fspath(cache_dir), self.namespace[:24])
        os.makedirs(self.root, exist_ok=True)
        ns_file = os.path.join(self.root, "namespace.json")
        if not os.path.exists(ns_file):
            fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"namespace": self.namespace, **self.fields}, f, indent=2, sort_keys=True)
            os.replace(tmp, ns_file)
        self.stats = {"hits": 0, "encoded": 0, "rejected": 0}

    # ------------------------------------------------------------------ keys and files
    @staticmethod
    def key(world_pixels: torch.Tensor) -> str:
        """Content key of one world image ``(3, S, S)`` (the world encoder's exact input)."""
        return _tensor_digest(world_pixels.float())

    def path(self, key: str) -> str:
        return os.path.join(self.root, key[:2], f"{key}.safetensors")

    def get(self, key: str) -> torch.Tensor | None:
        """The cached ``(z, T, h, w)`` latents of ``key``, or ``None`` if absent or invalid (invalid files are counted
        in ``stats["rejected"]`` and will be re-encoded)."""
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            meta, tensors = _read_file(path)
            if meta.get("namespace") != self.namespace or meta.get("key") != key:
                raise ValueError("metadata does not match")
            latents = tensors["latents"]
        except Exception as e:  # corrupt, truncated or foreign file: never trust it
            logger.warning("Ignoring unusable cached latents %s (%s); re-encoding.", path, e)
            self.stats["rejected"] += 1
            return None
        self.stats["hits"] += 1
        return latents

    def put(self, key: str, latents: torch.Tensor) -> None:
        """Store ``(z, T, h, w)`` latents under ``key`` (atomic)."""
        _atomic_save(
            {"latents": latents.detach().to("cpu", torch.float32).contiguous()},
            self.path(key),
            {"namespace": self.namespace, "key": key, "format": str(CACHE_FORMAT_VERSION)},
        )

    # ------------------------------------------------------------------ datasets
    def world_pixels(self, dataset: Sequence, processor: Any, index: int) -> torch.Tensor:
        """``(3, S, S)`` world pixels of example ``index``."""
        return processor.world_pixel_values([dataset[index]["image"]])[0]

    def prepare(
        self,
        dataset: Sequence,
        processor: Any,
        batch_size: int = 32,
        accelerator: Any = None,
        progress: bool = False,
    ) -> list[str]:
        """Make sure every image of ``dataset`` has cached latents; return the key of each example.

        Keys are computed for every example; the *distinct* keys without a valid file are encoded once, in batches of
        ``batch_size``, split across processes when an ``accelerate.Accelerator`` is given (every process then waits
        for all files).
        """
        from tqdm.auto import tqdm

        keys: list[str] = []
        first: dict[str, int] = {}
        for i in range(len(dataset)):
            k = self.key(self.world_pixels(dataset, processor, i))
            keys.append(k)
            first.setdefault(k, i)
        if accelerator is not None:  # every process must see the same set of missing files
            accelerator.wait_for_everyone()
        missing = []
        for k in first:
            if not os.path.exists(self.path(k)):
                missing.append(k)
            elif self._invalid(k):
                logger.warning("Ignoring unusable cached latents %s; re-encoding.", self.path(k))
                self.stats["rejected"] += 1
                missing.append(k)
        rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
        if accelerator is not None:  # ... before any of them starts writing
            accelerator.wait_for_everyone()
        mine = missing[rank::world]
        bar = tqdm(total=len(mine), desc="encoding world latents", disable=not progress or not mine, leave=False)
        model = self.model
        device = next(world_encoder_of(model).parameters()).device
        with torch.no_grad():
            for start in range(0, len(mine), batch_size):
                chunk = mine[start : start + batch_size]
                pixels = torch.stack([self.world_pixels(dataset, processor, first[k]) for k in chunk])
                latents = model.encode_world(pixels.to(device))
                for k, lat in zip(chunk, latents):
                    self.put(k, lat)
                self.stats["encoded"] += len(chunk)
                bar.update(len(chunk))
        bar.close()
        if accelerator is not None:
            accelerator.wait_for_everyone()
        logger.info(
            "World latents: %d examples, %d distinct images, %d encoded here, cache %s",
            len(keys),
            len(first),
            len(mine),
            self.root,
        )
        return keys

    def _invalid(self, key: str) -> bool:
        try:
            meta = _read_metadata(self.path(key))
            return meta.get("namespace") != self.namespace or meta.get("key") != key
        except Exception:
            return True

    def load_all(self, keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{key: latents}`` for the distinct keys (every one must be cached)."""
        out: dict[str, torch.Tensor] = {}
        for k in dict.fromkeys(keys):
            latents = self.get(k)
            if latents is None:
                raise RuntimeError(f"World latents for {k} are missing from {self.root}; call prepare() first.")
            out[k] = latents
        return out


class CachedLatentDataset(Dataset):
    """A dataset whose items also carry ``world_latents`` ``(z, T, h, w)`` from a :class:`LatentCache`.

    Latents are held in memory (one copy per distinct image) when they fit in ``max_memory_bytes``; otherwise each
    item reads its file.
    """

    def __init__(
        self,
        dataset: Sequence,
        cache: LatentCache,
        keys: Sequence[str],
        max_memory_bytes: int = 1 << 30,
    ) -> None:
        if len(keys) != len(dataset):
            raise ValueError(f"Got {len(keys)} latent keys for {len(dataset)} examples.")
        self.dataset = dataset
        self.cache = cache
        self.keys = list(keys)
        self.memory: dict[str, torch.Tensor] | None = None
        if self.keys:
            sample = cache.get(self.keys[0])
            if sample is None:
                raise RuntimeError(f"World latents for example 0 are missing from {cache.root}; call prepare() first.")
            distinct = len(set(self.keys))
            if distinct * sample.numel() * sample.element_size() <= max_memory_bytes:
                self.memory = cache.load_all(self.keys)

    def __len__(self) -> int:
        return len(self.dataset)

    def latents(self, index: int) -> torch.Tensor:
        key = self.keys[index]
        if self.memory is not None:
            return self.memory[key]
        latents = self.cache.get(key)
        if latents is None:
            raise RuntimeError(f"World latents of example {index} ({key}) vanished from {self.cache.root}.")
        return latents

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        item["world_latents"] = self.latents(index)
        return item


__all__ = ["CachedLatentDataset", "LatentCache", "namespace_fields", "weights_digest"]
