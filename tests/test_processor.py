"""TheWorldProcessor: text layout, token types, world pixels, image validation, loading safety.

Processors are built directly from the tiny Gemma 3 folder (no model classes involved).
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor, AutoTokenizer, Gemma3Processor

import theworld.processing_theworld as ptw
from theworld.processing_theworld import (
    DEFAULT_MAX_IMAGE_PIXELS,
    TheWorldProcessor,
    image_to_rgb,
    world_pixels_from_image,
    world_tokens_outside_window,
)

SEQ = 16  # SigLIP tokens per image in the tiny Gemma
N = 8  # world tokens per image in these tests
S = 64  # world image side


@pytest.fixture(scope="module")
def gemma_dir(tiny_bases):
    return tiny_bases.gemma


@pytest.fixture(scope="module")
def make(gemma_dir):
    """``make(**overrides)``: a fresh processor (own tokenizer, so added tokens never leak between tests)."""
    template = Path(gemma_dir, "chat_template.jinja").read_text()

    def build(**overrides):
        kwargs = dict(image_seq_length=SEQ, num_world_tokens=N, world_image_size=S, chat_template=template)
        kwargs.update(overrides)
        return TheWorldProcessor(
            AutoImageProcessor.from_pretrained(gemma_dir), AutoTokenizer.from_pretrained(gemma_dir), **kwargs
        )

    return build


@pytest.fixture(scope="module")
def proc(make):
    """Shared default processor (after_image, squash). Do not mutate."""
    return make()


def _image(width=80, height=64, colour=(255, 255, 255), seed=0):
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), colour)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, width - 8)), int(rng.integers(0, height - 8))
        draw.rectangle((x, y, x + 8, y + 8), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image


def _block(p: TheWorldProcessor) -> str:
    return p.start_of_world_token + p.world_token * p.num_world_tokens + p.end_of_world_token


def _image_seq(p: TheWorldProcessor, world: bool) -> str:
    return "\n\n" + p.boi_token + p.image_token * SEQ + p.eoi_token + (_block(p) if world else "") + "\n\n"


def _ids(p: TheWorldProcessor, text: str, **kwargs) -> list[int]:
    return p.tokenizer(text, **kwargs)["input_ids"]


def _conversation(image, question):
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": question}]}]


# ----------------------------------------------------------------------------------------------------------------------
# tokens
# ----------------------------------------------------------------------------------------------------------------------
def test_world_tokens_are_added_in_order_as_special_tokens(gemma_dir, make):
    before = len(AutoTokenizer.from_pretrained(gemma_dir))
    p = make()
    assert [p.start_of_world_token_id, p.end_of_world_token_id, p.world_token_id] == [before, before + 1, before + 2]
    assert len(p.tokenizer) == before + 3
    assert p.image_token_id == p.tokenizer.convert_tokens_to_ids("<image_soft_token>")
    assert p.boi_token_id == p.tokenizer.convert_tokens_to_ids("<start_of_image>")
    assert p.tokenizer.decode([p.start_of_world_token_id, p.world_token_id], skip_special_tokens=True) == ""
    # a tokenizer that already has them keeps its ids
    again = TheWorldProcessor(p.image_processor, p.tokenizer, image_seq_length=SEQ, num_world_tokens=N)
    assert len(again.tokenizer) == before + 3 and again.world_token_id == p.world_token_id


def test_init_arguments_are_validated(make):
    with pytest.raises(ValueError, match="world_placement must be one of"):
        make(world_placement="before_image")
    with pytest.raises(ValueError, match="world_resize_mode must be one of"):
        make(world_resize_mode="crop")
    with pytest.raises(ValueError, match=r"num_world_tokens must be an int >= 0"):
        make(num_world_tokens=-1)
    with pytest.raises(ValueError, match=r"max_image_pixels must be an int >= 1 or None"):
        make(max_image_pixels=0)
    with pytest.raises(ValueError, match="distinct non-empty strings"):
        make(world_token="<start_of_world>")


def test_model_input_names(proc):
    names = proc.model_input_names
    assert {"input_ids", "attention_mask", "pixel_values", "token_type_ids", "world_pixel_values"} <= set(names)
    assert "num_crops" not in names


# ----------------------------------------------------------------------------------------------------------------------
# layout
# ----------------------------------------------------------------------------------------------------------------------
def test_after_image_places_one_block_after_each_image(proc):
    a, b = _image(seed=1), _image(seed=2)
    out = proc(text=["A <start_of_image> B <start_of_image> C"], images=[[a, b]], return_tensors="pt")
    ids = out["input_ids"][0].tolist()
    seq = _image_seq(proc, world=True)
    assert ids == _ids(proc, f"A {seq} B {seq} C")
    # structurally: <end_of_image> is directly followed by the block, twice
    block = [proc.start_of_world_token_id] + [proc.world_token_id] * N + [proc.end_of_world_token_id]
    ends = [i for i, t in enumerate(ids) if t == proc.eoi_token_id]
    assert len(ends) == 2
    for end in ends:
        assert ids[end + 1 : end + 1 + len(block)] == block
    assert ids.count(proc.world_token_id) == 2 * N and ids.count(proc.image_token_id) == 2 * SEQ
    wpv = out["world_pixel_values"]
    assert wpv.shape == (2, 3, S, S) and wpv.dtype == torch.float32
    torch.testing.assert_close(wpv, proc.world_pixel_values([a, b]))


def test_after_bos_places_all_blocks_after_bos(make):
    p = make(world_placement="after_bos")
    a, b = _image(seed=3), _image(seed=4)
    seq = _image_seq(p, world=False)
    out = p(text=["<bos>Q <start_of_image> and <start_of_image>?"], images=[[a, b]], add_special_tokens=False)
    assert out["input_ids"][0] == _ids(p, f"<bos>{_block(p)}{_block(p)}Q {seq} and {seq}?", add_special_tokens=False)
    # text without <bos>: the blocks open the text, right after the <bos> the tokenizer adds
    out = p(text=["Q <start_of_image>"], images=[[a]])
    ids = out["input_ids"][0]
    assert ids[0] == p.tokenizer.bos_token_id and ids[1] == p.start_of_world_token_id
    assert ids[2 : 2 + N] == [p.world_token_id] * N and ids[2 + N] == p.end_of_world_token_id
    assert ids == _ids(p, f"{_block(p)}Q {seq}")


def test_explicit_markers_are_expanded_in_place(make):
    for placement in ("after_image", "after_bos"):
        p = make(world_placement=placement)
        a, b = _image(seed=5), _image(seed=6)
        text = "Look <start_of_image> then <start_of_world> and <start_of_image> <start_of_world> now"
        out = p(text=[text], images=[[a, b]], return_tensors="pt")
        seq = _image_seq(p, world=False)
        assert out["input_ids"][0].tolist() == _ids(p, f"Look {seq} then {_block(p)} and {seq} {_block(p)} now"), (
            placement
        )
        torch.testing.assert_close(out["world_pixel_values"], p.world_pixel_values([a, b]))


def test_world_marker_errors(make, proc):
    image = _image()
    with pytest.raises(ValueError, match=r"Prompt 0 holds 2 <start_of_world> markers for 1 images"):
        proc(text=["<start_of_world> <start_of_image> <start_of_world>"], images=[[image]])
    with pytest.raises(ValueError, match=r"Prompt 1 holds 1 <start_of_world> markers for 0 images"):
        proc(text=["<start_of_image>", "<start_of_world> text"], images=[[image], []])
    with pytest.raises(ValueError, match=r"already holds <world_soft_token>"):
        proc(text=["<start_of_world><world_soft_token><end_of_world> <start_of_image>"], images=[[image]])
    with pytest.raises(ValueError, match=r"num_world_tokens=0 \(the world is disabled\)"):
        make(num_world_tokens=0)(text=["<start_of_world> <start_of_image>"], images=[[image]])


def test_batch_with_several_images_and_a_text_only_prompt(proc):
    a, b, c = _image(seed=7), _image(96, 48, seed=8), _image(48, 100, seed=9)
    out = proc(
        text=["two <start_of_image> <start_of_image>", "text only, a bit longer than the others", "<start_of_image>"],
        images=[[a, b], [], [c]],
        return_tensors="pt",
        padding=True,
    )
    assert (out["input_ids"] == proc.world_token_id).sum(-1).tolist() == [2 * N, 0, N]
    assert (out["input_ids"] == proc.image_token_id).sum(-1).tolist() == [2 * SEQ, 0, SEQ]
    assert out["pixel_values"].shape == (3, 3, 64, 64)
    torch.testing.assert_close(out["world_pixel_values"], proc.world_pixel_values([a, b, c]))
    assert out["world_pixel_values"].shape == (3, 3, S, S)
    # rows really are the images, in batch order
    for row, image in zip(out["world_pixel_values"], (a, b, c)):
        torch.testing.assert_close(row, world_pixels_from_image(image, S))


def test_flat_image_list_is_split_by_markers(proc):
    a, b = _image(seed=10), _image(seed=11)
    flat = proc(text=["<start_of_image> x", "y <start_of_image>"], images=[a, b], padding=True, return_tensors="pt")
    nested = proc(
        text=["<start_of_image> x", "y <start_of_image>"], images=[[a], [b]], padding=True, return_tensors="pt"
    )
    for key in nested:
        assert torch.equal(flat[key], nested[key]), key
    with pytest.raises(ValueError, match=r"flat list of 3 images for 2 prompts holding \[1, 1\]"):
        proc(text=["<start_of_image> x", "y <start_of_image>"], images=[a, b, a])


def test_image_count_errors(proc):
    image = _image()
    with pytest.raises(
        ValueError, match=r"must equal the number of images given for it: found \[2\] markers and \[1\]"
    ):
        proc(text=["<start_of_image> <start_of_image>"], images=[[image]])
    with pytest.raises(ValueError, match=r"found \[0\] markers and \[1\] images"):
        proc(text=["no marker"], images=[[image]])
    with pytest.raises(ValueError, match=r"Found 1 <start_of_image> markers in the text but no images were passed"):
        proc(text=["<start_of_image>"])
    with pytest.raises(ValueError, match=r"Got 1 image lists for 2 prompts"):
        proc(text=["<start_of_image>", "<start_of_image>"], images=[[image]])
    with pytest.raises(TypeError, match="Invalid input text"):
        proc(text=[["pre", "tokenized"]], images=[[image]])
    with pytest.raises(TypeError, match="mixes single images and lists"):
        proc(text=["<start_of_image>", "<start_of_image>"], images=[[image], image])


def test_images_only_and_text_only_calls(proc):
    image = _image()
    out = proc(images=[image], return_tensors="pt")
    assert out["input_ids"][0].tolist() == _ids(proc, _image_seq(proc, world=True))
    assert out["world_pixel_values"].shape == (1, 3, S, S)
    text_only = proc(text="just text", return_tensors="pt")
    assert "world_pixel_values" not in text_only and "pixel_values" not in text_only
    assert text_only["token_type_ids"].tolist() == [[0] * text_only["input_ids"].shape[1]]


def test_token_type_ids(proc):
    image = _image()
    for extra in ({}, {"return_mm_token_type_ids": False}):
        out = proc(text=["<start_of_world> Q <start_of_image>"], images=[[image]], return_tensors="pt", **extra)
        ids, types = out["input_ids"], out["token_type_ids"]
        expected = torch.zeros_like(ids)
        expected[ids == proc.image_token_id] = 1
        expected[ids == proc.world_token_id] = 2
        assert torch.equal(types, expected)
        markers = (
            (ids == proc.start_of_world_token_id) | (ids == proc.end_of_world_token_id) | (ids == proc.boi_token_id)
        )
        assert (types[markers] == 0).all() and int(markers.sum()) == 3
        assert int((types == 1).sum()) == SEQ and int((types == 2).sum()) == N


def test_return_tensors(proc):
    image = _image()
    kwargs = dict(text=["<start_of_image> a", "<start_of_image> bb cc"], images=[[image], [image]], padding=True)
    pt, np_out, plain = proc(**kwargs, return_tensors="pt"), proc(**kwargs, return_tensors="np"), proc(**kwargs)
    assert isinstance(pt["world_pixel_values"], torch.Tensor)
    assert isinstance(np_out["world_pixel_values"], np.ndarray) and np_out["world_pixel_values"].dtype == np.float32
    assert isinstance(plain["world_pixel_values"], list) and len(plain["world_pixel_values"]) == 2
    assert plain["world_pixel_values"][0].shape == (3, S, S)
    np.testing.assert_array_equal(np_out["world_pixel_values"], pt["world_pixel_values"].numpy())
    np.testing.assert_array_equal(np.stack(plain["world_pixel_values"]), np_out["world_pixel_values"])
    assert isinstance(plain["input_ids"], list) and isinstance(np_out["input_ids"], np.ndarray)


def test_apply_chat_template_batch_left_padding(proc):
    a, b = _image(seed=12), _image(64, 72, seed=13)
    convs = [_conversation(a, "Is the red square left of the blue one?"), _conversation(b, "Describe.")]
    out = proc.apply_chat_template(
        convs, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )
    ids, mask = out["input_ids"], out["attention_mask"]
    assert proc.tokenizer.padding_side == "left"
    assert mask[1, 0] == 0 and mask[0].all()
    for row in range(2):
        first = int(mask[row].argmax())
        assert ids[row, first] == proc.tokenizer.bos_token_id
        assert (ids[row, :first] == proc.tokenizer.pad_token_id).all()
        row_ids = ids[row].tolist()
        end = row_ids.index(proc.eoi_token_id)
        assert row_ids[end + 1] == proc.start_of_world_token_id and row_ids[end + 2 + N] == proc.end_of_world_token_id
        assert row_ids.count(proc.world_token_id) == N
    torch.testing.assert_close(out["world_pixel_values"], proc.world_pixel_values([a, b]))
    assert out["pixel_values"].shape == (2, 3, 64, 64) and out["token_type_ids"].shape == ids.shape


# ----------------------------------------------------------------------------------------------------------------------
# num_world_tokens=0 is Gemma 3
# ----------------------------------------------------------------------------------------------------------------------
def test_without_world_tokens_output_equals_gemma3_processor(make, gemma_dir):
    ours, gemma = make(num_world_tokens=0), Gemma3Processor.from_pretrained(gemma_dir)
    a, b = _image(seed=14), _image(64, 100, seed=15)
    arr = np.asarray(_image(40, 30, seed=16))

    def same(x, y):
        assert set(x) == set(y), (set(x), set(y))
        for key in y:
            if isinstance(y[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]), err_msg=key)

    calls = [
        dict(
            text=["A <start_of_image> b", "text only and longer"], images=[[a], []], padding=True, return_tensors="pt"
        ),
        dict(text=["<start_of_image><start_of_image> two"], images=[[a, b]], return_tensors="pt"),
        dict(text=["<start_of_image> array"], images=[[arr]], return_tensors="np"),
        dict(text=["plain", "text"], padding=True, return_tensors="pt"),
        dict(images=[a], return_tensors="pt"),
        dict(text=["<start_of_image> lists"], images=[[b]]),
    ]
    for call in calls:
        same(ours(**call), gemma(**call))
    convs = [_conversation(a, "Left or right?"), _conversation(b, "Describe it.")]
    kw = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True)
    same(ours.apply_chat_template(convs, **kw), gemma.apply_chat_template(convs, **kw))


# ----------------------------------------------------------------------------------------------------------------------
# save / load
# ----------------------------------------------------------------------------------------------------------------------
SETTINGS = dict(
    image_seq_length=SEQ,
    num_world_tokens=5,
    world_image_size=32,
    world_placement="after_bos",
    world_resize_mode="letterbox",
    legacy_preprocessing=True,
    max_image_pixels=1_234_567,
    sliding_window=77,
    start_of_world_token="<sow>",
    end_of_world_token="<eow>",
    world_token="<wst>",
)


def test_save_load_round_trip_keeps_every_setting(make, tmp_path):
    p = make(**SETTINGS)
    p.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    loaded = TheWorldProcessor.from_pretrained(tmp_path)
    for key, value in SETTINGS.items():
        assert config[key] == value, key
        assert getattr(loaded, key) == value, key
    for key in ("boi_token", "eoi_token", "image_token"):
        assert getattr(loaded, key) == getattr(p, key)
    assert loaded.to_dict() == p.to_dict()
    assert loaded.chat_template == p.chat_template
    assert [loaded.start_of_world_token_id, loaded.end_of_world_token_id, loaded.world_token_id] == [
        p.start_of_world_token_id,
        p.end_of_world_token_id,
        p.world_token_id,
    ]
    image = _image(100, 50)
    kwargs = dict(text=["<start_of_image> q"], images=[[image]], return_tensors="pt")
    first, second = p(**kwargs), loaded(**kwargs)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert float(second["world_pixel_values"].max()) > 1.0  # legacy range survived
    # the sub-processors are what AutoTokenizer / AutoImageProcessor would load
    assert type(loaded.tokenizer) is type(AutoTokenizer.from_pretrained(tmp_path))
    assert type(loaded.image_processor) is type(AutoImageProcessor.from_pretrained(tmp_path))


def _plant_remote_code(folder: Path) -> Path:
    """Point every auto_map of the folder at a module that writes a marker file when imported."""
    marker = folder / "REMOTE_CODE_RAN"
    (folder / "planted.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast as PlantedTokenizer\n"
        "from transformers import BaseImageProcessor as PlantedImageProcessor\n"
    )
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["planted.PlantedTokenizer", "planted.PlantedTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    processor_config = json.loads((folder / "processor_config.json").read_text())
    image_config = dict(
        processor_config["image_processor"], auto_map={"AutoImageProcessor": "planted.PlantedImageProcessor"}
    )
    processor_config["image_processor"] = image_config
    (folder / "processor_config.json").write_text(json.dumps(processor_config))
    (folder / "preprocessor_config.json").write_text(json.dumps(image_config))
    (folder / "config.json").write_text(
        json.dumps({"model_type": "planted_model", "auto_map": {"AutoConfig": "planted.PlantedConfig"}})
    )
    return marker


def test_from_pretrained_never_runs_code_from_the_folder(make, tmp_path):
    folder = tmp_path / "proc"
    make().save_pretrained(folder)
    marker = _plant_remote_code(folder)
    for kwargs in ({}, {"trust_remote_code": True}, {"trust_remote_code": False}):
        loaded = TheWorldProcessor.from_pretrained(folder, **kwargs)
        assert not marker.exists(), kwargs
        assert type(loaded.tokenizer).__module__.startswith("transformers.models.gemma.")
        assert type(loaded.image_processor).__module__.startswith("transformers.models.gemma3.")
        assert loaded.num_world_tokens == N
    # a processor config naming another sub-processor (here an audio tokenizer) is refused, not loaded
    config = json.loads((folder / "processor_config.json").read_text())
    config["audio_tokenizer"] = {"audio_tokenizer_class": "AutoModel", "audio_tokenizer_name_or_path": str(folder)}
    (folder / "processor_config.json").write_text(json.dumps(config))
    for kwargs in ({}, {"trust_remote_code": True}):
        with pytest.raises(ValueError, match="has only a tokenizer and an image processor"):
            TheWorldProcessor.from_pretrained(folder, **kwargs)
        assert not marker.exists()


def test_from_gemma_reads_the_gemma_folder(gemma_dir, proc, tmp_path):
    p = TheWorldProcessor.from_gemma(gemma_dir, num_world_tokens=N, world_image_size=S)
    assert p.image_seq_length == SEQ  # from Gemma's processor_config.json
    assert p.chat_template == Path(gemma_dir, "chat_template.jinja").read_text()
    image = _image()
    kwargs = dict(text=["<start_of_image> q"], images=[[image]], return_tensors="pt")
    first, second = p(**kwargs), proc(**kwargs)
    for key in second:
        assert torch.equal(first[key], second[key]), key
    with pytest.raises(TypeError, match="Unexpected keyword argument"):
        TheWorldProcessor.from_gemma(gemma_dir, world_sise=64)
    # never runs code from the folder either
    folder = tmp_path / "gemma"
    shutil.copytree(gemma_dir, folder)
    (folder / "processor_config.json").write_text(
        json.dumps(
            {"image_seq_length": SEQ, "image_processor": json.loads((folder / "preprocessor_config.json").read_text())}
        )
    )
    marker = _plant_remote_code(folder)
    for extra in ({}, {"trust_remote_code": True}):
        loaded = TheWorldProcessor.from_gemma(folder, num_world_tokens=N, **extra)
        assert not marker.exists() and loaded.image_seq_length == SEQ


def test_from_pretrained_refuses_a_class_outside_transformers(make, tmp_path):
    make().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    config["image_processor"]["image_processor_type"] = "PlantedImageProcessor"
    (tmp_path / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="Unknown image processor class 'PlantedImageProcessor'"):
        TheWorldProcessor.from_pretrained(tmp_path, trust_remote_code=True)


# ----------------------------------------------------------------------------------------------------------------------
# image validation and conversion
# ----------------------------------------------------------------------------------------------------------------------
def _rgb(image) -> np.ndarray:
    return np.asarray(image_to_rgb(image))


def test_pil_modes_convert_with_their_meaning():
    grey = Image.new("L", (20, 16), 77)
    np.testing.assert_array_equal(_rgb(grey), np.full((16, 20, 3), 77, np.uint8))
    rgba = Image.new("RGBA", (20, 16), (255, 0, 0, 0))
    rgba.putpixel((1, 1), (10, 20, 30, 255))
    rgba.putpixel((2, 2), (0, 0, 0, 128))
    out = _rgb(rgba)
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 20, 30)
    assert tuple(out[2, 2]) == (127, 127, 127)  # half-transparent black over white
    assert tuple(_rgb(Image.new("LA", (16, 16), (0, 0)))[0, 0]) == (255, 255, 255)
    # premultiplied alpha: colour + (255 - alpha)
    premultiplied = Image.frombytes("RGBa", (16, 16), bytes([50, 0, 0, 128]) * 256)
    assert tuple(_rgb(premultiplied)[0, 0]) == (177, 127, 127)
    la = Image.frombytes("La", (16, 16), bytes([40, 200]) * 256)
    assert tuple(_rgb(la)[0, 0]) == (95, 95, 95)
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert tuple(_rgb(palette)[0, 0]) == (10, 200, 30)
    palette.info["transparency"] = 1
    assert tuple(_rgb(palette)[0, 0]) == (255, 255, 255)
    assert tuple(_rgb(Image.new("1", (16, 16), 1))[0, 0]) == (255, 255, 255)
    assert tuple(_rgb(Image.new("HSV", (16, 16), (0, 255, 255)))[0, 0]) == (255, 0, 0)
    assert tuple(_rgb(Image.new("CMYK", (16, 16), (0, 255, 255, 0)))[0, 0]) == (255, 0, 0)
    lab = _rgb(Image.new("LAB", (16, 16), (255, 128, 128)))[0, 0]
    assert (lab >= 250).all()
    assert tuple(_rgb(Image.new("RGBX", (16, 16), (1, 2, 3, 4)))[0, 0]) == (1, 2, 3)
    assert tuple(_rgb(Image.new("YCbCr", (16, 16), (255, 128, 128)))[0, 0]) == (255, 255, 255)


def test_deep_pil_modes_are_rescaled():
    sixteen = Image.fromarray(np.full((16, 16), 257 * 100, dtype=np.uint16))
    assert sixteen.mode.startswith("I;16") and tuple(_rgb(sixteen)[0, 0]) == (100, 100, 100)
    big_endian = Image.frombytes("I;16B", (16, 16), np.full((16, 16), 65535, dtype=">u2").tobytes())
    assert tuple(_rgb(big_endian)[0, 0]) == (255, 255, 255)
    eight_bit_data = Image.fromarray(np.full((16, 16), 200, dtype=np.int32))
    assert eight_bit_data.mode == "I" and tuple(_rgb(eight_bit_data)[0, 0]) == (200, 200, 200)
    sixteen_bit_data = np.full((16, 16), 1000, dtype=np.int32)
    sixteen_bit_data[0, 0] = 65535
    assert tuple(_rgb(Image.fromarray(sixteen_bit_data))[1, 1]) == (4, 4, 4)
    wide = np.full((16, 16), 2**31 - 1, dtype=np.int32)
    assert tuple(_rgb(Image.fromarray(wide))[0, 0]) == (255, 255, 255)
    with pytest.raises(ValueError, match="must not be negative"):
        image_to_rgb(Image.fromarray(np.full((16, 16), -5, dtype=np.int32)))
    floats = Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32))
    assert floats.mode == "F" and tuple(_rgb(floats)[0, 0]) == (128, 128, 128)  # 0.5 * 255 = 127.5 -> 128
    with pytest.raises(ValueError, match=r"Float image values must be finite and lie in \[0, 1\].*divide by 255"):
        image_to_rgb(Image.fromarray(np.full((16, 16), 200.0, dtype=np.float32)))
    with pytest.raises(ValueError, match=r"Float image values must be finite"):
        image_to_rgb(Image.fromarray(np.full((16, 16), np.nan, dtype=np.float32)))


LAYOUT_CASES = [
    # (shape, channel axis or None for grey, channels)
    ((20, 24), None, 1),
    ((20, 24, 1), 2, 1),
    ((20, 24, 3), 2, 3),
    ((20, 24, 4), 2, 4),
    ((1, 20, 24), 0, 1),
    ((3, 20, 24), 0, 3),
    ((4, 20, 24), 0, 4),
]


def _expected_rgb(hwc: np.ndarray) -> np.ndarray:
    """Manual conversion of an (H, W, C) uint8 array: grey -> 3 channels, RGBA -> composited on white."""
    if hwc.shape[-1] == 1:
        return np.repeat(hwc, 3, axis=-1)
    if hwc.shape[-1] == 4:
        alpha = hwc[..., 3:].astype(np.float64) / 255.0
        return np.rint(hwc[..., :3] * alpha + 255.0 * (1 - alpha)).astype(np.uint8)
    return hwc


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("shape,axis,channels", LAYOUT_CASES)
def test_array_and_tensor_layouts(shape, axis, channels, as_tensor):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, shape, dtype=np.uint8)
    if channels == 4:  # opaque or fully transparent alpha keeps the compositing exact
        alpha = np.where(rng.random((20, 24)) < 0.5, 0, 255).astype(np.uint8)
        if axis == 0:
            data[3] = alpha
        else:
            data[..., 3] = alpha
    hwc = data[..., None] if axis is None else np.moveaxis(data, axis, -1)
    image = torch.from_numpy(data) if as_tensor else data
    out = image_to_rgb(image)
    assert out.mode == "RGB" and out.size == (24, 20)
    np.testing.assert_array_equal(np.asarray(out), _expected_rgb(hwc))


def test_ambiguous_layouts_follow_the_documented_rule():
    # numpy: channel-last wins -> (H=3, W=32); tensors: channel-first wins -> (H=32, W=4)
    with pytest.raises(ValueError, match=r"Image of 32x3 px is too small"):
        image_to_rgb(np.zeros((3, 32, 4), np.uint8))
    with pytest.raises(ValueError, match=r"Image of 4x32 px is too small"):
        image_to_rgb(torch.zeros((3, 32, 4), dtype=torch.uint8))
    # channel-last tensors and channel-first arrays are read when the other end is not a channel count
    np.testing.assert_array_equal(
        _rgb(torch.full((20, 24, 3), 9, dtype=torch.uint8)), np.full((20, 24, 3), 9, np.uint8)
    )
    np.testing.assert_array_equal(_rgb(np.full((3, 20, 24), 9, np.uint8)), np.full((20, 24, 3), 9, np.uint8))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_dtype_rules(as_tensor):
    def conv(array):
        return image_to_rgb(torch.from_numpy(array) if as_tensor else array)

    for dtype in (np.int8, np.int16, np.int32, np.int64, np.uint16) + (() if as_tensor else (np.uint32, np.uint64)):
        array = np.full((16, 16, 3), 100, dtype=dtype)
        assert np.asarray(conv(array))[0, 0].tolist() == [100, 100, 100], dtype
    with pytest.raises(ValueError, match=r"Integer image values must lie in \[0, 255\].*\[0, 1000\]"):
        conv(np.linspace(0, 1000, 16 * 16 * 3).astype(np.int32).reshape(16, 16, 3))
    with pytest.raises(ValueError, match=r"Integer image values must lie in \[0, 255\].*\[-1, 0\]"):
        conv(np.full((16, 16), -1, dtype=np.int16) * np.eye(16, dtype=np.int16))
    for dtype in (np.float16, np.float32, np.float64):
        array = np.full((16, 16, 3), 0.2, dtype=dtype)
        assert np.asarray(conv(array))[0, 0].tolist() == [51, 51, 51], dtype
    with pytest.raises(ValueError, match=r"Float image values must be finite and lie in \[0, 1\].*divide by 255"):
        conv(np.full((16, 16, 3), 254.0, np.float32))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]; the .* has values in \[-0.5, 0.5\]\.$"):
        conv(np.linspace(-0.5, 0.5, 16 * 16 * 3, dtype=np.float32).reshape(16, 16, 3))
    with pytest.raises(ValueError, match=r"has values in \[0, 300\]\.$"):  # beyond 255: no divide hint
        conv(np.linspace(0, 300, 16 * 16, dtype=np.float32).reshape(16, 16))
    for bad in (np.nan, np.inf):
        array = np.zeros((16, 16), np.float32)
        array[3, 3] = bad
        with pytest.raises(ValueError, match="Float image values must be finite"):
            conv(array)
    with pytest.raises(
        ValueError, match=r"Unsupported image dtype (torch\.)?bool.*\(H, W\), \(H, W, C\) or \(C, H, W\)"
    ):
        conv(np.ones((16, 16, 3), dtype=bool))
    with pytest.raises(ValueError, match=r"Unsupported image dtype (torch\.)?complex"):
        conv(np.ones((16, 16, 3), dtype=np.complex64))


def test_bfloat16_tensor():
    out = image_to_rgb(torch.full((3, 16, 16), 0.5, dtype=torch.bfloat16))
    assert np.asarray(out)[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize(
    "shape", [(16, 16, 2), (2, 16, 16), (16, 16, 5), (1, 16, 16, 3), (2, 3, 16, 16), (16,), (), (16, 16, 3, 1)]
)
@pytest.mark.parametrize("as_tensor", [False, True])
def test_other_layouts_name_the_accepted_ones(shape, as_tensor):
    array = np.zeros(shape, np.uint8)
    with pytest.raises(ValueError, match=r"Unsupported image layout.*\(H, W\), \(H, W, C\) or \(C, H, W\) with C in"):
        image_to_rgb(torch.from_numpy(array) if as_tensor else array)


@pytest.mark.parametrize("value", ["photo.jpg", Path("photo.jpg"), b"\x89PNG", "https://x.org/a.png", 3, None, [1]])
def test_other_types_raise_type_error(value, proc):
    with pytest.raises(TypeError, match=r"Unsupported image type .*pass a PIL\.Image, a numpy array or a torch tensor"):
        image_to_rgb(value)
    if not isinstance(value, list):
        with pytest.raises(TypeError, match="Unsupported image type"):
            proc(text=["<start_of_image>"], images=[[value]])


def test_too_small_images(proc):
    for image in (Image.new("RGB", (15, 40)), np.zeros((40, 15, 3), np.uint8), torch.zeros(3, 15, 15)):
        with pytest.raises(ValueError, match=r"Image of \d+x\d+ px is too small: both sides must be at least 16 px"):
            image_to_rgb(image)
    with pytest.raises(ValueError, match="too small"):
        proc(text=["<start_of_image>"], images=[[Image.new("RGB", (8, 64))]])
    with pytest.raises(ValueError, match="too small"):
        proc.world_pixel_values([Image.new("RGB", (8, 64))])


def test_the_same_conversion_feeds_siglip_and_the_world(make, gemma_dir):
    """An RGBA image with a transparent half: both paths see it composited on white."""
    rgba = Image.new("RGBA", (64, 64), (200, 0, 0, 255))
    ImageDraw.Draw(rgba).rectangle((0, 0, 31, 63), fill=(0, 0, 255, 0))
    ours = make()(text=["<start_of_image>"], images=[[rgba]], return_tensors="pt")
    composited = image_to_rgb(rgba)
    assert composited.getpixel((0, 0)) == (255, 255, 255)
    gemma = Gemma3Processor.from_pretrained(gemma_dir)(
        text=["<start_of_image>"], images=[[composited]], return_tensors="pt"
    )
    torch.testing.assert_close(ours["pixel_values"], gemma["pixel_values"])
    torch.testing.assert_close(ours["world_pixel_values"][0], world_pixels_from_image(composited, S))
    assert float(ours["world_pixel_values"][0, :, 10, 5].min()) == 1.0  # white, not blue


# ----------------------------------------------------------------------------------------------------------------------
# pixel cap
# ----------------------------------------------------------------------------------------------------------------------
def test_pixel_cap_message_and_override(make):
    assert DEFAULT_MAX_IMAGE_PIXELS == 64_000_000
    p = make(max_image_pixels=50 * 50)
    image = Image.new("RGB", (60, 50))
    pattern = r"Image of 60x50 = 3,000 px exceeds max_image_pixels \(2,500 px\).*processor\.max_image_pixels = 3000"
    with pytest.raises(ValueError, match=pattern):
        p(text=["<start_of_image>"], images=[[image]])
    with pytest.raises(ValueError, match="exceeds max_image_pixels"):
        p.world_pixel_values([np.zeros((50, 60, 3), np.uint8)])
    p.max_image_pixels = 3000
    out = p(text=["<start_of_image>"], images=[[image]], return_tensors="pt")
    assert out["world_pixel_values"].shape == (1, 3, S, S)
    p.max_image_pixels = None
    assert image_to_rgb(image, None) is image


def _blank_png(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` 1-bit greyscale PNG written row-wise from one compressed stream (a few kB on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    rows = (b"\x00" + b"\x00" * ((side + 7) // 8)) * 1000
    data = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def test_huge_png_is_refused_before_decoding(tmp_path, proc):
    path = _blank_png(tmp_path / "huge.png", 12_000)
    assert path.stat().st_size < 100_000
    with pytest.warns(Image.DecompressionBombWarning):  # PIL's own warning at open (144 MP > 89.5 MP)
        image = Image.open(path)
    with image:
        with pytest.raises(ValueError, match=r"Image of 12000x12000 = 144,000,000 px exceeds max_image_pixels"):
            image_to_rgb(image, DEFAULT_MAX_IMAGE_PIXELS)
        with pytest.raises(ValueError, match="exceeds max_image_pixels"):
            proc(text=["<start_of_image>"], images=[[image]])
        assert image.tile, "the pixels must not have been decoded"

    # peak memory of the refusal: a decode alone would take 144 MB (1 byte per pixel), RGB 432 MB; 1 GB is the bound
    growth_kib, message = _peak_growth_kib(path)
    assert "exceeds max_image_pixels" in message
    assert growth_kib < 100 * 1024, growth_kib


def _peak_growth_kib(path: Path) -> tuple[int, str]:
    """Peak RSS growth (KiB) of opening ``path`` and calling `image_to_rgb` on it, and the error message.

    On Linux the peak (VmHWM) is reset through /proc/self/clear_refs and measured in this process; elsewhere a fresh
    process measures it with ``resource.getrusage`` (slower: it imports torch and transformers)."""

    def peak_kib():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))

    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        before = peak_kib()
    except OSError:
        before = None
    if before is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image, pytest.raises(ValueError) as error:
            image_to_rgb(image)
        return peak_kib() - before, str(error.value)
    script = textwrap.dedent(
        f"""
        import importlib.util, json, resource, sys, warnings
        spec = importlib.util.spec_from_file_location("processing_theworld", {str(Path(ptw.__file__))!r})
        mod = importlib.util.module_from_spec(spec)
        sys.modules["processing_theworld"] = mod
        spec.loader.exec_module(mod)
        from PIL import Image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            mod.image_to_rgb(Image.open({str(path)!r}))
            message = ""
        except ValueError as error:
            message = str(error)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps([after - before, message]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    growth, message = json.loads(result.stdout.strip().splitlines()[-1])
    return growth, message


def test_pil_decompression_bomb_becomes_the_same_value_error(monkeypatch):
    image = Image.new("RGB", (200, 100), (1, 2, 3))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # the crop box (10,000 px) is over twice PIL's limit
    with pytest.raises(ValueError, match=r"exceeds max_image_pixels.*PIL: "):
        world_pixels_from_image(image, 32, "center_crop")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # over the limit, under twice it: PIL only warns
    with pytest.raises(ValueError, match=r"exceeds max_image_pixels.*PIL: "):
        world_pixels_from_image(image, 32, "center_crop")


def test_undecodable_file_is_a_value_error(tmp_path):
    path = tmp_path / "cut.png"
    buffer = tmp_path / "full.png"
    _image(64, 64).save(buffer)
    path.write_bytes(buffer.read_bytes()[:200])
    with Image.open(path) as image, pytest.raises(ValueError, match="Could not decode image of 64x64 px"):
        image_to_rgb(image)


# ----------------------------------------------------------------------------------------------------------------------
# world pixels: resize modes and range
# ----------------------------------------------------------------------------------------------------------------------
def _to_unit(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


def test_resize_modes_match_a_manual_computation():
    wide, tall = _image(96, 48, seed=20), _image(30, 90, seed=21)
    # squash: the whole picture, resized
    torch.testing.assert_close(world_pixels_from_image(wide, 64), _to_unit(wide.resize((64, 64), Image.BICUBIC)))
    # center_crop: the centred square
    torch.testing.assert_close(
        world_pixels_from_image(wide, 64, "center_crop"),
        _to_unit(wide.crop((24, 0, 72, 48)).resize((64, 64), Image.BICUBIC)),
    )
    torch.testing.assert_close(world_pixels_from_image(tall, 30, "center_crop"), _to_unit(tall.crop((0, 30, 30, 60))))
    # letterbox: long side to S, centred on black
    canvas = Image.new("RGB", (64, 64), (0, 0, 0))
    canvas.paste(wide.resize((64, 32), Image.BICUBIC), (0, 16))
    torch.testing.assert_close(world_pixels_from_image(wide, 64, "letterbox"), _to_unit(canvas))
    canvas = Image.new("RGB", (64, 64), (0, 0, 0))
    canvas.paste(tall.resize((21, 64), Image.BICUBIC), (21, 0))  # 30 * 64 / 90 = 21.3 -> 21
    letterboxed = world_pixels_from_image(tall, 64, "letterbox")
    torch.testing.assert_close(letterboxed, _to_unit(canvas))
    assert (letterboxed[:, :, :21] == -1).all() and (letterboxed[:, :, 42:] == -1).all()
    # same size: no resampling at all
    square = _image(64, 64, seed=22)
    for mode in ("squash", "letterbox", "center_crop"):
        torch.testing.assert_close(world_pixels_from_image(square, 64, mode), _to_unit(square))


def test_resize_mode_of_the_processor(make):
    wide = _image(96, 48, seed=23)
    for mode in ("squash", "letterbox", "center_crop"):
        out = make(world_resize_mode=mode)(text=["<start_of_image>"], images=[[wide]], return_tensors="pt")
        torch.testing.assert_close(out["world_pixel_values"][0], world_pixels_from_image(wide, S, mode))


def test_default_mode_keeps_the_left_edge(proc):
    """Acceptance: a 256x64 white image with a red bar in its leftmost 16 columns keeps red in the leftmost tenth."""
    image = Image.new("RGB", (256, 64), (255, 255, 255))
    ImageDraw.Draw(image).rectangle((0, 0, 15, 63), fill=(255, 0, 0))
    pixels = proc(text=["<start_of_image>"], images=[[image]], return_tensors="pt")["world_pixel_values"][0]
    tenth = pixels[:, :, : S // 10]  # (3, S, 6)
    red = (tenth[0] > 0.9) & (tenth[1] < -0.9) & (tenth[2] < -0.9)
    assert red[:, :3].all(), "the leftmost columns must be red in every row"
    # and center_crop (0.1.0) loses it
    cropped = world_pixels_from_image(image, S, "center_crop")
    assert not ((cropped[0] > 0.9) & (cropped[1] < -0.9)).any()


def test_value_ranges_and_legacy(make):
    image = _image(100, 70, seed=24)
    normal = make()(text=["<start_of_image>"], images=[[image]], return_tensors="pt")["world_pixel_values"]
    legacy = make(legacy_preprocessing=True)(text=["<start_of_image>"], images=[[image]], return_tensors="pt")
    legacy = legacy["world_pixel_values"]
    assert normal.dtype == legacy.dtype == torch.float32
    assert float(normal.min()) >= -1.0 and float(normal.max()) == 1.0  # white background reaches +1
    assert float(legacy.min()) >= 0.0 and float(legacy.max()) == 255.0
    torch.testing.assert_close(legacy, (normal + 1.0) * 127.5, atol=1e-4, rtol=0)
    torch.testing.assert_close(legacy[0], world_pixels_from_image(image, S, legacy=True))
    torch.testing.assert_close(
        legacy[0], torch.from_numpy(np.asarray(image.resize((S, S), Image.BICUBIC), np.float32)).permute(2, 0, 1)
    )


def test_world_pixel_values_method(proc):
    images = [_image(seed=25), np.asarray(_image(50, 40, seed=26)), torch.rand(3, 40, 50)]
    out = proc.world_pixel_values(images)
    assert out.shape == (3, 3, S, S) and out.dtype == torch.float32
    torch.testing.assert_close(out[1], world_pixels_from_image(image_to_rgb(images[1]), S))
    torch.testing.assert_close(proc.preprocess_world_images(images), out)
    torch.testing.assert_close(proc.world_pixel_values(images[0]), out[:1])
    with pytest.raises(ValueError, match="non-empty list"):
        proc.world_pixel_values([])


# ----------------------------------------------------------------------------------------------------------------------
# sliding window and truncation
# ----------------------------------------------------------------------------------------------------------------------
def test_world_tokens_outside_window_helper():
    w = 7
    assert world_tokens_outside_window([w, 1, 1, w, 1], w, 2) == 1
    assert world_tokens_outside_window([w, 1, 1, w, 1], w, 5) == 0
    assert world_tokens_outside_window(torch.tensor([w, w, 1]), w, 1) == 2
    # padding is dropped first (left and right)
    assert world_tokens_outside_window([0, 0, w, 1, w], w, 2, attention_mask_row=[0, 0, 1, 1, 1]) == 1
    assert world_tokens_outside_window([w, 1, w, 0, 0], w, 2, attention_mask_row=np.array([1, 1, 1, 0, 0])) == 1
    assert world_tokens_outside_window([], w, 2) == 0


def test_sliding_window_warning_once_with_the_count(make, caplog):
    window = 30
    p = make(world_placement="after_bos", sliding_window=window)
    text = ["<start_of_image> " + "word " * 20, "short <start_of_image>"]
    images = [[_image(seed=27)], [_image(seed=28)]]
    with caplog.at_level(logging.WARNING, logger=ptw.__name__):
        out = p(text=text, images=images, padding=True, return_tensors="pt")
        p(text=text, images=images, padding=True, return_tensors="pt")
    expected = 0
    for row, mask in zip(out["input_ids"].tolist(), out["attention_mask"].tolist()):
        real = [t for t, m in zip(row, mask) if m]
        expected += sum(1 for pos, t in enumerate(real) if t == p.world_token_id and len(real) - 1 - pos >= window)
    assert 0 < expected <= 2 * N
    records = [r for r in caplog.records if r.name == ptw.__name__]
    assert len(records) == 1, "one warning per processor instance"
    message = records[0].getMessage()
    assert f"{expected} of {2 * N} world tokens" in message
    assert "world_pooling" in message and "world_image_size" in message and "world_placement" in message
    # within the window (after_image, short prompt) or without a window: silent
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ptw.__name__):
        make(sliding_window=window)(text=["<start_of_image> hi"], images=[[_image()]])
        make()(text=text, images=images, padding=True)
    assert not [r for r in caplog.records if r.name == ptw.__name__]


def test_truncation_that_cuts_a_world_block_is_an_error(proc):
    image = _image()
    full = proc(text=["<start_of_image> and a question"], images=[[image]])["input_ids"][0]
    cut = full.index(proc.world_token_id) + 2  # keeps every image token, only 2 of the world tokens
    with pytest.raises(ValueError, match=r"world placeholder count.*disable truncation or raise max_length"):
        proc(text=["<start_of_image> and a question"], images=[[image]], truncation=True, max_length=cut)
    with pytest.raises(ValueError, match=r"image placeholder count.*disable truncation or raise max_length"):
        proc(text=["<start_of_image> and a question"], images=[[image]], truncation=True, max_length=8)
    # enough room: fine
    out = proc(text=["<start_of_image> and a question"], images=[[image]], truncation=True, max_length=len(full))
    assert out["input_ids"][0] == full


def test_shipped_file_is_flat():
    """The remote-code file imports only torch, numpy, PIL, transformers and the standard library, no Gemma 3 code."""
    source = Path(ptw.__file__).read_text()
    imported = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imported <= {"logging", "numbers", "re", "warnings", "numpy", "torch", "PIL", "transformers"}, imported
    assert "models.gemma3" not in source and "Gemma3Processor" not in source
    assert "print(" not in source and "\n    assert " not in source
