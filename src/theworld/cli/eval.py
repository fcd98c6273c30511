"""``theworld eval``: score a TheWorld (or Gemma-only) checkpoint on VSR-style 0/1 statements.

Examples::

    theworld eval --checkpoint runs/tiny/final --data synthetic/test.jsonl --out eval/score
    theworld eval --checkpoint runs/tiny/final --data synthetic/test.jsonl --ablation shuffle --out eval/shuffle
    theworld eval --checkpoint user/theworld-vsr --checkpoint-name checkpoint-500 --hub-dataset cambridgeltl/vsr_random \\
        --split test --image-dir /data/coco

Writes ``predictions.jsonl`` and ``metrics.json`` into ``--out`` (see `theworld.evaluation`).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from . import echo, error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from theworld.evaluation import ABLATIONS, MODES

    parser.add_argument("--checkpoint", required=True, help="TheWorld checkpoint folder or hub repo id")
    parser.add_argument("--checkpoint-name", default=None, help="checkpoint-N subfolder of a hub repo")
    parser.add_argument("--revision", default=None, help="hub revision of the checkpoint")
    parser.add_argument("--data", default=None, help="VSR jsonl file (rows: image, caption, label[, relation])")
    parser.add_argument("--hub-dataset", default=None, help="a `datasets` source instead of --data")
    parser.add_argument("--split", default="test", help="split of --hub-dataset")
    parser.add_argument("--image-dir", default=None, help="folder the image paths are resolved in")
    parser.add_argument("--mode", choices=MODES, default="score")
    parser.add_argument("--ablation", choices=ABLATIONS, default="none")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-samples", type=int, default=None, help="evaluate only the first N examples")
    parser.add_argument("--max-new-tokens", type=int, default=4, help="generation length (generate mode)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle ablation")
    parser.add_argument("--latent-cache", default=None, help="folder of cached world latents (encode each image once)")
    parser.add_argument("--out", default="eval_out", help="folder for predictions.jsonl and metrics.json")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def run(args: argparse.Namespace) -> int:
    import torch

    from theworld import TheWorld
    from theworld.data import load_vsr_hub, load_vsr_jsonl
    from theworld.evaluation import evaluate, format_metrics, write_results

    from .inspect import require_checkpoint

    if (args.data is None) == (args.hub_dataset is None):
        return error("pass exactly one of --data FILE.jsonl and --hub-dataset NAME.")
    for name in ("batch_size", "max_new_tokens", "max_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            return error(f"--{name.replace('_', '-')} must be at least 1, got {value}.")
    if args.data is not None and not os.path.isfile(args.data):
        return error(f"--data {args.data!r} is not a file; pass a VSR jsonl file.")
    if os.path.isfile(args.out):
        return error(f"--out {args.out!r} is a file; pass a folder for predictions.jsonl and metrics.json.")
    require_checkpoint(args.checkpoint, "eval", args.checkpoint_name, args.revision)
    if args.data is not None:
        dataset = load_vsr_jsonl(args.data, image_dir=args.image_dir)
    else:
        dataset = load_vsr_hub(args.hub_dataset, split=args.split, image_dir=args.image_dir)
    if args.max_samples is not None:
        dataset.examples = dataset.examples[: args.max_samples]
    if dataset.num_skipped:
        echo(f"skipped {dataset.num_skipped} rows: {dict((k, v) for k, v in dataset.skipped.items() if v)}")
    if len(dataset) == 0:
        return error(f"{args.data or args.hub_dataset} has no usable examples ({dataset.summary()['skipped']}).")
    if args.ablation == "shuffle" and len(dataset) < 2:
        return error("--ablation shuffle needs at least 2 examples.")
    kw: dict[str, Any] = {}
    if args.revision:
        kw["revision"] = args.revision
    if args.checkpoint_name:
        kw["checkpoint_name"] = args.checkpoint_name
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = TheWorld.from_pretrained(args.checkpoint, **kw).to(device)
    data: Any = dataset
    if args.latent_cache and model.config.enable_world:
        from theworld.latent_cache import CachedLatentDataset, LatentCache

        cache = LatentCache(args.latent_cache, model)
        data = CachedLatentDataset(dataset, cache, cache.prepare(dataset, model.processor))
    result = evaluate(
        model, data, mode=args.mode, ablation=args.ablation, batch_size=args.batch_size, seed=args.seed,
        max_new_tokens=args.max_new_tokens, progress=True,
    )
    result["checkpoint"] = args.checkpoint
    result["data"] = args.data or f"{args.hub_dataset}[{args.split}]"
    result["skipped"] = dataset.skipped
    pred_path, metrics_path = write_results(result, args.out)
    echo(format_metrics(result))
    echo(f"wrote {pred_path} and {metrics_path}")
    return 0


__all__ = ["add_arguments", "run"]
