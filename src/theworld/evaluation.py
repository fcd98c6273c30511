"""Evaluate TheWorld (or a Gemma-only checkpoint) on VSR-style 0/1 statements: `evaluate` (``theworld eval``).

Two modes:

* ``score``: one forward pass over the generation prompt; the prediction is whichever of the answer tokens ``"0"`` /
  ``"1"`` has the larger logit at the answer position (``p1`` = their two-way softmax). Every example gets a
  prediction.
* ``generate``: greedy generation (world tokens in the prompt, as in training) of ``max_new_tokens`` tokens; the
  answer is parsed from the decoded text: after leading whitespace it must start with ``0`` or ``1`` not followed by
  another digit. Anything else is **unparseable**: counted in ``unparseable``, never scored as correct (it counts as
  a wrong answer in ``accuracy`` and as a miss of the true class in ``macro_f1``; ``accuracy_parsed`` leaves them
  out).

Ablations replace the world features to measure how much the model relies on them:

* ``zero``: world features (projector outputs, ``(B, N, d)``) set to zero;
* ``shuffle``: each example gets the world latents of another example, by a seeded derangement (no example keeps its
  own).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger(__name__)

MODES = ("score", "generate")
ABLATIONS = ("none", "zero", "shuffle")
_ANSWER_RE = re.compile(r"^\s*([01])(?![0-9])")


def parse_answer(text: str) -> int | None:
    """``0``/``1`` from generated text (see the module docs), or ``None`` when unparseable."""
    m = _ANSWER_RE.match(text or "")
    return int(m.group(1)) if m else None


def derangement(n: int, seed: int = 0) -> list[int]:
    """A seeded random permutation of ``range(n)`` with no fixed point (Sattolo's algorithm; ``n >= 2``)."""
    if n < 2:
        raise ValueError(f"A shuffle ablation needs at least 2 examples, got {n}.")
    g = torch.Generator().manual_seed(seed)
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(torch.randint(0, i, (1,), generator=g))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def compute_metrics(labels: Sequence[int], predictions: Sequence[int | None], relations: Sequence[str | None]) -> dict:
    """Accuracy, macro-F1, confusion matrix and per-relation accuracy; ``None`` predictions are unparseable."""
    n = len(labels)
    correct = [p is not None and p == y for y, p in zip(labels, predictions)]
    parsed = [p is not None for p in predictions]
    f1s = []
    for c in (0, 1):
        tp = sum(1 for y, p in zip(labels, predictions) if y == c and p == c)
        fp = sum(1 for y, p in zip(labels, predictions) if y != c and p == c)
        fn = sum(1 for y, p in zip(labels, predictions) if y == c and p != c)
        f1s.append(2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0)
    matrix = [[0, 0, 0], [0, 0, 0]]
    for y, p in zip(labels, predictions):
        matrix[int(y)][2 if p is None else int(p)] += 1
    per_relation: dict[str, dict[str, Any]] = {}
    for p, rel, ok in zip(predictions, relations, correct):
        r = per_relation.setdefault(str(rel), {"n": 0, "correct": 0, "unparseable": 0})
        r["n"] += 1
        r["correct"] += int(ok)
        r["unparseable"] += int(p is None)
    for r in per_relation.values():
        r["accuracy"] = r["correct"] / r["n"]
    counts = {0: sum(1 for y in labels if y == 0), 1: sum(1 for y in labels if y == 1)}
    n_parsed = sum(parsed)
    return {
        "n": n,
        "accuracy": sum(correct) / n if n else 0.0,
        "accuracy_parsed": (sum(correct) / n_parsed) if n_parsed else 0.0,
        "macro_f1": sum(f1s) / 2,
        "f1_per_class": {"0": f1s[0], "1": f1s[1]},
        "confusion_matrix": {
            "rows": "true label 0, 1",
            "columns": ["predicted 0", "predicted 1", "unparseable"],
            "matrix": matrix,
        },
        "per_relation": dict(sorted(per_relation.items())),
        "unparseable": n - n_parsed,
        "majority_rate": max(counts.values()) / n if n else 0.0,
    }


def _latents_of(dataset: Any, index: int) -> torch.Tensor | None:
    latents = getattr(dataset, "latents", None)
    if callable(latents):
        return latents(index)
    return None


def _image_path(item: dict) -> str | None:
    return item.get("image_path")


@torch.no_grad()
def evaluate(
    model: Any,
    dataset: Sequence,
    *,
    mode: str = "score",
    ablation: str = "none",
    batch_size: int = 16,
    seed: int = 0,
    max_new_tokens: int = 4,
    processor: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Evaluate ``model`` on ``dataset`` and return metrics plus per-example ``predictions``.

    Args:
        model: a `TheWorld` (``enable_world`` True or False).
        dataset: items with ``image``, ``caption``, ``label`` (0/1), optional ``relation`` / ``image_path``; a
            `CachedLatentDataset` supplies cached ``world_latents`` (then the VAE is not run).
        mode: ``"score"`` or ``"generate"`` (see the module docs).
        ablation: ``"none"``, ``"zero"`` or ``"shuffle"``.
        batch_size: prompts per forward / generate call (left padded).
        seed: seed of the shuffle derangement.
        max_new_tokens: generation length in ``generate`` mode.
        processor: defaults to ``model.processor``.

    Returns:
        :func:`compute_metrics` output plus ``mode``, ``ablation`` and ``predictions`` (one dict per example).
    """
    from tqdm.auto import tqdm

    from theworld.data.collator import VSRCollator

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cfg = model.config
    if ablation != "none" and not cfg.enable_world:
        raise ValueError(f"ablation={ablation!r} needs a model with world features; this one has enable_world=False.")
    processor = processor or model.processor
    if processor is None:
        raise ValueError("The model has no processor; pass processor=.")
    n = len(dataset)
    if n == 0:
        raise ValueError("The evaluation set is empty.")
    collator = VSRCollator(processor, train=False)
    answer_ids = collator.answer_token_ids()
    if mode == "score" and any(len(v) != 1 for v in answer_ids.values()):
        raise ValueError(f"Score mode needs single-token answers, got {answer_ids}; use mode='generate'.")
    tok = processor.tokenizer
    donors = derangement(n, seed) if ablation == "shuffle" else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    labels: list[int] = []
    preds: list[int | None] = []
    relations: list[str | None] = []
    records: list[dict[str, Any]] = []
    bar = tqdm(total=n, desc=f"eval {mode}/{ablation}", disable=not progress, leave=False)
    try:
        for start in range(0, n, batch_size):
            idx = list(range(start, min(start + batch_size, n)))
            items = [dataset[i] for i in idx]
            batch = collator(items)
            if ablation == "shuffle":
                donor_idx = [donors[i] for i in idx]
                cached = [_latents_of(dataset, j) for j in donor_idx]
                batch.pop("world_latents", None)
                batch.pop("world_pixel_values", None)
                if all(c is not None for c in cached):
                    batch["world_latents"] = torch.stack(cached)
                else:
                    batch["world_pixel_values"] = processor.world_pixel_values([dataset[j]["image"] for j in donor_idx])
            elif ablation == "zero":
                batch.pop("world_latents", None)
                batch.pop("world_pixel_values", None)
                d = cfg.text_config.hidden_size
                batch["world_embeds_override"] = torch.zeros(len(idx), cfg.num_world_tokens, d)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            if mode == "score":
                out = model(**batch, logits_to_keep=1, use_cache=False)
                logits = out.logits[:, -1, :].float()
                pair = torch.stack([logits[:, answer_ids[0][0]], logits[:, answer_ids[1][0]]], dim=-1)
                p1 = torch.softmax(pair, dim=-1)[:, 1].tolist()
                batch_preds: list[int | None] = [int(pair[b, 1] > pair[b, 0]) for b in range(len(idx))]
                extra = [{"p1": p} for p in p1]
            else:
                gen = model.generate(
                    **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
                )
                texts = tok.batch_decode(gen[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
                batch_preds = [parse_answer(t) for t in texts]
                extra = [{"generated": t} for t in texts]
            for k, i in enumerate(idx):
                item = items[k]
                y = int(item["label"])
                p = batch_preds[k]
                labels.append(y)
                preds.append(p)
                relations.append(item.get("relation"))
                rec = {
                    "index": i,
                    "image": _image_path(item),
                    "caption": item["caption"],
                    "relation": item.get("relation"),
                    "label": y,
                    "prediction": p,
                    "correct": p is not None and p == y,
                    **extra[k],
                }
                if donors is not None:
                    rec["world_from"] = donors[i]
                records.append(rec)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    metrics = compute_metrics(labels, preds, relations)
    return {"mode": mode, "ablation": ablation, **metrics, "predictions": records}


def write_results(result: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """Write ``predictions.jsonl`` and ``metrics.json`` (everything but the predictions) into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    pred_path = os.path.join(out_dir, "predictions.jsonl")
    with open(pred_path, "w", encoding="utf-8") as f:
        for rec in result["predictions"]:
            f.write(json.dumps(rec) + "\n")
    metrics_path = os.path.join(out_dir, "metrics.json")
    with open(metrics_path, "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in result.items() if k != "predictions"}, f, indent=2)
    return pred_path, metrics_path


def format_metrics(result: dict[str, Any]) -> str:
    """A few lines of text summarising `evaluate`'s result (what ``theworld eval`` prints)."""
    cm = result["confusion_matrix"]["matrix"]
    lines = [
        f"mode={result['mode']} ablation={result['ablation']} n={result['n']}",
        f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  unparseable {result['unparseable']}  "
        f"(majority rate {result['majority_rate']:.4f})",
        "confusion (rows: true 0/1; columns: predicted 0 / 1 / unparseable): "
        f"{cm[0]} {cm[1]}",
    ]
    for rel, r in result["per_relation"].items():
        lines.append(f"  {rel}: {r['accuracy']:.4f} ({r['correct']}/{r['n']})")
    return "\n".join(lines)


__all__ = ["ABLATIONS", "MODES", "compute_metrics", "derangement", "evaluate", "format_metrics", "parse_answer", "write_results"]
