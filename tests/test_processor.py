"""TheWorldProcessor: the world-token pattern, world pixels and the aspect policy (issue 2, points 5 and 6)."""

from __future__ import annotations

import json

import numpy as np
import torch
from conftest import conversations
from PIL import Image, ImageDraw
from transformers import AutoProcessor

from theworld.processing_theworld import TheWorldProcessor


def _world_block(processor: TheWorldProcessor) -> list[int]:
    n = processor.num_world_tokens
    return [processor.start_of_world_token_id] + [processor.world_token_id] * n + [processor.end_of_world_token_id]


def test_chat_template_batch_expands_world_block_after_bos(world_model, batch_inputs):
    processor = world_model.processor
    tok = processor.tokenizer
    ids, mask = batch_inputs["input_ids"], batch_inputs["attention_mask"]
    n = world_model.config.num_world_tokens
    assert n == 64 and processor.num_world_tokens == n
    assert ids.shape[0] == 2 and tok.padding_side == "left"
    assert mask[1, 0] == 0, "the shorter prompt must be left-padded"
    for row in range(2):
        first = int(mask[row].argmax())
        assert (mask[row, :first] == 0).all() and (mask[row, first:] == 1).all()
        assert (ids[row, :first] == tok.pad_token_id).all()
        assert ids[row, first] == tok.bos_token_id
        block = _world_block(processor)
        assert ids[row, first + 1 : first + 1 + len(block)].tolist() == block
        # exactly one block per sample, nothing else uses the world ids
        assert int((ids[row] == processor.world_token_id).sum()) == n
        assert int((ids[row] == processor.start_of_world_token_id).sum()) == 1
        assert int((ids[row] == processor.end_of_world_token_id).sum()) == 1
        # Gemma's own image block still follows, with its 16 SigLIP placeholders
        assert int((ids[row] == world_model.config.image_token_id).sum()) == world_model.config.mm_tokens_per_image
    assert batch_inputs["pixel_values"].shape == (2, 3, 64, 64)
    wpv = batch_inputs["world_pixel_values"]
    assert wpv.shape == (2, 3, 64, 64) and wpv.dtype == torch.float32
    assert float(wpv.min()) >= -1.0 and float(wpv.max()) <= 1.0
    assert float(wpv.min()) == -1.0 or float(wpv.max()) == 1.0  # white background reaches +1: really [-1, 1]
    assert "world_pixel_values" in processor.model_input_names


