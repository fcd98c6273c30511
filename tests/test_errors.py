"""Bad input gets a clear error that names the problem (issue 2, point 9); convertible image modes are converted."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import conversations
from PIL import Image
from transformers import AutoModel

from theworld import TheWorld
from theworld.processing_theworld import image_to_rgb


def _strip_world(model, inputs):
    """``inputs`` with the world block removed from every row (all rows lose the same number of tokens)."""
    n = model.config.num_world_tokens
    keep = []
    for row in inputs["input_ids"].tolist():
        start = row.index(model.config.start_of_world_token_id)
        keep.append(torch.tensor(list(range(start)) + list(range(start + n + 2, len(row)))))
    return {
        k: torch.stack([inputs[k][r, keep[r]] for r in range(len(keep))])
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }


# ----------------------------------------------------------------------------------------------------------------------
# counts
# ----------------------------------------------------------------------------------------------------------------------
def test_processor_image_count_differs_from_prompts(world_model, sample_images):
    with pytest.raises(
        ValueError, match=r"Got 1 image lists for 2 prompts; pass exactly one list of images per prompt"
    ):
        world_model.processor(
            text=["<start_of_image> a", "<start_of_image> b"],
            images=[[sample_images[0]]],
            return_tensors="pt",
            padding=True,
        )


def test_forward_legacy_image_count_differs_from_prompts(world_model, batch_inputs, sample_images):
    stripped = _strip_world(world_model, batch_inputs)
    with pytest.raises(ValueError, match=r"Got 1 images for 2 prompts; pass exactly one image per prompt"):
        world_model(**stripped, pixel_values=batch_inputs["pixel_values"], images=[sample_images[0]])
    with pytest.raises(ValueError, match=r"Got 3 images for 2 prompts"):
        world_model.generate(
            **stripped, pixel_values=batch_inputs["pixel_values"], images=[sample_images[0]] * 3, max_new_tokens=1
        )


def test_world_pixel_values_count_differs_from_world_blocks(world_model, batch_inputs):
    with pytest.raises(
        ValueError, match=r"input_ids hold 2 world block\(s\) but 1 world input\(s\) .* pass exactly one per world block"
    ):
        world_model(**{**batch_inputs, "world_pixel_values": batch_inputs["world_pixel_values"][:1]})


def test_missing_world_pixel_values(world_model, batch_inputs):
    inputs = {k: v for k, v in batch_inputs.items() if k != "world_pixel_values"}
    with pytest.raises(ValueError, match=r"input_ids hold 2 world block\(s\) but no world_pixel_values"):
        world_model(**inputs)
    with pytest.raises(ValueError, match=r"no world_pixel_values"):
        world_model.generate(**inputs, max_new_tokens=1)


def test_world_placeholder_count_differs_from_n(world_model, batch_inputs):
    ids = batch_inputs["input_ids"]
    n = world_model.config.num_world_tokens
    # truncated: drop one placeholder of row 0 (and the first pad column of row 1, keeping the batch rectangular)
    at = ids[0].tolist().index(world_model.config.world_token_id)
    row0 = torch.cat([ids[0, :at], ids[0, at + 1 :]])
    row1 = ids[1, 1:]
    assert batch_inputs["attention_mask"][1, 0] == 0  # row 1 is the shorter, left-padded prompt
    truncated = {
        "input_ids": torch.stack([row0, row1]),
        "attention_mask": batch_inputs["attention_mask"][:, 1:],
        "token_type_ids": batch_inputs["token_type_ids"][:, 1:],
        "pixel_values": batch_inputs["pixel_values"],
        "world_pixel_values": batch_inputs["world_pixel_values"],
    }
    with pytest.raises(
        ValueError, match=rf"Rows \[0\] hold \[{n - 1}\] <world_soft_token> placeholders .* exactly {n} placeholders"
    ):
        world_model(**truncated)
    # an edited block: the end marker overwritten
    edited = ids.clone()
    edited[edited == world_model.config.end_of_world_token_id] = world_model.config.world_token_id
    with pytest.raises(
        ValueError, match=rf"Rows \[0, 1\] hold \[{n + 1}, {n + 1}\] <world_soft_token> placeholders with \[1, 1\] "
        r"<start_of_world> and \[0, 0\] <end_of_world> markers"
    ):
        world_model(**{**batch_inputs, "input_ids": edited})
    # a block without its start marker
    no_marker = ids.clone()
    no_marker[no_marker == world_model.config.start_of_world_token_id] = 0
    with pytest.raises(ValueError, match=r"with \[0, 0\] <start_of_world> and \[1, 1\] <end_of_world> markers; every "
                       r"world block is one start marker"):
        world_model(**{**batch_inputs, "input_ids": no_marker})


def test_processor_refuses_two_world_markers(world_model, sample_images):
    with pytest.raises(ValueError, match=r"holds 2 <start_of_world> markers"):
        world_model.processor(
            text=["<start_of_world> a <start_of_world> <start_of_image>"],
            images=[[sample_images[0]]],
            return_tensors="pt",
        )


def test_processor_truncation_is_refused(world_model, sample_images):
    with pytest.raises(ValueError, match=r"truncation"):
        world_model.processor(
            text=["<start_of_image> hello"],
            images=[[sample_images[0]]],
            return_tensors="pt",
            truncation=True,
            max_length=40,
        )


# ----------------------------------------------------------------------------------------------------------------------
# images: types, modes, sizes, NaN
# ----------------------------------------------------------------------------------------------------------------------
def _mode_image(mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.full((20, 24), 65535, dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(np.arange(20 * 24, dtype=np.int32).reshape(20, 24))
    if mode == "F":
        return Image.fromarray(np.linspace(0, 1, 20 * 24, dtype=np.float32).reshape(20, 24))
    if mode == "P":
        im = Image.new("P", (24, 20), 1)
        im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
        return im
    return Image.new(mode, (24, 20))


CONVERTED_MODES = "L LA La RGBA RGBa P PA I;16 I;16B I;16L I F 1 CMYK YCbCr HSV LAB RGBX".split()


@pytest.mark.parametrize("mode", CONVERTED_MODES)
def test_image_modes_are_converted_to_rgb(mode):
    image = _mode_image(mode)
    rgb = image_to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (24, 20)


def test_image_mode_conversions_keep_meaning():
    assert image_to_rgb(Image.new("L", (16, 16), 128)).getpixel((0, 0)) == (128, 128, 128)
    # transparent pixels are composited on white, opaque ones keep their colour
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (10, 20, 30, 255))
    out = image_to_rgb(rgba)
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (10, 20, 30)
    # 16-bit greyscale is rescaled to 8 bits (not clipped to white)
    half = Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16))
    assert half.mode == "I;16" and image_to_rgb(half).getpixel((0, 0)) == (128, 128, 128)
    big_endian = Image.frombytes("I;16B", (16, 16), np.full((16, 16), 32768, dtype=">u2").tobytes())
    assert image_to_rgb(big_endian).getpixel((0, 0)) == (128, 128, 128)
    # 32-bit int images holding 8-bit or 16-bit data keep their scale (no auto-stretch of a dark image)
    assert image_to_rgb(Image.new("L", (16, 16), 100).convert("I")).getpixel((0, 0)) == (100, 100, 100)
    assert image_to_rgb(half.convert("I")).getpixel((0, 0)) == (128, 128, 128)
    assert image_to_rgb(_mode_image("I;16")).getpixel((0, 0)) == (255, 255, 255)
    assert image_to_rgb(Image.new("CMYK", (16, 16), (0, 0, 0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert image_to_rgb(_mode_image("P")).getpixel((0, 0)) == (10, 200, 30)
    pa = Image.new("P", (16, 16), 0)
    pa.putpalette([0, 0, 0] * 256)
    pa.info["transparency"] = 0
    assert image_to_rgb(pa).getpixel((0, 0)) == (255, 255, 255)


def test_converted_modes_work_through_the_processor_and_model(world_model):
    images = [_mode_image("I;16").resize((64, 64)), Image.new("CMYK", (70, 64), (0, 255, 0, 0))]
    inputs = world_model.processor.apply_chat_template(
        conversations(images, ["a", "b"]),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
    )
    assert inputs["world_pixel_values"].shape == (2, 3, 64, 64)
    torch.testing.assert_close(inputs["world_pixel_values"][0], torch.ones(3, 64, 64))  # white
    with torch.no_grad():
        assert torch.isfinite(world_model(**inputs).logits).all()


def test_premultiplied_alpha_is_composited_on_white():
    premultiplied = Image.new("La", (16, 16), (0, 0))  # fully transparent
    assert image_to_rgb(premultiplied).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("bad", [123, "photo.jpg", b"bytes", None])
def test_unsupported_image_types(bad):
    with pytest.raises(TypeError, match=r"Unsupported image type .*pass a PIL.Image, a numpy array or a torch tensor"):
        image_to_rgb(bad)


def test_unsupported_image_types_through_processor_and_forward(world_model, batch_inputs):
    with pytest.raises(TypeError, match=r"Unsupported image type str; pass a PIL.Image.*use PIL.Image.open"):
        world_model.processor(text=["<start_of_image> x"], images=[["photo.jpg"]], return_tensors="pt")
    with pytest.raises(TypeError, match=r"Unsupported image type int"):
        world_model.processor.apply_chat_template(
            conversations([7], ["x"]), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
    stripped = _strip_world(world_model, batch_inputs)
    with pytest.raises(TypeError, match=r"Unsupported image type str"):
        world_model(**stripped, pixel_values=batch_inputs["pixel_values"], images=["a.png", "b.png"])


def test_bad_array_and_tensor_shapes():
    with pytest.raises(
        ValueError, match=r"Unsupported image layout: tensor of shape \(5, 20, 20\).*\(C, H, W\) with C in \{1, 3, 4\}"
    ):
        image_to_rgb(torch.zeros(5, 20, 20))
    with pytest.raises(ValueError, match=r"Unsupported image layout: array of shape \(20, 20, 2\)"):
        image_to_rgb(np.zeros((20, 20, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"tensor of shape \(1, 3, 20, 20\).*A batch is a list of images"):
        image_to_rgb(torch.zeros(1, 3, 20, 20))
    with pytest.raises(ValueError, match=r"Integer image values must lie in \[0, 255\].*values in \[300, 300\]"):
        image_to_rgb(np.full((20, 20, 3), 300, dtype=np.int64))
    # the supported array and tensor forms work
    assert image_to_rgb(np.zeros((20, 20, 3), dtype=np.uint8)).mode == "RGB"
    assert image_to_rgb(np.zeros((20, 20, 3), dtype=np.int64)).mode == "RGB"
    assert image_to_rgb(torch.zeros(4, 20, 20)).mode == "RGB"  # RGBA, channels first
    assert image_to_rgb(torch.rand(3, 20, 20)).size == (20, 20)
    assert image_to_rgb(torch.full((3, 20, 20), 255, dtype=torch.uint8)).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("size", [(15, 40), (40, 15), (1, 1)])
def test_images_under_16_px(size, world_model):
    with pytest.raises(
        ValueError, match=rf"Image of {size[0]}x{size[1]} px is too small: both sides must be at least 16"
    ):
        image_to_rgb(Image.new("RGB", size))
    with pytest.raises(ValueError, match=r"too small"):
        world_model.processor.apply_chat_template(
            conversations([Image.new("RGB", size)], ["x"]),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
    assert image_to_rgb(Image.new("RGB", (16, 16))).size == (16, 16)


def test_nan_pixels_are_refused():
    tensor = torch.rand(3, 20, 24)
    tensor[1, 2, 3] = float("nan")
    # the shape as passed (channel-first), not after the move to channel-last
    with pytest.raises(ValueError, match=r"Float image values must be finite .* tensor of shape \(3, 20, 24\) holds NaN"):
        image_to_rgb(tensor)
    array = np.random.rand(20, 20, 3)
    array[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"Float image values must be finite .* array of shape \(20, 20, 3\) holds NaN"):
        image_to_rgb(array)
    grey = np.zeros((20, 20), dtype=np.float32)
    grey[5, 5] = np.nan
    with pytest.raises(ValueError, match=r"Float image values must be finite and lie in \[0, 1\]; the 'F' image holds NaN"):
        image_to_rgb(Image.fromarray(grey, mode="F"))


def test_world_pixel_values_nan_range_and_shape(world_model, batch_inputs):
    wpv = batch_inputs["world_pixel_values"]
    nan = wpv.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"world_pixel_values contain NaN values"):
        world_model(**{**batch_inputs, "world_pixel_values": nan})
    raw = (wpv + 1) * 127.5  # the earlier code's bug: pixels in [0, 255]
    with pytest.raises(ValueError, match=r"world_pixel_values must lie in \[-1, 1\] \(got \[\d+, 255\]\)"):
        world_model(**{**batch_inputs, "world_pixel_values": raw})
    with pytest.raises(ValueError, match=r"world_pixel_values must have shape \(B, 3, 64, 64\), got \(2, 3, 32, 32\)"):
        world_model(**{**batch_inputs, "world_pixel_values": wpv[..., :32, :32]})


def test_world_disabled_model_has_no_encoder(world_model_factory):
    model = world_model_factory(enable_world=False)
    with pytest.raises(ValueError, match=r"enable_world=False; it has no world encoder"):
        model.encode_world(torch.zeros(1, 3, 64, 64))


def test_from_pretrained_unknown_argument(world_model_factory):
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'world_sise'"):
        world_model_factory(world_sise=64)


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("world_image_sise", "world_image_size"),
        ("freeze_gemma_langauge", "freeze_gemma_language"),
        ("allow_nonfinite_weights", "allow_non_finite_weights"),
    ],
)
def test_misspelt_load_argument_names_the_closest(world_model, tmp_path_factory, typo, meant):
    folder = tmp_path_factory.getbasetemp() / "misspelt_load_argument"
    if not folder.exists():
        world_model.save_pretrained(folder)
    message = rf"unexpected keyword argument '{typo}'; did you mean '{meant}'\?"
    with pytest.raises(TypeError, match=message):
        TheWorld.from_pretrained(folder, **{typo: True})
    with pytest.raises(TypeError, match=message):
        AutoModel.from_pretrained(folder, **{typo: True})
