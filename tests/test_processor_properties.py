"""Property tests of TheWorldProcessor: every input gives a correct result or one of the documented errors.

Bounded to well under a minute: few examples per property, small pixel counts (large sides only with a small other
side), no example database written to disk.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer

from theworld.processing_theworld import (
    DEFAULT_MAX_IMAGE_PIXELS,
    WORLD_RESIZE_MODES,
    TheWorldProcessor,
    image_to_rgb,
    world_pixels_from_image,
)

SEQ, S = 16, 32
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

#: The documented error messages (module docstring of processing_theworld).
VALUE_ERRORS = (
    r"^Unsupported image layout",
    r"^Unsupported image dtype",
    r"^Unsupported image mode",
    r"^Integer image values",
    r"^Float image values",
    r"^Image of \d+x\d+ px is too small",
    r"^Image of \d+x\d+ = [\d,]+ px exceeds max_image_pixels",
    r"^Could not decode image",
)


def _category(error: Exception) -> str | None:
    """The documented pattern ``error`` matches, or ``None``."""
    if isinstance(error, TypeError):
        return "type" if str(error).startswith("Unsupported image type") else None
    if not isinstance(error, ValueError):
        return None
    return next((p for p in VALUE_ERRORS if re.search(p, str(error))), None)


def _documented(error: Exception) -> bool:
    return _category(error) is not None


# ----------------------------------------------------------------------------------------------------------------------
# PIL images of every mode
# ----------------------------------------------------------------------------------------------------------------------
@st.composite
def sizes(draw, max_pixels=40_000):
    """Sides 1..4000, at most ``max_pixels`` pixels: a large side comes with a small other side. Half the draws are
    ordinary images (16..96 px a side)."""
    if draw(st.booleans()):
        return draw(st.integers(16, 96)), draw(st.integers(16, 96))
    width = draw(st.one_of(st.integers(1, 64), st.integers(1, 4000)))
    height = draw(st.integers(1, max(1, min(4000, max_pixels // width))))
    return (width, height) if draw(st.booleans()) else (height, width)


def _values(rng, kind: str, shape, dtype) -> np.ndarray:
    if kind == "unit":
        values = rng.random(shape)
    elif kind == "byte":
        values = rng.integers(0, 256, shape)
    elif kind == "short":
        values = rng.integers(0, 65536, shape)
    elif kind == "wide":
        values = rng.integers(-(2**31), 2**31 - 1, shape, dtype=np.int64)
    else:  # "any": negative and large, with NaN/inf sprinkled into floats
        values = rng.standard_normal(shape) * 1000
    with np.errstate(invalid="ignore", over="ignore"):
        values = np.asarray(values).astype(dtype)
    if kind == "any" and np.issubdtype(values.dtype, np.floating) and values.size:
        values.flat[rng.integers(0, values.size)] = rng.choice([np.nan, np.inf, -np.inf, 0.5])
    return values


@settings(max_examples=400, **SETTINGS)
@given(
    mode=st.sampled_from(Image.MODES),
    size=sizes(),
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["unit", "byte", "short", "wide", "any"]),
    cap=st.sampled_from([None, 500, DEFAULT_MAX_IMAGE_PIXELS]),
    resize=st.sampled_from(WORLD_RESIZE_MODES),
    legacy=st.booleans(),
)
def test_pil_images_of_every_mode(mode, size, seed, kind, cap, resize, legacy):
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "F":
        image = Image.frombytes("F", size, _values(rng, kind, (height, width), np.float32).tobytes())
    elif mode == "I":
        image = Image.frombytes("I", size, _values(rng, kind, (height, width), np.int32).tobytes())
    elif mode.startswith("I;16"):
        dtype = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, size, _values(rng, "short", (height, width), dtype).tobytes())
    else:
        raw = len(Image.new(mode, size).tobytes())
        image = Image.frombytes(mode, size, rng.integers(0, 256, raw, dtype=np.uint8).tobytes())
    try:
        rgb = image_to_rgb(image, cap)
    except (ValueError, TypeError) as error:
        assert _documented(error), error
        event(f"error {_category(error)}")
        if min(size) < 16:
            assert "too small" in str(error)
        return
    assert min(size) >= 16 and (cap is None or width * height <= cap)
    event("converted")
    assert rgb.mode == "RGB" and rgb.size == size
    out = np.asarray(rgb)
    if mode in ("L", "RGB"):
        source = np.asarray(image)
        np.testing.assert_array_equal(out, source if mode == "RGB" else np.repeat(source[..., None], 3, -1))
    elif mode == "RGBA":
        source = np.asarray(image).astype(np.float64)
        alpha = source[..., 3:] / 255.0
        expected = source[..., :3] * alpha + 255.0 * (1.0 - alpha)
        assert np.abs(out.astype(np.float64) - expected).max() <= 1.0
    elif mode.startswith("I;16"):
        expected = np.rint(np.asarray(image).astype(np.float64) / 257.0).astype(np.uint8)
        np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, -1))
    pixels = world_pixels_from_image(rgb, S, resize, legacy)
    assert pixels.shape == (3, S, S) and pixels.dtype == torch.float32
    low, high = (0.0, 255.0) if legacy else (-1.0, 1.0)
    assert float(pixels.min()) >= low and float(pixels.max()) <= high


# ----------------------------------------------------------------------------------------------------------------------
# numpy arrays and torch tensors
# ----------------------------------------------------------------------------------------------------------------------
NUMPY_DTYPES = ["uint8", "int8", "int16", "int32", "int64", "uint16", "float16", "float32", "float64", "bool"]
TENSOR_ONLY = ["bfloat16"]
DIMS = [0, 1, 2, 3, 4, 5, 15, 16, 17, 31, 64, 4000]


def _oracle(values: np.ndarray, channel_first: bool, cap):
    """The documented rules, written independently: ``("error", prefix)`` or ``("ok", expected RGB array)``."""
    if values.dtype.kind not in "uif":
        return "error", "Unsupported image dtype"
    shape = values.shape
    if values.ndim == 2:
        hwc = values[..., None]
    elif values.ndim == 3 and (shape[0] in (1, 3, 4) or shape[-1] in (1, 3, 4)):
        first = shape[0] in (1, 3, 4) and (channel_first or shape[-1] not in (1, 3, 4))
        hwc = np.moveaxis(values, 0, -1) if first else values
    else:
        return "error", "Unsupported image layout"
    height, width = hwc.shape[:2]
    if min(height, width) < 16:
        return "error", "too small"
    if cap is not None and height * width > cap:
        return "error", "exceeds max_image_pixels"
    if values.dtype.kind == "f":
        floats = hwc.astype(np.float32)
        if not np.isfinite(floats).all() or floats.min() < 0 or floats.max() > 1:
            return "error", "Float image values"
        hwc = np.rint(floats * 255.0).astype(np.uint8)
    else:
        if hwc.min() < 0 or hwc.max() > 255:
            return "error", "Integer image values"
        hwc = hwc.astype(np.uint8)
    if hwc.shape[-1] == 1:
        return "ok", np.repeat(hwc, 3, -1)
    if hwc.shape[-1] == 4:
        alpha = hwc[..., 3:].astype(np.float64) / 255.0
        return "ok", hwc[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return "ok", hwc


@settings(max_examples=500, **SETTINGS)
@given(
    shape=st.one_of(
        st.tuples(st.integers(16, 64), st.integers(16, 64)),
        st.tuples(st.integers(16, 64), st.integers(16, 64), st.integers(1, 5)),
        st.tuples(st.integers(1, 5), st.integers(16, 64), st.integers(16, 64)),
        st.lists(st.sampled_from(DIMS), min_size=0, max_size=4),
    ),
    dtype=st.sampled_from(NUMPY_DTYPES + TENSOR_ONLY),
    as_tensor=st.booleans(),
    kind=st.sampled_from(["unit", "byte", "any"]),
    seed=st.integers(0, 2**32 - 1),
    cap=st.sampled_from([None, 1000, DEFAULT_MAX_IMAGE_PIXELS]),
)
def test_arrays_and_tensors(shape, dtype, as_tensor, kind, seed, cap):
    shape = tuple(shape)
    assume(math.prod(shape) <= 200_000)
    assume(as_tensor or dtype not in TENSOR_ONLY)
    rng = np.random.default_rng(seed)
    base = "float32" if dtype == "bfloat16" else dtype
    if base == "bool":
        values = np.asarray(rng.random(shape) < 0.5)
    else:
        values = _values(rng, kind, shape, np.float64 if "float" in base else np.int64)
        with np.errstate(invalid="ignore", over="ignore"):
            values = values.astype(base)
    if as_tensor:
        image = torch.from_numpy(values)
        if dtype == "bfloat16":
            image = image.to(torch.bfloat16)
            values = image.float().numpy()
    else:
        image = values
    verdict, expected = _oracle(values, as_tensor, cap)
    event(verdict if verdict == "ok" else f"error: {expected}")
    if verdict == "error":
        with pytest.raises(ValueError) as caught:
            image_to_rgb(image, cap)
        assert _documented(caught.value) and expected in str(caught.value), (expected, str(caught.value))
        return
    out = np.asarray(image_to_rgb(image, cap))
    assert out.shape == expected.shape and out.dtype == np.uint8
    assert np.abs(out.astype(np.float64) - expected).max() <= (1.0 if expected.dtype == np.float64 else 0.0)


@settings(max_examples=30, **SETTINGS)
@given(value=st.one_of(st.text(max_size=20), st.binary(max_size=20), st.integers(), st.floats(), st.none()))
def test_other_types(value):
    with pytest.raises(TypeError, match=r"^Unsupported image type"):
        image_to_rgb(value)


# ----------------------------------------------------------------------------------------------------------------------
# prompts and batches
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processors(tiny_bases):
    template = Path(tiny_bases.gemma, "chat_template.jinja").read_text()

    def build(**kwargs):
        return TheWorldProcessor(
            AutoImageProcessor.from_pretrained(tiny_bases.gemma),
            AutoTokenizer.from_pretrained(tiny_bases.gemma),
            chat_template=template,
            image_seq_length=SEQ,
            world_image_size=S,
            **kwargs,
        )

    return {
        ("after_image", 3): build(num_world_tokens=3),
        ("after_bos", 3): build(num_world_tokens=3, world_placement="after_bos"),
        ("after_image", 0): build(num_world_tokens=0),
    }


WORDS = ["left", "right", "of", "the", "red", "cube", "?", "Is", "ball", "\n", "<bos>", "<start_of_turn>"]


@st.composite
def samples(draw):
    images = draw(st.integers(0, 2))
    markers = draw(st.one_of(st.just(images), st.integers(0, 3)))
    world = draw(st.one_of(st.just(0), st.just(images), st.integers(0, 3)))
    words = draw(st.lists(st.sampled_from(WORDS), max_size=6))
    pieces = draw(st.permutations(words + ["<start_of_image>"] * markers + ["<start_of_world>"] * world))
    sizes_ = [draw(st.tuples(st.integers(16, 48), st.integers(16, 48))) for _ in range(images)]
    return {"images": sizes_, "markers": markers, "world": world, "text": " ".join(pieces)}


@settings(max_examples=300, **SETTINGS)
@given(
    batch=st.lists(samples(), min_size=1, max_size=3),
    key=st.sampled_from([("after_image", 3), ("after_bos", 3), ("after_image", 0)]),
    seed=st.integers(0, 2**16),
    without_text=st.booleans(),
)
def test_prompts_and_batches(processors, batch, key, seed, without_text):
    p = processors[key]
    n = p.num_world_tokens
    rng = np.random.default_rng(seed)
    images = [
        [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sample["images"]]
        for sample in batch
    ]
    counts = [len(sample) for sample in images]
    if without_text:
        assume(all(counts))
        texts, markers, worlds = None, counts, [0] * len(batch)
    else:
        texts = [sample["text"] for sample in batch]
        markers, worlds = [s["markers"] for s in batch], [s["world"] for s in batch]
    errors = []
    if sum(counts) == 0 and any(markers):
        errors.append("no images were passed")
    if sum(counts) and markers != counts:
        errors.append("must equal the number of images given for it")
    if any(worlds) and n == 0:
        errors.append("the world is disabled")
    if n and any(w and w != c for w, c in zip(worlds, counts)):
        errors.append(r"Prompt \d+ holds \d+ <start_of_world> markers for \d+ images")
    call = dict(images=images, return_tensors="pt", padding=True)
    if texts is not None:
        call["text"] = texts
    event("error" if errors else "processed")
    if errors:
        with pytest.raises(ValueError) as caught:
            p(**call)
        assert any(re.search(e, str(caught.value)) for e in errors), (errors, str(caught.value))
        return
    out = p(**call)
    ids, types, mask = out["input_ids"], out["token_type_ids"], out["attention_mask"]
    assert ids.shape == types.shape == mask.shape and ids.shape[0] == len(batch)
    assert (ids == p.world_token_id).sum(-1).tolist() == [c * n for c in counts]
    assert (ids == p.image_token_id).sum(-1).tolist() == [c * SEQ for c in counts]
    expected_types = torch.zeros_like(ids)
    expected_types[ids == p.image_token_id] = 1
    expected_types[ids == p.world_token_id] = 2
    assert torch.equal(types, expected_types)
    for row in range(ids.shape[0]):  # left padding: the real tokens are contiguous at the end
        real = mask[row].tolist()
        assert real == sorted(real)
    flat = [image for sample in images for image in sample]
    if n and flat:
        wpv = out["world_pixel_values"]
        assert wpv.shape == (len(flat), 3, S, S) and wpv.dtype == torch.float32
        assert float(wpv.min()) >= -1.0 and float(wpv.max()) <= 1.0
        torch.testing.assert_close(wpv, torch.stack([world_pixels_from_image(im, S) for im in flat]))
    else:
        assert "world_pixel_values" not in out
    if flat:
        assert out["pixel_values"].shape[0] == len(flat)
    for row, (count, world) in enumerate(zip(counts, worlds)):
        row_ids = ids[row][mask[row].bool()].tolist()
        starts = [i for i, t in enumerate(row_ids) if t == p.start_of_world_token_id]
        assert len(starts) == (count if n else 0)
        for start in starts:  # every block is whole
            assert row_ids[start + 1 : start + 1 + n] == [p.world_token_id] * n
            assert row_ids[start + 1 + n] == p.end_of_world_token_id
        if not n or not count or world:
            continue
        if p.world_placement == "after_image":
            ends = [i for i, t in enumerate(row_ids) if t == p.eoi_token_id]
            assert [end + 1 for end in ends] == starts
        else:
            first_image = row_ids.index(p.boi_token_id)
            assert row_ids[starts[0] - 1] == p.tokenizer.bos_token_id and starts[-1] < first_image
            assert all(b - a == n + 2 for a, b in zip(starts, starts[1:]))