def test_world_pixels_are_a_centre_crop_not_a_squash(world_model, sample_images):
    """80x64 image -> the centred 64x64 square, mapped to [-1, 1] (no resize needed at 64 px)."""
    processor = world_model.processor
    image = sample_images[0]
    out = processor.apply_chat_template(
        conversations([image], ["What is this?"]),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    manual = np.asarray(image.crop((8, 0, 72, 64)), dtype=np.float32) / 127.5 - 1.0
    torch.testing.assert_close(out["world_pixel_values"][0], torch.from_numpy(manual).permute(2, 0, 1))


def test_aspect_policy_crops_the_sides_and_resizes():
    """A 192x96 image with red/blue side strips and a green centre square: the world image is all green."""
    from theworld.processing_theworld import world_pixels_from_image

    image = Image.new("RGB", (192, 96), (0, 200, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 47, 95), fill=(255, 0, 0))
    draw.rectangle((144, 0, 191, 95), fill=(0, 0, 255))
    pixels = world_pixels_from_image(image, 64)
    assert pixels.shape == (3, 64, 64)
    expected = torch.tensor([0, 200, 0], dtype=torch.float32) / 127.5 - 1.0
    torch.testing.assert_close(pixels, expected.view(3, 1, 1).expand(3, 64, 64), atol=1e-6, rtol=0)
    # a tall image crops top and bottom
    tall = Image.new("RGB", (40, 120), (10, 20, 30))
    ImageDraw.Draw(tall).rectangle((0, 40, 39, 79), fill=(250, 250, 250))
    manual = np.asarray(tall.crop((0, 40, 40, 80)).resize((32, 32), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
    torch.testing.assert_close(world_pixels_from_image(tall, 32), torch.from_numpy(manual).permute(2, 0, 1))
    torch.testing.assert_close(world_pixels_from_image(tall, 32), torch.ones(3, 32, 32) * (250 / 127.5 - 1.0))


def test_processor_call_prepends_block_and_counts(world_model, sample_images):
    processor = world_model.processor
    tok = processor.tokenizer
    out = processor(
        text=["A <start_of_image> picture.", "Another <start_of_image> one, longer than the first."],
        images=[[sample_images[0]], [sample_images[1]]],
        return_tensors="pt",
        padding=True,
    )
    for row in range(2):
        first = int(out["attention_mask"][row].argmax())
        assert out["input_ids"][row, first] == tok.bos_token_id
        block = _world_block(processor)
        assert out["input_ids"][row, first + 1 : first + 1 + len(block)].tolist() == block
    assert out["world_pixel_values"].shape == (2, 3, 64, 64)
    torch.testing.assert_close(out["world_pixel_values"], processor.preprocess_world_images(sample_images))


def test_explicit_marker_is_expanded_in_place(world_model, sample_images):
    processor = world_model.processor
    out = processor(
        text=["Look at <start_of_world> and <start_of_image> then answer."],
        images=[[sample_images[0]]],
        return_tensors="pt",
    )
    ids = out["input_ids"][0].tolist()
    start = ids.index(processor.start_of_world_token_id)
    assert start > 2, "the block must stay where the caller put it, not move to right after <bos>"
    block = _world_block(processor)
    assert ids[start : start + len(block)] == block
    before = processor.tokenizer.decode(ids[:start])
    assert before.endswith("Look at "), before
    assert ids.count(processor.world_token_id) == processor.num_world_tokens
    # in a chat conversation too
    chat = processor.apply_chat_template(
        conversations([sample_images[0]], ["Question <start_of_world> here?"]),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    ids = chat["input_ids"][0].tolist()
    start = ids.index(processor.start_of_world_token_id)
    assert ids[start : start + len(block)] == block
    assert ids.index(world_model.config.boi_token_index) < start  # after the image, inside the user turn


def test_already_expanded_text_is_kept(world_model, sample_images):
    processor = world_model.processor
    n = processor.num_world_tokens
    text = "<start_of_world>" + "<world_soft_token>" * n + "<end_of_world> <start_of_image> hi"
    out = processor(text=[text], images=[[sample_images[0]]], return_tensors="pt")
    assert out["input_ids"][0].tolist().count(processor.world_token_id) == n


def test_mixed_batch_only_samples_with_images_get_a_world_block(world_model, sample_images):
    processor = world_model.processor
    out = processor(
        text=["Has <start_of_image> one.", "Text only."],
        images=[[sample_images[0]], []],
        return_tensors="pt",
        padding=True,
    )
    counts = (out["input_ids"] == processor.world_token_id).sum(-1).tolist()
    assert counts == [processor.num_world_tokens, 0]
    assert out["world_pixel_values"].shape == (1, 3, 64, 64)
    # and the model runs on it
    with torch.no_grad():
        logits = world_model(**out).logits
    assert logits.shape[:2] == out["input_ids"].shape and torch.isfinite(logits).all()


def test_text_only_batch_has_no_world(world_model):
    processor = world_model.processor
    out = processor(text=["Just text."], return_tensors="pt")
    assert "world_pixel_values" not in out
    assert (out["input_ids"] == processor.world_token_id).sum() == 0


def test_return_tensors_numpy(world_model, sample_images):
    out = world_model.processor(text=["<start_of_image> x"], images=[[sample_images[0]]], return_tensors="np")
    assert isinstance(out["world_pixel_values"], np.ndarray)
    assert out["world_pixel_values"].shape == (1, 3, 64, 64)


def test_vocabulary_matrix_is_not_resized(world_model, tiny_bases):
    gemma_cfg = json.loads(open(f"{tiny_bases.gemma}/config.json").read())
    vocab = gemma_cfg["text_config"]["vocab_size"]
    hidden = gemma_cfg["text_config"]["hidden_size"]
    assert world_model.model.language_model.embed_tokens.weight.shape == (vocab, hidden)
    assert world_model.lm_head.weight.shape == (vocab, hidden)
    assert world_model.config.text_config.vocab_size == vocab
    # the markers have their own small embedding instead of rows in the vocabulary matrix
    assert world_model.world_boundary_embeddings.weight.shape == (2, hidden)
    base_tok = AutoProcessor.from_pretrained(tiny_bases.gemma).tokenizer
    ids = world_model.processor
    assert {ids.start_of_world_token_id, ids.end_of_world_token_id, ids.world_token_id}.isdisjoint(
        set(base_tok.get_vocab().values())
    )


def test_world_disabled_processor_matches_gemma(world_model_factory, tiny_bases, sample_images):
    model = world_model_factory(enable_world=False)
    assert model.processor.num_world_tokens == 0
    gemma = AutoProcessor.from_pretrained(tiny_bases.gemma)
    convs = conversations(sample_images, ["Left or right?", "Describe it."])
    kw = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True)
    ours, theirs = model.processor.apply_chat_template(convs, **kw), gemma.apply_chat_template(convs, **kw)
    assert "world_pixel_values" not in ours
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
