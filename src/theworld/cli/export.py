"""``theworld export``: re-save a TheWorld checkpoint, partial or full.

Examples::

    theworld export ./checkpoints/run1 ./run1-full --full            # self-contained: loads without the base models
    theworld export ./run1-full ./run1-partial                       # back to the trained tensors only
    theworld export ./old-research-ckpt ./converted                  # earlier format -> current format
    theworld export user/theworld-vsr ./local --checkpoint-name checkpoint-2 --revision main
    theworld export ./runs/vsr_lora/final ./vsr-lora-merged --merge-lora   # LoRA folded into Gemma: full, no peft

The source is loaded exactly as ``TheWorld.from_pretrained`` loads it (strict, fingerprints checked), then written
with ``save_pretrained`` (atomic). ``--dtype`` casts the base weights (the world projector stays float32).
``--merge-lora`` folds the checkpoint's PEFT adapter into the weights it adapts and writes a full checkpoint (the merged
language-model weights differ from the Gemma base), which loads and predicts the same without peft.
"""

from __future__ import annotations

import argparse
import os

from . import echo, error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="TheWorld checkpoint: local folder or hub repo id")
    parser.add_argument("destination", help="folder to write the checkpoint to (created; replaced atomically)")
    parser.add_argument("--full", action="store_true", help="write every parameter (loads without the bases)")
    parser.add_argument(
        "--merge-lora",
        action="store_true",
        help="merge the checkpoint's LoRA (PEFT) adapter into the weights; writes a full checkpoint (implies --full)",
    )
    parser.add_argument("--max-shard-size", default="5GB", help="shard size of a --full export (default 5GB)")
    parser.add_argument("--checkpoint-name", default=None, help="a checkpoint-N/ subfolder of the source")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of the source")
    parser.add_argument(
        "--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="cast the base weights on load"
    )
    parser.add_argument(
        "--ignore-fingerprint-mismatch",
        action="store_true",
        help="load even if the base weights differ from those the checkpoint was trained on (a warning)",
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers.utils.hub import convert_file_size_to_int

    from theworld import TheWorld

    from .inspect import require_checkpoint

    require_checkpoint(args.source, "export", args.checkpoint_name, args.revision)
    if os.path.isfile(args.destination):
        return error(f"destination {args.destination!r} is a file; pass a folder to write the checkpoint to.")
    try:
        convert_file_size_to_int(args.max_shard_size)
    except ValueError:
        return error(f"--max-shard-size {args.max_shard_size!r} is not a size; use e.g. 5GB, 500MB or 200KB.")
    kwargs = {"revision": args.revision} if args.revision else {}
    if args.checkpoint_name:
        kwargs["checkpoint_name"] = args.checkpoint_name
    if args.dtype:
        kwargs["dtype"] = getattr(torch, args.dtype)
    if args.ignore_fingerprint_mismatch:
        kwargs["ignore_fingerprint_mismatch"] = True
    model = TheWorld.from_pretrained(args.source, **kwargs)
    full = args.full or args.merge_lora
    merged = ""
    if args.merge_lora:
        from theworld.checkpoint_theworld import has_adapter, merge_adapters

        if not has_adapter(model):
            return error(
                f"{args.source} holds no LoRA (PEFT) adapter to merge; drop --merge-lora (use --full for a full "
                "checkpoint)."
            )
        merged = f", LoRA merged into {len(merge_adapters(model))} modules"
    model.save_pretrained(args.destination, save_full_model=full, max_shard_size=args.max_shard_size)
    names = sorted(
        n for n in os.listdir(args.destination) if n.startswith("model") and n.endswith((".safetensors", ".index.json"))
    )
    size = sum(os.path.getsize(os.path.join(args.destination, n)) for n in names)
    kind = "full" if full else "partial"
    echo(f"Wrote a {kind} TheWorld checkpoint to {args.destination}{merged}: {', '.join(names)} ({size:,} bytes)")
    return 0
