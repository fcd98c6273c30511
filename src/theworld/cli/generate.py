"""``theworld generate``: answer a prompt about an image with a TheWorld checkpoint (local folder or hub repo).

Example::

    theworld generate --model ./checkpoints/run1 --image photo.jpg --prompt "Is the cup left of the plate?"

The prompt is wrapped in the checkpoint's chat template (one user turn holding the image and the text, then the model
turn), decoded greedily, and only the newly generated text is printed.

The image file is checked before the model loads: its size is read from the header and an image over
``--max-image-pixels`` (a decompression bomb, or a photo that needs downscaling) is refused before any pixel is
decoded. Without ``--trust-remote-code`` nothing from the checkpoint folder is executed.
"""

from __future__ import annotations

import argparse
import os
import warnings
from typing import Any

from . import echo, error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from theworld.processing_theworld import DEFAULT_MAX_IMAGE_PIXELS

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
        "--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"largest accepted image, width x height (default {DEFAULT_MAX_IMAGE_PIXELS:,})",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load through transformers' Auto classes with trust_remote_code=True (runs the checkpoint's code)",
    )


def resolve_device(name: str | None):
    """``torch.device`` of ``--device`` (default: cuda when available); `ValueError` for an unknown or absent one."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r} is not a torch device ({err}); use e.g. cpu, cuda or cuda:1.") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name!r}: no such CUDA device here ({torch.cuda.device_count()} available); use cpu.")
    return device


def open_image(path: str, max_pixels: int | None):
    """The RGB image in ``path``, its size checked against ``max_pixels`` before any pixel is decoded.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: not an image PIL can read, too small, over ``max_pixels`` (or PIL's own bomb limit), or damaged.
    """
    from PIL import Image, UnidentifiedImageError

    from theworld.processing_theworld import image_to_rgb

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path!r} does not exist (or is not a file).")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            opened = Image.open(path)  # reads the header only
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ValueError(
                f"{path} is too large to decode safely: {err} Downscale the image (the limit here is "
                f"{max_pixels:,} px; --max-image-pixels sets it)."
            ) from None
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot read {path!r} as an image ({err}); pass a PNG, JPEG or other image file.") from None
    with opened:
        return image_to_rgb(opened, max_pixels)  # size check first, then decoding (errors become ValueError)


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """Return ``(model, processor)`` for ``args.model``, on ``args.device`` in eval mode."""
    import torch

    device = resolve_device(args.device)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, args.dtype)}
    if args.revision:
        kwargs["revision"] = args.revision
    if args.trust_remote_code:
        from transformers import AutoModel, AutoProcessor

        sub = {"subfolder": args.checkpoint_name} if args.checkpoint_name else {}
        model = AutoModel.from_pretrained(args.model, trust_remote_code=True, **sub, **kwargs)
        processor = getattr(model, "processor", None)
        if processor is None:
            rev = {"revision": args.revision} if args.revision else {}
            processor = AutoProcessor.from_pretrained(args.model, trust_remote_code=True, **sub, **rev)
    else:
        from theworld import TheWorld

        if args.checkpoint_name:
            kwargs["checkpoint_name"] = args.checkpoint_name
        model = TheWorld.from_pretrained(args.model, **kwargs)
        processor = model.processor
    if processor is None:
        raise ValueError(
            f"{args.model} holds no processor files (tokenizer, processor_config.json); save the checkpoint with "
            "TheWorld.save_pretrained so that they are written."
        )
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
    from .inspect import require_checkpoint

    if args.max_new_tokens < 1:
        return error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    if args.max_image_pixels < 1:
        return error(f"--max-image-pixels must be at least 1, got {args.max_image_pixels}.")
    if not args.prompt.strip():
        return error("--prompt is empty; pass the question or instruction.")
    image = None if args.image is None else open_image(args.image, args.max_image_pixels)
    require_checkpoint(args.model, "generate", args.checkpoint_name, args.revision)
    model, processor = load_model(args)
    processor.max_image_pixels = args.max_image_pixels
    echo(generate_answer(model, processor, image, args.prompt, args.max_new_tokens))
    return 0


__all__ = ["add_arguments", "generate_answer", "load_model", "open_image", "resolve_device", "run"]
