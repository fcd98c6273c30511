"""The optimizer (AdamW over the trainable parameters) and its learning-rate schedule (warmup, then decay)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch


def lr_factor(step: int, *, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warmup, then cosine/linear/constant decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if kind == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer: torch.optim.Optimizer, config: Any, total_steps: int):
    """A ``LambdaLR`` following `lr_factor` for ``config`` (a `TrainConfig`) over ``total_steps``."""
    warmup = config.warmup_steps or int(round(config.warmup_ratio * total_steps))
    fn = functools.partial(
        lr_factor, warmup=warmup, total=total_steps, kind=config.lr_scheduler, min_ratio=config.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def param_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices only (biases, norms and embeddings get none)."""
    decay, no_decay = [], []
    for name, p in named:
        if weight_decay > 0 and p.ndim >= 2 and "embed" not in name and "embedding" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}]
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups


def build_optimizer(named: list[tuple[str, torch.nn.Parameter]], config: Any) -> torch.optim.AdamW:
    """AdamW over ``named`` trainable parameters with ``config``'s (a `TrainConfig`) hyper-parameters."""
    return torch.optim.AdamW(
        param_groups(named, config.weight_decay),
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )


__all__ = ["build_optimizer", "build_scheduler", "lr_factor", "param_groups"]
