"""The training loss: summed answer-token cross-entropy over the whole accumulated global batch.

Each micro-batch's summed cross-entropy is divided by the number of supervised tokens in the *whole* global batch
(counted up front and all-reduced) and multiplied by the process count to undo DDP's gradient averaging, so ``k``
micro-batches give the gradient of one ``k``-times batch whatever the padding. Only the logits of supervised positions
are computed (``logits_to_keep`` with a boolean mask).
"""

from __future__ import annotations

import contextlib

import torch


def supervised_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: True at positions whose logits predict a supervised token (``labels[:, t+1] != -100``)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def micro_batch_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``(sum of token cross-entropies, number of supervised tokens)`` of one micro-batch.

    Only the logits at supervised positions are computed: ``logits_to_keep`` is the boolean mask of
    `supervised_mask`, so the model returns ``(K, V)`` logits for the ``K`` supervised tokens.
    """
    labels = batch["labels"]
    keep = supervised_mask(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    targets = labels[:, 1:][keep[:, :-1]]
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    loss_sum = torch.nn.functional.cross_entropy(logits, targets.to(logits.device), reduction="sum")
    return loss_sum, int(targets.numel())


def accumulate_gradients(
    model, micro_batches: list[dict], accelerator, num_tokens_global: int, autocast_dtype: torch.dtype | None = None
) -> float:
    """Backward over one optimizer step's micro-batches; return this process's summed loss.

    Each micro-batch's loss is ``loss_sum * num_processes / num_tokens_global``, so that after DDP averages the
    gradients across processes they are the gradient of (summed loss / supervised tokens) over the whole global batch.
    """
    total = 0.0
    scale = accelerator.num_processes / max(num_tokens_global, 1)
    for j, batch in enumerate(micro_batches):
        sync = j == len(micro_batches) - 1
        ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
        with ctx:
            with torch.autocast(accelerator.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss_sum, _ = micro_batch_loss_sum(model, batch)
            accelerator.backward(loss_sum * scale)
        total += float(loss_sum.detach())
    return total


__all__ = ["accumulate_gradients", "micro_batch_loss_sum", "supervised_mask"]
