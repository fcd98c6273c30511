"""Processor of TheWorld: Gemma 3's processor plus world-token expansion and the Cosmos image path.

This file is shipped next to every checkpoint as remote code. It is flat and self-contained: it imports only
``torch``, ``numpy`` (a dependency of transformers) and ``transformers``.

Aspect policy of the world image: the largest centred square is cropped out of the image and resized (bicubic) to
``world_image_size`` x ``world_image_size``; pixels are then mapped from [0, 255] to [-1, 1]. Nothing is squashed.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import BatchFeature, Gemma3Processor
from transformers.image_utils import make_nested_list_of_images

logger = logging.getLogger(__name__)

MIN_IMAGE_SIZE = 16
# Modes that convert to RGB without losing meaning. Others are refused with a clear message.
_CONVERTIBLE_MODES = {
    "RGB", "RGBX", "L", "LA", "RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "I", "F",
    "I;16", "I;16B", "I;16L", "I;16N",
}  # fmt: skip


def image_to_rgb(image: Any) -> Image.Image:
    """Return ``image`` as an RGB ``PIL.Image``.

    Accepts a PIL image of a common mode (alpha is composited on white; 16-bit and float greyscale are rescaled to
    8 bits), an ``(H, W, 3)`` / ``(H, W)`` uint8 numpy array, or a ``(3, H, W)`` torch tensor (uint8, or float in
    [0, 1]). Raises `TypeError` for other types and `ValueError` for unsupported modes, NaNs or images smaller than
    16 px on either side.
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"Image tensors must have shape (3, H, W) or (1, H, W), got {tuple(image.shape)}.")
        if image.is_floating_point():
            if torch.isnan(image).any():
                raise ValueError("Image tensor contains NaN values; clean the input before calling the processor.")
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        array = image.permute(1, 2, 0).cpu().numpy()
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    elif isinstance(image, np.ndarray):
        if image.dtype.kind == "f":
            if np.isnan(image).any():
                raise ValueError("Image array contains NaN values; clean the input before calling the processor.")
            image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"Image arrays must be (H, W) or (H, W, 3) uint8, got {image.shape} {image.dtype}.")
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(
            f"Unsupported image type {type(image).__name__}; pass a PIL.Image, a numpy array or a torch tensor."
        )

    width, height = image.size
    if width < MIN_IMAGE_SIZE or height < MIN_IMAGE_SIZE:
        raise ValueError(
            f"Image of {width}x{height} px is too small: both sides must be at least {MIN_IMAGE_SIZE} px. "
            "Upscale it or drop it from the batch."
        )
    mode = image.mode
    if mode == "RGB":
        return image
    if mode not in _CONVERTIBLE_MODES:
        raise ValueError(f"Unsupported image mode {mode!r}; convert the image to RGB first (image.convert('RGB')).")
    if mode in ("I", "F") or mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64)
        if np.isnan(array).any():
            raise ValueError("Image contains NaN values; clean the input before calling the processor.")
        peak = float(array.max()) if array.size else 0.0
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":  # 32-bit ints: 8-bit or 16-bit data (e.g. 16-bit PNGs) keep their scale
            top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
        else:
            top = max(peak, 1.0)
        array = np.clip(array / top * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _first_unsupported_image(images: Any) -> Any:
    """The first leaf of a (nested) list of images that is not a PIL image, array or tensor; ``None`` if all are."""
    stack = [images]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
        elif not isinstance(item, (Image.Image, np.ndarray, torch.Tensor)):
            return item
    return None


def world_pixels_from_image(image: Image.Image, size: int) -> torch.Tensor:
    """Centre-crop an RGB image to a square, resize it to ``size`` and map it to [-1, 1].

    Returns a float32 tensor of shape ``(3, size, size)``.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    array = np.asarray(square, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def world_block(start: str, token: str, end: str, num_tokens: int) -> str:
    """The expanded world block: ``start + token * num_tokens + end``."""
    return start + token * num_tokens + end


class TheWorldProcessor(Gemma3Processor):
    r"""Gemma 3's processor plus TheWorld's world tokens.

    For every sample that has an image it writes ``<start_of_world>`` + N x ``<world_soft_token>`` +
    ``<end_of_world>`` into the text (right after ``<bos>`` unless the text already holds a ``<start_of_world>``
    marker, which is then expanded in place) and returns ``world_pixel_values`` of shape ``(B_world, 3, S, S)`` in
    [-1, 1] made from each sample's first image, where ``S = world_image_size`` and ``B_world`` is the number of
    samples with an image. With ``num_world_tokens=0`` it behaves exactly like ``Gemma3Processor``.

    Args:
        image_processor: Gemma 3's SigLIP image processor.
        tokenizer: Gemma 3's tokenizer; the world tokens are added to it when missing.
        chat_template: the Gemma 3 chat template.
        image_seq_length: SigLIP tokens per image (``mm_tokens_per_image``).
        num_world_tokens: N, ``config.num_world_tokens``.
        world_image_size: S, ``config.world_image_size``.
        start_of_world_token / end_of_world_token / world_token: marker and placeholder strings.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_seq_length: int = 256,
        num_world_tokens: int = 0,
        world_image_size: int = 512,
        start_of_world_token: str = "<start_of_world>",
        end_of_world_token: str = "<end_of_world>",
        world_token: str = "<world_soft_token>",
        **kwargs,
    ):
        self.num_world_tokens = num_world_tokens
        self.world_image_size = world_image_size
        self.start_of_world_token = start_of_world_token
        self.end_of_world_token = end_of_world_token
        self.world_token = world_token
        missing = [t for t in (start_of_world_token, end_of_world_token, world_token) if t not in tokenizer.get_vocab()]
        if missing:
            tokenizer.add_tokens(missing, special_tokens=True)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, image_seq_length=image_seq_length)
        self.start_of_world_token_id = tokenizer.convert_tokens_to_ids(start_of_world_token)
        self.end_of_world_token_id = tokenizer.convert_tokens_to_ids(end_of_world_token)
        self.world_token_id = tokenizer.convert_tokens_to_ids(world_token)

    # ------------------------------------------------------------------ text
    def expand_world_placeholders(self, text: str) -> str:
        """Insert or expand the world block of one prompt (see the class docstring)."""
        block = world_block(self.start_of_world_token, self.world_token, self.end_of_world_token, self.num_world_tokens)
        if self.world_token in text:
            return text  # already expanded by the caller
        markers = text.count(self.start_of_world_token)
        if markers > 1:
            raise ValueError(
                f"A prompt holds {markers} {self.start_of_world_token} markers; TheWorld takes one world block per "
                "sample."
            )
        if markers == 1:
            return text.replace(self.start_of_world_token, block)
        bos = self.tokenizer.bos_token or ""
        if bos and text.startswith(bos):
            return bos + block + text[len(bos) :]
        return block + text

    # ------------------------------------------------------------------ call
    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        """Tokenise ``text`` and preprocess ``images`` for TheWorld.

        Returns Gemma 3's ``input_ids``, ``attention_mask``, ``token_type_ids`` and ``pixel_values`` plus
        ``world_pixel_values`` ``(B_world, 3, S, S)`` when the world is enabled.
        """
        nested = None
        if images is not None:
            bad = _first_unsupported_image(images)
            if bad is not None:
                raise TypeError(
                    f"Unsupported image type {type(bad).__name__}; pass a PIL.Image, a numpy array or a torch tensor "
                    "per image (a list of images per prompt). Paths and URLs are not opened: use PIL.Image.open."
                )
            nested = [[image_to_rgb(im) for im in sample] for sample in make_nested_list_of_images(images)]
        if text is None or self.num_world_tokens == 0 or nested is None:
            return super().__call__(images=nested, text=text, **kwargs)

        texts = [text] if isinstance(text, str) else list(text)
        if len(nested) != len(texts):
            raise ValueError(
                f"Got {len(nested)} image lists for {len(texts)} prompts; pass exactly one list of images per prompt."
            )
        texts = [self.expand_world_placeholders(t) if imgs else t for t, imgs in zip(texts, nested)]
        return_tensors = kwargs.get("return_tensors")
        out = super().__call__(images=nested, text=texts, **kwargs)

        ids = out["input_ids"]
        if isinstance(ids, torch.Tensor):
            counts = ids.eq(self.world_token_id).sum(-1).tolist()
        else:  # lists (possibly ragged, without padding) or numpy rows
            counts = [list(row).count(self.world_token_id) for row in ids]
        expected = [self.num_world_tokens if imgs else 0 for imgs in nested]
        if counts != expected:
            raise ValueError(
                f"World placeholder count per sample {counts} differs from the expected {expected}; the prompt was "
                "probably truncated. Disable truncation or raise max_length."
            )
        world = [world_pixels_from_image(imgs[0], self.world_image_size) for imgs in nested if imgs]
        if world:
            world_pixel_values = torch.stack(world)
            if return_tensors == "np":
                world_pixel_values = world_pixel_values.numpy()
            elif return_tensors != "pt":
                world_pixel_values = world_pixel_values.tolist()
            out["world_pixel_values"] = world_pixel_values
        return out

    def preprocess_world_images(self, images) -> torch.Tensor:
        """``(B, 3, S, S)`` world pixels in [-1, 1] from a list of images (one per sample)."""
        return torch.stack([world_pixels_from_image(image_to_rgb(im), self.world_image_size) for im in images])

    @property
    def model_input_names(self) -> list[str]:
        names = super().model_input_names
        return names + (["world_pixel_values"] if self.num_world_tokens else [])


__all__ = ["TheWorldProcessor"]
