"""``theworld generate``: answer a prompt about an image with a TheWorld checkpoint (local folder or hub repo).

Example::

    theworld generate --model ./checkpoints/run1 --image photo.jpg --prompt "Is the cup left of the plate?"

The prompt is wrapped in the checkpoint's chat template (one user turn holding the image and the text, then the model
turn), decoded greedily, and only the newly generated text is printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from . import echo as _echo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="TheWorld checkpoint: local folder or hub repo id")
    parser.add_argument("--image", default=None, help="path of the image (omit for a text-only prompt)")
    parser.add_argument("--prompt", required=True, help="the question or instruction")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="maximum number of generated tokens")
    parser.add_argument("--checkpoint-name", default=None, help="a checkpoint-N/ subfolder of a hub repo")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of --model")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0 (default: cuda if available)")
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "bfloat16", "float16"), help="dtype of the base models"
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load through transformers' Auto classes with trust_remote_code=True (runs the checkpoint's code)",
    )


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """Return ``(model, processor)`` for ``args.model``."""
    import torch

    dtype = getattr(torch, args.dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs: dict[str, Any] = {"dtype": dtype}
    if args.revision:
        kwargs["revision"] = args.revision
    if args.checkpoint_name:
        kwargs["checkpoint_name"] = args.checkpoint_name
    if args.trust_remote_code:
        from transformers import AutoModel, AutoProcessor

        model = AutoModel.from_pretrained(args.model, trust_remote_code=True, **kwargs)
        processor = getattr(model, "processor", None)
        if processor is None:
            sub = {"subfolder": args.checkpoint_name} if args.checkpoint_name else {}
            rev = {"revision": args.revision} if args.revision else {}
            processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True, **sub, **rev)
    else:
        from .modeling_theworld import TheWorld

        model = TheWorld.from_pretrained(args.model, **kwargs)
        processor = model.processor
    model.to(device)
    model.eval()
    return model, processor


def generate_answer(model: Any, processor: Any, image: Any, prompt: str, max_new_tokens: int) -> str:
    """Greedy answer to ``prompt`` about ``image`` (a PIL image or ``None``), without the prompt."""
    import torch

    content: list[dict[str, Any]] = []
    if image is not None:
        content.append({"type": "image", "image": image})
    content.append({"type": "text", "text": prompt})
    inputs = processor.apply_chat_template(
        [[{"role": "user", "content": content}]],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        _echo(f"error: --max-new-tokens must be at least 1, got {args.max_new_tokens}.", sys.stderr)
        return 2
    image = None
    if args.image is not None:
        if not os.path.isfile(args.image):
            _echo(f"error: image file {args.image!r} does not exist.", sys.stderr)
            return 2
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(args.image) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as err:
            _echo(f"error: cannot read {args.image!r} as an image ({err}).", sys.stderr)
            return 2
    model, processor = load_model(args)
    try:
        answer = generate_answer(model, processor, image, args.prompt, args.max_new_tokens)
    except ValueError as err:
        _echo(f"error: {err}", sys.stderr)
        return 2
    _echo(answer)
    return 0


__all__ = ["add_arguments", "generate_answer", "load_model", "run"]
