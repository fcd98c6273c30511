# Copyright 2026 The TheWorld Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Processor of TheWorld: Gemma 3's text and SigLIP inputs plus one block of world tokens per image.

Shipped next to every checkpoint as remote code: flat, importing only ``torch``, ``numpy``, ``PIL``, ``transformers``
and the standard library.

Text layout (N = ``num_world_tokens``):

* every ``<start_of_image>`` in a prompt becomes ``"\\n\\n" + <start_of_image> + <image_soft_token> * image_seq_length
  + <end_of_image> + "\\n\\n"``, exactly as Gemma 3 writes it;
* every image also gets a world block ``<start_of_world> + <world_soft_token> * N + <end_of_world>``:
  ``world_placement="after_image"`` puts it right after that image's ``<end_of_image>`` (before the trailing
  ``"\\n\\n"``); ``"after_bos"`` (theworld 0.1.0) puts all of a prompt's blocks, in image order, right after a leading
  ``<bos>`` (at the very start when the text has none). A ``<start_of_world>`` marker written into a prompt is
  expanded in place instead (one marker per image of that prompt, or none);
* ``token_type_ids``: 0 text (markers included), 1 ``<image_soft_token>``, 2 ``<world_soft_token>``.

Accepted images (`image_to_rgb`, used for both the SigLIP and the world path, so every image is converted once):

* ``PIL.Image.Image`` of any mode: alpha (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa``/``La``, a ``transparency``
  key) is composited on white; ``I;16*`` is scaled from [0, 65535]; ``I`` (32-bit) keeps [0, 255] data, scales
  [0, 65535] data as 16-bit and larger values from [0, 2**31 - 1] (negative values are refused); ``F`` follows the
  float rule below; ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX`` convert with PIL.
* ``numpy.ndarray`` and ``torch.Tensor`` of shape ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in {1, 3, 4}
  (4 = RGBA). When both ends of a 3-d shape could be the channel axis, numpy arrays are read channel-last and
  tensors channel-first (the conventions of PIL/numpy and of torchvision). dtypes: ``uint8``; other integer dtypes
  with every value in [0, 255]; floating dtypes (incl. ``float16``/``bfloat16``) finite and in [0, 1] (scaled by 255
  and rounded). ``bool``, complex and other layouts (e.g. ``(H, W, 2)``, 4-d batches) are refused.
* Anything else (paths, URLs, bytes...) raises `TypeError`: files are not opened here, use ``PIL.Image.open``.

Errors are `ValueError` with one of these message prefixes: ``"Unsupported image layout"``, ``"Unsupported image
dtype"``, ``"Unsupported image mode"``, ``"Integer image values"``, ``"Float image values"``, ``"Image of ... is too
small"``, ``"Image of ... exceeds max_image_pixels"``, ``"Could not decode image"``; `TypeError` starts with
``"Unsupported image type"``.

Pixel cap: ``max_image_pixels`` (default `DEFAULT_MAX_IMAGE_PIXELS` = 64,000,000, i.e. 64 MP) is checked from
``image.size`` before any pixel is decoded (``PIL.Image.open`` is lazy), so an oversized file costs no memory. 64 MP
admits 50 MP camera photos and 8K frames (33 MP) while bounding one decoded RGB image to 192 MB (about 0.8 GB once
a float copy exists); it also stays below PIL's own ``Image.MAX_IMAGE_PIXELS`` (89.5 MP), so with the default PIL's
``DecompressionBombWarning``/``Error`` is never reached here (if they are, they become the same `ValueError`). Raise
it with ``processor.max_image_pixels = ...`` or ``TheWorldProcessor(..., max_image_pixels=...)``; ``None`` disables it.

World image (`world_pixels_from_image`), side S = ``world_image_size``, bicubic resampling:

* ``"squash"`` (default): the whole picture resized to S x S, like Gemma's own SigLIP resize (aspect not kept,
  nothing cut off);
* ``"letterbox"``: the long side resized to S keeping the aspect ratio (short side rounded to the nearest pixel),
  centred on an S x S canvas padded with black (0, 0, 0) -- the bars of letterboxed video, the material Cosmos was
  trained on -- so padding reads -1 (0 with ``legacy_preprocessing``);
* ``"center_crop"`` (theworld 0.1.0): the largest centred square (offsets floor((W - side) / 2), floor((H - side) /
  2)), resized to S.

