"""Which examples each process trains on at every step: a pure function of ``(seed, step)``.

A seeded permutation per epoch, concatenated, is cut into global batches of
``per_device_batch_size x gradient_accumulation_steps x num_processes`` examples. Process ``r`` takes, for micro-step
``j``, the slice ``[(j * P + r) * b, (j * P + r + 1) * b)``. Resuming needs only the step, and the same global batch
gives the same examples whatever the process count.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch


class DataOrder:
    """Example index at every position of the infinite stream: epoch ``e`` is a permutation seeded by ``(seed, e)``."""

    def __init__(self, num_examples: int, seed: int) -> None:
        if num_examples < 1:
            raise ValueError("The training set is empty.")
        self.n = num_examples
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        """``(n,)`` permutation of epoch ``epoch``."""
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}  # a batch may straddle two epochs
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> list[int]:
        """Example indices at stream positions ``[start, start + count)``."""
        return [int(self.perm(p // self.n)[p % self.n]) for p in range(start, start + count)]


class StepBatches(torch.utils.data.Dataset):
    """Micro-batch ``i`` (``step = i // k``, ``micro = i % k``) of this process, collated."""

    def __init__(self, dataset, collator, order: DataOrder, batch_size: int, accum: int, rank: int, world: int):
        self.dataset, self.collator, self.order = dataset, collator, order
        self.batch_size, self.accum, self.rank, self.world = batch_size, accum, rank, world
        self.global_batch = batch_size * accum * world

    def indices(self, i: int) -> list[int]:
        step, micro = divmod(i, self.accum)
        start = step * self.global_batch + (micro * self.world + self.rank) * self.batch_size
        return self.order.indices(start, self.batch_size)

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.collator([self.dataset[j] for j in self.indices(i)])


def dataset_fingerprint(dataset) -> str:
    """sha256 over every example's image file name, caption and label (a resume refuses changed data)."""
    h = hashlib.sha256()
    for ex in dataset.examples:
        h.update(json.dumps([os.path.basename(ex.image_path), ex.caption, ex.label]).encode())
    return h.hexdigest()


def load_dataset(config: Any, split: str | None, file: str | None, max_samples: int | None):
    """The `VSRDataset` of a jsonl ``file`` or of ``config.hub_dataset``'s ``split``, cut to ``max_samples``."""
    from theworld.data import load_vsr_hub, load_vsr_jsonl

    if file is not None:
        ds = load_vsr_jsonl(file, image_dir=config.image_dir)
    else:
        ds = load_vsr_hub(config.hub_dataset, split=split, image_dir=config.image_dir)
    if max_samples is not None:
        ds.examples = ds.examples[:max_samples]
    return ds


__all__ = ["DataOrder", "StepBatches", "dataset_fingerprint", "load_dataset"]