Pixels are then ``x / 127.5 - 1`` in [-1, 1], float32, or with ``legacy_preprocessing=True`` left as float32 in
[0, 255] (the earlier research code's input).
"""

import logging
import numbers
import re
import warnings

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_base import ImageProcessingMixin
from transformers.image_utils import ImageInput
from transformers.models.auto.image_processing_auto import (
    IMAGE_PROCESSOR_MAPPING_NAMES,
    get_image_processor_class_from_name,
)
from transformers.models.auto.tokenization_auto import get_tokenizer_config, tokenizer_class_from_name
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack
from transformers.tokenization_utils_base import TextInput
from transformers.utils import auto_docstring, is_torchvision_available

try:  # the marker `apply_chat_template(..., sanitize_control_tokens=True)` puts before user-written control tokens
    from transformers.utils.chat_template_utils import _CONTROL_TOKEN_START
except ImportError:  # transformers without control-token marking
    _CONTROL_TOKEN_START = None

logger = logging.getLogger(__name__)

#: Default pixel cap (width x height) of one input image; see the module docstring.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
#: Smallest accepted side of an input image, in pixels.
MIN_IMAGE_SIDE = 16
WORLD_PLACEMENTS = ("after_image", "after_bos")
WORLD_RESIZE_MODES = ("squash", "letterbox", "center_crop")
#: Colour of the letterbox padding (8-bit RGB).
LETTERBOX_FILL = (0, 0, 0)
#: ``token_type_ids`` values.
TOKEN_TYPE_TEXT, TOKEN_TYPE_IMAGE, TOKEN_TYPE_WORLD = 0, 1, 2

_ACCEPTED = (
    "Accepted: a PIL.Image.Image of any mode, or a numpy array / torch tensor of shape (H, W), (H, W, C) or "
    "(C, H, W) with C in {1, 3, 4}, dtype uint8, another integer dtype with values in [0, 255], or a float dtype "
    "with values in [0, 1]. A batch is a list of images (or one list of images per prompt), not a 4-d array."
)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA")
_PREMULTIPLIED_MODES = ("RGBa", "La")
_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------------------------------------------------------------
# Image validation and conversion
# ----------------------------------------------------------------------------------------------------------------------


def _check_image_size(width: int, height: int, max_pixels: int | None) -> None:
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise ValueError(
            f"Image of {width}x{height} px is too small: both sides must be at least {MIN_IMAGE_SIDE} px. Upscale it "
            "or drop it from the batch."
        )
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(_too_many_pixels_message(width, height, max_pixels))


def _too_many_pixels_message(width: int, height: int, max_pixels: int | None) -> str:
    limit = "None" if max_pixels is None else f"{max_pixels:,} px"
    return (
        f"Image of {width}x{height} = {width * height:,} px exceeds max_image_pixels ({limit}). Downscale "
        f"it, or raise the limit: processor.max_image_pixels = {width * height} (or "
        "TheWorldProcessor(..., max_image_pixels=...); None disables the check)."
    )


def _float_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    """[0, 1] floats -> rounded uint8; `ValueError` naming the range for anything else."""
    values = values.astype(np.float32, copy=False)
    if not np.isfinite(values).all():
        raise ValueError(
            f"Float image values must be finite and lie in [0, 1]; the {what} holds NaN or infinite values."
        )
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        hint = ""
        if low >= 0.0 and high <= 255.0:
            hint = " They look like [0, 255] values: divide by 255 (or pass uint8)."
        raise ValueError(
            f"Float image values must be finite and lie in [0, 1]; the {what} has values in [{low:g}, {high:g}].{hint}"
        )
    return np.rint(values * 255.0).astype(np.uint8)


def _int_to_uint8(values: np.ndarray, what: str) -> np.ndarray:
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 255:
        raise ValueError(
            f"Integer image values must lie in [0, 255]; the {what} has values in [{low}, {high}]. Scale 16-bit data "
            "to 8 bits first (e.g. (a // 257).astype(numpy.uint8)) or pass uint8."
        )
    return values.astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey, dtype=np.uint8)).convert("RGB")


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        image.load()
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float64)
        return _grey_to_rgb(np.rint(values / 257.0))
    if mode == "I":
        values = np.asarray(image).astype(np.int64)
        low, high = int(values.min()), int(values.max())
        if low < 0:
            raise ValueError(
                f"Integer image values must not be negative in a 32-bit ('I') image (got [{low}, {high}]); convert "
                "the image to RGB first (image.convert('RGB'))."
            )
        top = 255 if high <= 255 else 65535 if high <= 65535 else _INT32_MAX
        return _grey_to_rgb(np.rint(values.astype(np.float64) * (255.0 / top)))
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(image), "'F' image"))
    if mode in _PREMULTIPLIED_MODES:
        values = np.asarray(image).astype(np.int32)
        colour, alpha = values[..., :-1], values[..., -1:]
        composited = np.clip(colour + (255 - alpha), 0, 255).astype(np.uint8)
        if composited.shape[-1] == 1:
            return _grey_to_rgb(composited[..., 0])
        return Image.fromarray(np.ascontiguousarray(composited))
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            return _composite_on_white(image.convert("RGBA"))
        return image.convert("RGB")
    except ValueError as error:  # PIL: "conversion from X to Y not supported"
        raise ValueError(
            f"Unsupported image mode {mode!r} ({error}); convert the image to RGB first (image.convert('RGB'))."
        ) from None


class _PilGuard:
    """Turns PIL's decompression-bomb checks and decoding failures into `ValueError` (no tracebacks from PIL)."""

    def __init__(self, width: int, height: int, max_pixels: int | None):
        self.size = (width, height)
        self.max_pixels = max_pixels
        self._warnings = warnings.catch_warnings()

    def __enter__(self):
        self._warnings.__enter__()
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return self

    def __exit__(self, kind, error, traceback):
        self._warnings.__exit__(kind, error, traceback)
        if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
            raise ValueError(
                _too_many_pixels_message(*self.size, self.max_pixels)
                + f" PIL refused it too (PIL: {error}); PIL's own limit is PIL.Image.MAX_IMAGE_PIXELS."
            ) from None
        if isinstance(error, (OSError, SyntaxError)):
            raise ValueError(
                f"Could not decode image of {self.size[0]}x{self.size[1]} px: {error}. Check the file, or convert the "
                "image to RGB yourself."
            ) from None
        return False


def _layout(shape: tuple[int, ...], channel_first: bool, kind: str, dtype) -> tuple[int, int, int | None]:
    """``(height, width, channel axis or None)`` of an array shape; `ValueError` naming the accepted layouts.

    A 3-d shape is channel-first when ``shape[0]`` is 1, 3 or 4 and channel-last when ``shape[-1]`` is; when both
    hold, ``channel_first`` (tensors) or channel-last (numpy arrays) wins.
    """
    if len(shape) == 2:
        return shape[0], shape[1], None
    if len(shape) == 3:
        first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
        if first and (channel_first or not last):
            return shape[1], shape[2], 0
        if last:
            return shape[0], shape[1], 2
    raise ValueError(f"Unsupported image layout: {kind} of shape {tuple(shape)} and dtype {dtype}. {_ACCEPTED}")


def _array_to_rgb(values, channel_first: bool, max_pixels: int | None) -> Image.Image:
    is_tensor = isinstance(values, torch.Tensor)
    kind = "tensor" if is_tensor else "array"
    dtype = values.dtype
    if is_tensor:
        integer = not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool
        floating = dtype.is_floating_point
    else:
        integer, floating = dtype.kind in "ui", dtype.kind == "f"
    what = f"{kind} of shape {tuple(values.shape)}"  # as the caller passed it (before any channel move)
    if not (integer or floating):
        raise ValueError(f"Unsupported image dtype {dtype} ({what}). {_ACCEPTED}")
    height, width, channel_axis = _layout(tuple(values.shape), channel_first, kind, dtype)
    _check_image_size(width, height, max_pixels)
    if is_tensor:
        values = values.detach().cpu()
        if floating and values.dtype not in (torch.float32, torch.float64):
            values = values.float()
        values = values.numpy()
    if channel_axis == 0:
        values = np.moveaxis(values, 0, -1)
    values = _float_to_uint8(values, what) if floating else _int_to_uint8(values, what)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    values = np.ascontiguousarray(values)
    if values.ndim == 2:
        return _grey_to_rgb(values)
    if values.shape[-1] == 4:
        return _composite_on_white(Image.fromarray(values))
    return Image.fromarray(values)


def image_to_rgb(image, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Validate one image and return it as an RGB ``PIL.Image.Image`` (see the module docstring for the rules).

    Args:
        image: a ``PIL.Image.Image``, ``numpy.ndarray`` or ``torch.Tensor``.
        max_pixels: pixel cap (width x height), checked before any pixel of a lazily opened file is decoded;
            ``None`` disables it.

    Raises:
        TypeError: for other types (file paths, URLs and bytes are not opened here).
        ValueError: for unsupported layouts, dtypes, modes and value ranges, images with a side under 16 px, and
            images over ``max_pixels``.
    """
    if isinstance(image, Image.Image):
        width, height = image.size
        _check_image_size(width, height, max_pixels)
        with _PilGuard(width, height, max_pixels):
            return _pil_to_rgb(image)
    if isinstance(image, torch.Tensor):
        return _array_to_rgb(image, True, max_pixels)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, False, max_pixels)
    kind = type(image)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    hint = " Files and URLs are not opened here: use PIL.Image.open(path)." if isinstance(image, (str, bytes)) else ""
    raise TypeError(
        f"Unsupported image type {name}; pass a PIL.Image, a numpy array or a torch tensor (PIL.Image.Image, "
        f"numpy.ndarray, torch.Tensor).{hint}"
    )


def world_pixels_from_image(image: Image.Image, size: int, mode: str = "squash", legacy: bool = False) -> torch.Tensor:
    """Fit one image to the square world image and scale its pixels.

    Args:
        image: an RGB ``PIL.Image.Image`` (other modes and sizes go through `image_to_rgb` first).
        size: S, the side of the world image.
        mode: ``"squash"``, ``"letterbox"`` or ``"center_crop"`` (see the module docstring).
        legacy: keep [0, 255] instead of mapping to [-1, 1].

    Returns:
        `torch.FloatTensor` of shape ``(3, size, size)``, in [-1, 1] (or [0, 255] with ``legacy``).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"world_pixels_from_image takes a PIL.Image.Image, got {type(image).__name__}.")
    if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}.")
    if mode not in WORLD_RESIZE_MODES:
        raise ValueError(f"mode must be one of {WORLD_RESIZE_MODES}, got {mode!r}.")
    size = int(size)
    if image.mode != "RGB" or "transparency" in image.info:
        image = image_to_rgb(image)
    width, height = image.size
    with _PilGuard(width, height, None):
        if mode == "squash":
            fitted = image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)
        elif mode == "center_crop":
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            fitted = image.crop((left, top, left + side, top + side))
            if side != size:
                fitted = fitted.resize((size, size), Image.BICUBIC)
        else:  # letterbox
            if width >= height:
                new_w, new_h = size, max(1, (height * size + width // 2) // width)
            else:
                new_w, new_h = max(1, (width * size + height // 2) // height), size
            resized = image if (new_w, new_h) == (width, height) else image.resize((new_w, new_h), Image.BICUBIC)
            fitted = Image.new("RGB", (size, size), LETTERBOX_FILL)
            fitted.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
        pixels = torch.from_numpy(np.asarray(fitted, dtype=np.float32).copy()).permute(2, 0, 1).contiguous()
    return pixels if legacy else pixels / 127.5 - 1.0


def world_tokens_outside_window(
    input_ids_row, world_token_id: int, sliding_window: int, attention_mask_row=None
) -> int:
    """How many world tokens of one sample lie ``>= sliding_window`` positions before its last token.

    The last (non-padding) token is the one that predicts the first answer token; Gemma's sliding-window layers let a
    query see keys fewer than ``sliding_window`` positions back, so these world tokens reach it only through the global
    layers.

    Args:
        input_ids_row: one row of ids (list, numpy array or tensor).
        world_token_id: id of ``<world_soft_token>``.
        sliding_window: Gemma's ``sliding_window``.
        attention_mask_row: optional mask of the row (padding is dropped first; left or right padding).
    """
    ids = np.asarray(input_ids_row.tolist() if hasattr(input_ids_row, "tolist") else list(input_ids_row))
    if attention_mask_row is not None:
        mask = np.asarray(attention_mask_row.tolist() if hasattr(attention_mask_row, "tolist") else attention_mask_row)
        ids = ids[mask.astype(bool)]
    if ids.size == 0:
        return 0
    positions = np.flatnonzero(ids == world_token_id)
    return int(((ids.size - 1 - positions) >= sliding_window).sum())


def _rows(values) -> list[list[int]]:
    """Rows of a batch of ids as lists (tensor, numpy array or list of lists)."""
    if hasattr(values, "tolist"):
        values = values.tolist()
    return [row.tolist() if hasattr(row, "tolist") else list(row) for row in values]


def _check_int(name: str, value, minimum: int, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}.")
    return int(value)


# ----------------------------------------------------------------------------------------------------------------------
# Loading the sub-processors without following any auto_map
# ----------------------------------------------------------------------------------------------------------------------

_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies", "subfolder")


def _native(cls, kind: str, name: str):
    if cls is None or getattr(cls, "is_dummy", False):
        return None
    if not getattr(cls, "__module__", "").startswith("transformers."):
        raise ValueError(
            f"The {kind} class {name!r} resolves to {cls.__module__}.{cls.__qualname__}, which is not part of "
            "transformers. TheWorldProcessor only loads transformers' own tokenizer and image processor classes."
        )
    return cls


def _load_native_tokenizer(path, **kwargs):
    hub = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    name = get_tokenizer_config(path, **hub).get("tokenizer_class") or "TokenizersBackend"
    for candidate in dict.fromkeys((name, name.removesuffix("Fast"))):
        cls = _native(tokenizer_class_from_name(candidate), "tokenizer", name)
        if cls is not None:
            return cls.from_pretrained(path, **kwargs)
    raise ValueError(f"Unknown tokenizer class {name!r} in {path}; TheWorldProcessor needs Gemma 3's tokenizer.")


def _load_native_image_processor(path, backend=None, **kwargs):
    hub = {key: kwargs[key] for key in _HUB_KWARGS if key in kwargs}
    config, _ = ImageProcessingMixin.get_image_processor_dict(path, **hub)
    name = config.get("image_processor_type")
    if not name:
        raise ValueError(
            f"The image processor config of {path} has no image_processor_type; TheWorldProcessor needs Gemma 3's "
            "image processor (image_processor_type 'Gemma3ImageProcessor')."
        )
    base = name.removesuffix("Fast")
    preferred = backend or ("torchvision" if is_torchvision_available() else "pil")
    candidates = [base + "Pil", base] if preferred == "pil" else [base, base + "Pil"]
    for entry in IMAGE_PROCESSOR_MAPPING_NAMES.values():
        if isinstance(entry, dict) and base in entry.values():
            candidates = [entry.get(preferred)] + [value for key, value in entry.items() if key != preferred]
            break
    for candidate in candidates:
        if candidate is not None:
            cls = _native(get_image_processor_class_from_name(candidate), "image processor", name)
            if cls is not None:
                return cls.from_pretrained(path, **kwargs)
    raise ValueError(f"Unknown image processor class {name!r} in {path}; TheWorldProcessor needs Gemma 3's.")


# ----------------------------------------------------------------------------------------------------------------------
# The processor
# ----------------------------------------------------------------------------------------------------------------------


@auto_docstring(
    custom_intro="""
    Constructs a TheWorld processor: Gemma 3's tokenizer and SigLIP image processor plus one block of world tokens
    per image and the world image (``world_pixel_values``, shape ``(num_images, 3, world_image_size,
    world_image_size)``) the Cosmos-Predict2 VAE encodes. With ``num_world_tokens=0`` it gives exactly Gemma 3's
    processor output. See the module docstring for the text layout, the accepted images and the resize modes.
    """
)
class TheWorldProcessor(ProcessorMixin):
    # Gemma 3's processor defaults for its image processor (its preprocessor_config.json leaves them null).
    images_kwargs = {
        "do_convert_rgb": True,
        "do_pan_and_scan": False,
        "pan_and_scan_min_crop_size": 256,
        "pan_and_scan_max_num_crops": 4,
        "pan_and_scan_min_ratio_to_activate": 1.2,
    }
    return_mm_token_type_ids = True

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template=None,
        image_seq_length: int = 256,
        num_world_tokens: int = 0,
        world_image_size: int = 512,
        world_placement: str = "after_image",
        world_resize_mode: str = "squash",
        legacy_preprocessing: bool = False,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        sliding_window: int | None = None,
        start_of_world_token: str = "<start_of_world>",
        end_of_world_token: str = "<end_of_world>",
        world_token: str = "<world_soft_token>",
        boi_token: str = "<start_of_image>",
        eoi_token: str = "<end_of_image>",
        image_token: str = "<image_soft_token>",
        **kwargs,
    ):
        r"""
        image_seq_length (`int`, *optional*, defaults to 256):
            SigLIP tokens per image (Gemma 3's ``mm_tokens_per_image``).
        num_world_tokens (`int`, *optional*, defaults to 0):
            World tokens per image (``config.num_world_tokens``); 0 disables the world and gives Gemma 3's output.
        world_image_size (`int`, *optional*, defaults to 512):
            Side S of the square world image.
        world_placement (`str`, *optional*, defaults to `"after_image"`):
            ``"after_image"`` (a block right after each image's ``<end_of_image>``) or ``"after_bos"`` (all blocks
            right after ``<bos>``, the theworld 0.1.0 layout).
        world_resize_mode (`str`, *optional*, defaults to `"squash"`):
            ``"squash"``, ``"letterbox"`` (black padding) or ``"center_crop"``.
        legacy_preprocessing (`bool`, *optional*, defaults to `False`):
            World pixels in [0, 255] instead of [-1, 1] (the earlier research code's input).
        max_image_pixels (`int`, *optional*, defaults to 64000000):
            Largest accepted image (width x height), checked before decoding; ``None`` disables the check.
        sliding_window (`int`, *optional*):
            Gemma's sliding window; when set, one warning per processor reports world tokens out of its reach.
        start_of_world_token (`str`, *optional*, defaults to `"<start_of_world>"`):
            Marker opening a world block (added to the tokenizer when missing).
        end_of_world_token (`str`, *optional*, defaults to `"<end_of_world>"`):
            Marker closing a world block (added to the tokenizer when missing).
        world_token (`str`, *optional*, defaults to `"<world_soft_token>"`):
            World placeholder (added to the tokenizer when missing).
        boi_token (`str`, *optional*, defaults to `"<start_of_image>"`):
            Gemma 3's image marker: the placeholder written in prompts.
        eoi_token (`str`, *optional*, defaults to `"<end_of_image>"`):
            Gemma 3's end-of-image marker.
        image_token (`str`, *optional*, defaults to `"<image_soft_token>"`):
            Gemma 3's SigLIP placeholder.
        """
        self.image_seq_length = _check_int("image_seq_length", image_seq_length, 1)
        self.num_world_tokens = _check_int("num_world_tokens", num_world_tokens, 0)
        self.world_image_size = _check_int("world_image_size", world_image_size, 1)
        self.max_image_pixels = _check_int("max_image_pixels", max_image_pixels, 1, allow_none=True)
        self.sliding_window = _check_int("sliding_window", sliding_window, 1, allow_none=True)
        if world_placement not in WORLD_PLACEMENTS:
            raise ValueError(f"world_placement must be one of {WORLD_PLACEMENTS}, got {world_placement!r}.")
        if world_resize_mode not in WORLD_RESIZE_MODES:
            raise ValueError(f"world_resize_mode must be one of {WORLD_RESIZE_MODES}, got {world_resize_mode!r}.")
        if not isinstance(legacy_preprocessing, bool):
            raise ValueError(f"legacy_preprocessing must be a bool, got {legacy_preprocessing!r}.")
        self.world_placement = world_placement
        self.world_resize_mode = world_resize_mode
        self.legacy_preprocessing = legacy_preprocessing
        tokens = (start_of_world_token, end_of_world_token, world_token, boi_token, eoi_token, image_token)
        if not all(isinstance(t, str) and t for t in tokens) or len(set(tokens)) != len(tokens):
            raise ValueError(f"The six marker/placeholder tokens must be distinct non-empty strings, got {tokens}.")
        self.start_of_world_token = start_of_world_token
        self.end_of_world_token = end_of_world_token
        self.world_token = world_token
        self.boi_token = boi_token
        self.eoi_token = eoi_token
        self.image_token = image_token
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

        vocab = tokenizer.get_vocab()
        missing = [t for t in (boi_token, eoi_token, image_token) if t not in vocab]
        if missing:
            raise ValueError(
                f"The tokenizer lacks Gemma 3's image tokens {missing}; TheWorld needs Gemma 3's tokenizer."
            )
        new = [t for t in (start_of_world_token, end_of_world_token, world_token) if t not in vocab]
        if new:
            tokenizer.add_tokens(new, special_tokens=True)
        self.boi_token_id = tokenizer.convert_tokens_to_ids(boi_token)
        self.eoi_token_id = tokenizer.convert_tokens_to_ids(eoi_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.start_of_world_token_id = tokenizer.convert_tokens_to_ids(start_of_world_token)
        self.end_of_world_token_id = tokenizer.convert_tokens_to_ids(end_of_world_token)
        self.world_token_id = tokenizer.convert_tokens_to_ids(world_token)
        self._sliding_window_warned = False

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        cache_dir=None,
        force_download: bool = False,
        local_files_only: bool = False,
        token=None,
        revision: str = "main",
        **kwargs,
    ):
        """Load a saved processor. The tokenizer and image processor are always transformers' own classes, named by
        ``tokenizer_class`` / ``image_processor_type``: no ``auto_map`` is followed and no code from the folder runs,
        whatever ``trust_remote_code`` says (it is ignored here)."""
        kwargs.pop("trust_remote_code", None)
        kwargs.pop("code_revision", None)
        return super().from_pretrained(
            pretrained_model_name_or_path,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
            revision=revision,
            **kwargs,
        )

    @classmethod
    def from_gemma(cls, pretrained_model_name_or_path, **kwargs):
        """A processor from a Gemma 3 model's own processor files (tokenizer, image processor, chat template and
        ``image_seq_length``) with TheWorld's settings given as keyword arguments (``num_world_tokens=...``, ...).

        Hub arguments (``revision``, ``token``, ``cache_dir``, ``local_files_only``, ``force_download``, ``proxies``,
        ``subfolder``) locate the files. Like `from_pretrained`, it only loads transformers' own classes and never
        follows an ``auto_map`` (``trust_remote_code`` is ignored).
        """
        kwargs.pop("trust_remote_code", None)
        kwargs.pop("code_revision", None)
        hub = {key: kwargs.pop(key) for key in _HUB_KWARGS if key in kwargs}
        processor_dict, _ = cls.get_processor_dict(pretrained_model_name_or_path, **hub)
        image_processor = _load_native_image_processor(pretrained_model_name_or_path, **hub)
        tokenizer = _load_native_tokenizer(pretrained_model_name_or_path, **hub)
        chat_template = processor_dict.get("chat_template") or getattr(tokenizer, "chat_template", None)
        kwargs.setdefault("chat_template", chat_template)
        if processor_dict.get("image_seq_length") is not None:
            kwargs.setdefault("image_seq_length", processor_dict["image_seq_length"])
        return cls(image_processor, tokenizer, **kwargs)

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        own = set(cls.__init__.__code__.co_varnames[1 : cls.__init__.__code__.co_argcount])
        kwargs = {k: v for k, v in kwargs.items() if k not in own and k not in ("trust_remote_code", "code_revision")}
        backend = kwargs.pop("backend", None)
        use_fast = kwargs.pop("use_fast", None)
        if backend is None and use_fast is not None:
            backend = "torchvision" if use_fast else "pil"
        image_processor = _load_native_image_processor(pretrained_model_name_or_path, backend=backend, **kwargs)
        tokenizer = _load_native_tokenizer(pretrained_model_name_or_path, **kwargs)
        return [image_processor, tokenizer]

    @staticmethod
    def get_possibly_dynamic_module(module_name):
        # Only the base classes `check_argument_for_proper_class` needs: a processor_config.json naming an audio
        # tokenizer or another sub-processor is refused instead of loaded.
        if module_name not in ("ImageProcessingMixin", "PreTrainedTokenizerBase", "MistralCommonBackend"):
            raise ValueError(
                f"TheWorldProcessor has only a tokenizer and an image processor; the processor config names "
                f"{module_name!r}, which is not loaded."
            )
        return ProcessorMixin.get_possibly_dynamic_module(module_name)

    # ------------------------------------------------------------------ token helpers
    @property
    def image_token_ids(self) -> list[int]:
        return [self.image_token_id]

    @property
    def model_input_names(self) -> list[str]:
        names = list(super().model_input_names)
        return names + [name for name in ("token_type_ids", "world_pixel_values") if name not in names]

    @property
    def unused_input_names(self) -> list[str]:
        return ["num_crops"]

    def world_block(self) -> str:
        """``<start_of_world> + <world_soft_token> * num_world_tokens + <end_of_world>``."""
        return self.start_of_world_token + self.world_token * self.num_world_tokens + self.end_of_world_token

    def _unmarked(self, token: str) -> str:
        escaped = re.escape(token)
        return f"(?<!{re.escape(_CONTROL_TOKEN_START)}){escaped}" if _CONTROL_TOKEN_START else escaped

    def _count(self, text: str, token: str) -> int:
        return len(re.findall(self._unmarked(token), text))

    # ------------------------------------------------------------------ inputs
    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Text as a list of prompts; images as one list of RGB PIL images per prompt (each converted once by
        `image_to_rgb`), or ``None``. Without text, each prompt is its images' ``<start_of_image>`` markers."""
        if text is not None:
            if isinstance(text, str):
                text = [text]
            elif isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text):
                text = list(text)
                if not text:
                    raise ValueError("text is an empty list; pass at least one prompt.")
            else:
                raise TypeError("Invalid input text. Please provide a string, or a list of strings")
        if images is None:
            return None, text, videos, audio
        if isinstance(images, (list, tuple)):
            if len(images) == 0:
                return None, text, videos, audio
            nested_flags = [isinstance(item, (list, tuple)) for item in images]
            if all(nested_flags):
                nested = [list(sample) for sample in images]
                if any(isinstance(item, (list, tuple)) for sample in nested for item in sample):
                    raise TypeError("images is nested too deeply: pass one list of images per prompt.")
            elif not any(nested_flags):
                nested = [list(images)]
                if text is not None and len(text) > 1:
                    counts = [self._count(t, self.boi_token) for t in text]
                    if sum(counts) != len(images):
                        raise ValueError(
                            f"Got a flat list of {len(images)} images for {len(text)} prompts holding {counts} "
                            f"{self.boi_token} markers; pass one list of images per prompt, e.g. images=[[image_a], "
                            "[image_b]] (an empty list for a text-only prompt)."
                        )
                    starts = np.cumsum([0] + counts).tolist()
                    nested = [list(images[a:b]) for a, b in zip(starts[:-1], starts[1:])]
            else:
                raise TypeError(
                    "images mixes single images and lists: pass an image, a list of images (one prompt) or one list of "
                    "images per prompt."
                )
        else:
            nested = [[images]]
        nested = [[image_to_rgb(image, self.max_image_pixels) for image in sample] for sample in nested]
        if not any(nested):
            return None, text, videos, audio
        if text is None:
            text = [" ".join([self.boi_token] * len(sample)) for sample in nested]
        return nested, text, videos, audio

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Check the images per prompt against the ``<start_of_image>`` markers and the ``<start_of_world>`` markers
        against the images; raise `ValueError` with the counts otherwise."""
        if videos is not None or audio is not None:
            raise ValueError("TheWorldProcessor takes images and text only (no videos or audio).")
        if images is None and text is None:
            raise ValueError(f"You need to provide at least one input to call {type(self).__name__}.")
        if text is None:
            return
        markers = [self._count(t, self.boi_token) for t in text]
        if images is None:
            per_prompt = [0] * len(text)
            if any(markers):
                raise ValueError(
                    f"Found {sum(markers)} {self.boi_token} markers in the text but no images were passed."
                )
        else:
            if len(images) != len(text):
                raise ValueError(
                    f"Got {len(images)} image lists for {len(text)} prompts; pass exactly one list of images per prompt "
                    "(an empty list for a text-only prompt)."
                )
            per_prompt = [len(sample) for sample in images]
            if markers != per_prompt:
                raise ValueError(
                    f"The number of {self.boi_token} markers in each prompt must equal the number of images given for "
                    f"it: found {markers} markers and {per_prompt} images per prompt."
                )
        for token in (self.world_token, self.end_of_world_token):
            if any(self._count(t, token) for t in text):
                raise ValueError(
                    f"The text already holds {token}; write at most one {self.start_of_world_token} marker per image "
                    "and let the processor expand it."
                )
        world_markers = [self._count(t, self.start_of_world_token) for t in text]
        if any(world_markers) and self.num_world_tokens == 0:
            raise ValueError(
                f"The text holds {self.start_of_world_token} markers but num_world_tokens=0 (the world is disabled); "
                "remove them."
            )
        for index, (found, expected) in enumerate(zip(world_markers, per_prompt)):
            if found and found != expected:
                raise ValueError(
                    f"Prompt {index} holds {found} {self.start_of_world_token} markers for {expected} images; write "
                    "one marker per image (expanded in place, in image order) or none (automatic placement)."
                )

    # ------------------------------------------------------------------ expansion
    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        """Gemma 3's replacement of one ``<start_of_image>`` (with its pan-and-scan crops, when enabled)."""
        sequence = f"\n\n{self.boi_token}{self.image_token * self.image_seq_length}{self.eoi_token}\n\n"
        crops = image_inputs.get("num_crops")
        num_crops = int(crops[image_idx]) if crops is not None else 0
        if not num_crops:
            return sequence
        return f"Here is the original image {sequence} and here are some crops to help you see better " + " ".join(
            [sequence] * num_crops
        )

    def _process_images(self, images, **kwargs):
        processed = self.image_processor(images, **kwargs)
        flat = [image for sample in images for image in sample]
        replacements = [self.replace_image_token(processed, image_idx=index) for index in range(len(flat))]
        if self.num_world_tokens > 0 and flat:
            pixels = self.world_pixel_values(flat)
            return_tensors = kwargs.get("return_tensors")
            if return_tensors is None:
                processed["world_pixel_values"] = list(pixels.numpy())
            elif return_tensors == "pt":
                processed["world_pixel_values"] = pixels
            else:
                processed["world_pixel_values"] = pixels.numpy()
        return processed, replacements

    def get_text_with_replacements(
        self, text: list[str], images_replacements=(), videos_replacements=(), audio_replacements=()
    ):
        """Expand the ``<start_of_image>`` markers (Gemma 3) and write the world blocks (``world_placement`` or the
        caller's ``<start_of_world>`` markers). Returns the texts and, per prompt, the replacement offsets (type
        ``"image"``, whose replacement holds its world block with ``"after_image"``, or ``"world"``)."""
        replacements = iter(images_replacements)
        world_on = self.num_world_tokens > 0
        block = self.world_block()
        groups = [f"(?P<image>{self._unmarked(self.boi_token)})"]
        if world_on:
            groups.append(f"(?P<world>{self._unmarked(self.start_of_world_token)})")
        pattern = re.compile("|".join(groups))
        bos = self.tokenizer.bos_token or ""
        texts, offsets = [], []
        for sample in text:
            events = [(m.start(), m.end(), m.lastgroup) for m in pattern.finditer(sample)]
            num_images = sum(kind == "image" for _, _, kind in events)
            explicit = any(kind == "world" for _, _, kind in events)
            automatic = world_on and num_images > 0 and not explicit
            if automatic and self.world_placement == "after_bos":
                at = len(bos) if bos and sample.startswith(bos) else 0
                events.append((at, at, "insert"))
            events.sort(key=lambda event: (event[0], event[2] != "insert"))
            pieces, sample_offsets, last, length = [], [], 0, 0
            for start, end, kind in events:
                pieces.append(sample[last:start])
                length += start - last
                if kind == "image":
                    replacement = next(replacements, None)
                    if replacement is None:
                        raise ValueError(f"More {self.boi_token} markers in the text than images were passed.")
                    if automatic and self.world_placement == "after_image":
                        cut = replacement.index(self.eoi_token) + len(self.eoi_token)
                        replacement = replacement[:cut] + block + replacement[cut:]
                else:
                    replacement = block if kind == "world" else block * num_images
                sample_offsets.append(
                    {
                        "type": "image" if kind == "image" else "world",
                        "span": (start, end),
                        "new_span": (length, length + len(replacement)),
                        "text": sample[start:end],
                        "replacement": replacement,
                    }
                )
                pieces.append(replacement)
                length += len(replacement)
                last = end
            pieces.append(sample[last:])
            texts.append("".join(pieces))
            offsets.append(sample_offsets)
        return texts, offsets

    def create_mm_token_type_ids(self, input_ids) -> list[list[int]]:
        """0 for text, 1 for ``<image_soft_token>``, 2 for ``<world_soft_token>`` (markers are text)."""
        types = []
        for row in _rows(input_ids):
            ids = np.asarray(row, dtype=np.int64)
            row_types = np.full(ids.shape, TOKEN_TYPE_TEXT, dtype=np.int64)
            row_types[ids == self.image_token_id] = TOKEN_TYPE_IMAGE
            row_types[ids == self.world_token_id] = TOKEN_TYPE_WORLD
            types.append(row_types.tolist())
        return types

    def _check_special_mm_tokens(self, text: list[str], text_inputs, modalities: list[str]):
        rows = _rows(text_inputs["input_ids"])
        for token, token_id, what in (
            (self.image_token, self.image_token_id, "image"),
            (self.world_token, self.world_token_id, "world"),
        ):
            in_ids = [row.count(token_id) for row in rows]
            in_text = [self._count(sample, token) for sample in text]
            if in_ids != in_text:
                raise ValueError(
                    f"Mismatch in {what} placeholder count between the text and input_ids: ids={in_ids}, "
                    f"text={in_text}. The prompt was probably truncated: disable truncation or raise max_length."
                )

    # ------------------------------------------------------------------ call
    @auto_docstring
    def __call__(
        self,
        images: ImageInput | None = None,
        text: TextInput | list[TextInput] | None = None,
        **kwargs: Unpack[ProcessingKwargs],
    ) -> BatchFeature:
        r"""
        images (`PIL.Image.Image`, `np.ndarray`, `torch.Tensor`, or a list or list of lists of them, *optional*):
            One image, a list of images (one prompt) or one list of images per prompt (an empty list for a text-only
            prompt). PIL images of any mode; arrays and tensors ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with C in
            {1, 3, 4}, integers in [0, 255] or floats in [0, 1] (see `image_to_rgb`). Paths and URLs are not opened.
        text (`str` or `list[str]`, *optional*):
            One prompt or a batch. Each ``<start_of_image>`` stands for the next image of its prompt; an optional
            ``<start_of_world>`` per image places that image's world block. Without text, each prompt is its images'
            markers.

        Returns:
            [`BatchFeature`]: ``input_ids`` and ``attention_mask`` ``(batch, seq_len)``; ``token_type_ids``
            ``(batch, seq_len)`` (0 text, 1 SigLIP image token, 2 world token); with images, ``pixel_values``
            ``(num_images, 3, H, W)`` (Gemma 3's SigLIP input) and, when ``num_world_tokens > 0``,
            ``world_pixel_values`` ``(num_images, 3, world_image_size, world_image_size)`` float32 in [-1, 1] ([0,
            255] with ``legacy_preprocessing``), one row per image in batch order.
        """
        kwargs.pop("return_mm_token_type_ids", None)
        if isinstance(kwargs.get("text_kwargs"), dict):
            kwargs["text_kwargs"] = {k: v for k, v in kwargs["text_kwargs"].items() if k != "return_mm_token_type_ids"}
        nested, text, _, _ = self.prepare_inputs_layout(images=images, text=text)
        out = super().__call__(images=nested, text=text, **kwargs)
        if "mm_token_type_ids" in out:
            out["token_type_ids"] = out.pop("mm_token_type_ids")
        if text is None or "input_ids" not in out:
            return out

        rows = _rows(out["input_ids"])
        found = [row.count(self.world_token_id) for row in rows]
        expected = [len(sample) * self.num_world_tokens for sample in nested] if nested else [0] * len(rows)
        if found != expected:
            raise ValueError(
                f"World placeholder count per sample {found} differs from the expected {expected} (images x "
                f"num_world_tokens={self.num_world_tokens}); the prompt was probably truncated: disable truncation or "
                "raise max_length."
            )
        if self.sliding_window is not None and any(expected) and not self._sliding_window_warned:
            masks = _rows(out["attention_mask"]) if "attention_mask" in out else [None] * len(rows)
            outside = [
                world_tokens_outside_window(row, self.world_token_id, self.sliding_window, mask)
                for row, mask in zip(rows, masks)
            ]
            if any(outside):
                self._sliding_window_warned = True
                logger.warning(
                    "%d of %d world tokens in this batch (per sample: %s) lie %d or more positions before their "
                    "sample's last token, out of reach of Gemma's sliding-window layers (sliding_window=%d); only the "
                    "global layers see them. Use fewer world tokens (a larger world_pooling or a smaller "
                    "world_image_size), world_placement='after_image' with the image near the question, or a shorter "
                    "prompt. (Logged once per processor.)",
                    sum(outside),
                    sum(expected),
                    outside,
                    self.sliding_window,
                    self.sliding_window,
                )
        return out

    # ------------------------------------------------------------------ world images
    def world_pixel_values(self, images) -> torch.Tensor:
        """World images of a list of images (one per prompt, the model's ``images=[...]`` API), validated and converted
        like in `__call__`.

        Returns:
            `torch.FloatTensor` of shape ``(len(images), 3, world_image_size, world_image_size)``.
        """
        if isinstance(images, (Image.Image, np.ndarray, torch.Tensor)):
            images = [images]
        if not isinstance(images, (list, tuple)) or not images:
            raise ValueError("world_pixel_values takes a non-empty list of images.")
        return torch.stack(
            [
                world_pixels_from_image(
                    image_to_rgb(image, self.max_image_pixels),
                    self.world_image_size,
                    self.world_resize_mode,
                    self.legacy_preprocessing,
                )
                for image in images
            ]
        )

    def preprocess_world_images(self, images) -> torch.Tensor:
        """Alias of `world_pixel_values` (theworld 0.1.0 name)."""
        return self.world_pixel_values(images)


__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "TheWorldProcessor",
    "image_to_rgb",
    "world_pixels_from_image",
    "world_tokens_outside_window",
]
