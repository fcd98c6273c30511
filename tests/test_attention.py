"""World-token attention (issue 10, item 4): by default the world tokens of one block attend to each other
bidirectionally, the way Gemma 3 treats the tokens of one image; ``world_attention="causal"`` keeps them left to right.

Tested on the ``tiny-real`` bases, whose layers follow Gemma 3 4B's pattern (5 sliding-window layers, window 32, per
global layer) with prompts longer than the window, in eager attention with ``output_attentions=True``. World images of
64 px with pooling 2 give 16-token blocks, which fit inside the window.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

from theworld.modeling_theworld import attention_masks_with_blocks, block_sequence_ids_from_types

GLOBAL_LAYER = 5  # tiny-real: layers 0-4 slide over 32 tokens, layer 5 is global
STEPS = 5
GREEDY = dict(max_new_tokens=STEPS, do_sample=False, eos_token_id=None)


def _image(color, size=(64, 64)):
    im = Image.new("RGB", size, (245, 245, 245))
    ImageDraw.Draw(im).ellipse((6, 6, 40, 40), fill=color)
    return im


@pytest.fixture(scope="module")
def models(real_world_model_factory):
    """``{"bidirectional": model, "causal": model}``: the same weights, eager attention."""
    common = dict(world_image_size=64, world_pooling=2, attn_implementation="eager")
    return {mode: real_world_model_factory(world_attention=mode, **common) for mode in ("bidirectional", "causal")}


def _inputs(model, parts_per_prompt, padding=True):
    convs = [[{"role": "user", "content": parts}] for parts in parts_per_prompt]
    kw = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=padding)
    return model.processor.apply_chat_template(convs, **kw)


def _two_images_prompt():
    return [
        {"type": "image", "image": _image((200, 30, 30))},
        {"type": "text", "text": "and"},
        {"type": "image", "image": _image((30, 30, 200), (64, 48))},
        {"type": "text", "text": "Which one is red?"},
    ]


def _blocks(ids: torch.Tensor, token_id: int) -> list[list[int]]:
    """Positions of each maximal run of ``token_id`` in the 1-D ``ids``."""
    runs, current = [], []
    for i, t in enumerate(ids.tolist()):
        if t == token_id:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def _all_positive(weights: torch.Tensor, queries: list[int], keys: list[int]) -> bool:
    """Every head of ``weights`` ``(1, heads, L, L)`` gives every query in ``queries`` a non-zero weight on every key."""
    return bool((weights[0][:, queries][:, :, keys] > 0).all())


@pytest.fixture(scope="module")
def two_image_attentions(models):
    """Per mode: (input_ids row, world blocks, image blocks, attentions) of a prompt with two images."""
    out = {}
    for mode, model in models.items():
        inputs = _inputs(model, [_two_images_prompt()])
        ids = inputs["input_ids"][0]
        assert ids.shape[0] > model.config.text_config.sliding_window
        with torch.no_grad():
            attentions = model(**inputs, output_attentions=True).attentions
        assert len(attentions) == len(model.config.text_config.layer_types) == 6
        out[mode] = (
            ids,
            _blocks(ids, model.config.world_token_id),
            _blocks(ids, model.config.image_token_id),
            attentions,
        )
    return out


def test_world_block_is_bidirectional_by_default(models, two_image_attentions):
    assert models["bidirectional"].config.world_attention == "bidirectional"  # the default
    ids, worlds, images, attentions = two_image_attentions["bidirectional"]
    assert [len(b) for b in worlds] == [16, 16] and [len(b) for b in images] == [16, 16]
    for layer, weights in enumerate(attentions):
        for block in worlds:
            first, last = block[0], block[-1]
            # the first world token of the block reads the block's last world token, in every layer
            assert weights[0, :, first, last].min() > 0, layer
            # ...but nothing after the block (its end marker, the question)
            assert weights[0, :, first, last + 1 :].abs().max() == 0, layer
        for block in images:  # Gemma 3's image blocks are bidirectional as before
            assert weights[0, :, block[0], block[-1]].min() > 0, layer


def test_causal_world_attention_option(models, two_image_attentions):
    ids, worlds, images, attentions = two_image_attentions["causal"]
    for layer, weights in enumerate(attentions):
        for block in worlds:
            first, last = block[0], block[-1]
            assert weights[0, :, first, first + 1 : last + 1].abs().max() == 0, layer
            assert weights[0, :, last, first].min() > 0, layer  # causal: the last one still reads the first
        for block in images:
            assert weights[0, :, block[0], block[-1]].min() > 0, layer


def test_two_world_blocks_do_not_attend_into_each_others_future(two_image_attentions):
    ids, (world_a, world_b), (image_a, image_b), attentions = two_image_attentions["bidirectional"]
    for layer, weights in enumerate(attentions):
        # the first image's world block sees nothing of the second image (image or world block)
        assert weights[0, :, world_a[0] : world_a[-1] + 1, image_b[0] :].abs().max() == 0, layer
    # the global layer lets the second world block read the first one (the past), as any later token does
    assert _all_positive(attentions[GLOBAL_LAYER], world_b, world_a)
    # an image block and the world block that follows it stay two blocks: the image cannot read its world block
    for weights in attentions:
        assert weights[0, :, image_a[0] : image_a[-1] + 1, world_a[0] : world_a[-1] + 1].abs().max() == 0


def test_adjacent_image_and_world_runs_are_separate_blocks(models):
    """Token types 1 (image) and 2 (world) that touch still form two blocks, in the block ids and in the masks of
    both layer kinds."""
    types = torch.tensor([[0, 1, 1, 2, 2, 0, 2, 2, 0]])
    assert block_sequence_ids_from_types(types).tolist() == [[-1, 0, 0, 1, 1, -1, 2, 2, -1]]
    config = models["bidirectional"].config.get_text_config()
    embeds = torch.zeros(1, types.shape[1], config.hidden_size)
    masks = attention_masks_with_blocks(
        config, embeds, torch.ones_like(types), None, None, block_sequence_ids_from_types(types)
    )
    assert set(masks) == {"full_attention", "sliding_attention"}
    for kind, mask in masks.items():
        allowed = mask[0, 0] == 0 if mask.dtype.is_floating_point else mask[0, 0]
        expected = torch.ones(9, 9).tril().bool()
        expected[1:3, 1:3] = True  # the image block
        expected[3:5, 3:5] = True  # the world block right after it
        expected[6:8, 6:8] = True  # the next world block
        assert torch.equal(allowed, expected), kind


def test_block_masks_compose_with_the_window_exactly_as_gemma3(models):
    """Global layers: causal OR same block; sliding layers: window AND (causal OR same block), which bounds the past
    only, so the last token of a block longer than the window reads just the window while the first reads the whole
    block. Equal to Gemma 3's own mask builder, with left padding, for eager and SDPA masks."""
    from transformers.models.gemma3.modeling_gemma3 import create_masks_for_vision_model

    config = models["bidirectional"].config.get_text_config()
    window = config.sliding_window
    row = [0] + [1] * 4 + [0, 0] + [2] * (window + 8) + [0] * 3
    types = torch.tensor([[0, 0, 0] + row, row + [0, 0, 0]])
    attention_mask = torch.ones_like(types)
    attention_mask[0, :3] = 0  # left padding
    embeds = torch.zeros(*types.shape, config.hidden_size)
    blocks = block_sequence_ids_from_types(types)
    start = 7 + 3  # first world token of row 0
    for implementation in ("eager", "sdpa"):
        config._attn_implementation = implementation
        try:
            ours = attention_masks_with_blocks(config, embeds, attention_mask, None, None, blocks)
            gemma = create_masks_for_vision_model(config, embeds, attention_mask, None, None, block_sequence_ids=blocks)
        finally:
            config._attn_implementation = "eager"
        assert set(ours) == set(gemma) == {"full_attention", "sliding_attention"}
        for kind in ours:
            assert torch.equal(ours[kind], gemma[kind]), (implementation, kind)
        allowed = {k: (v == 0 if v.dtype.is_floating_point else v)[0, 0] for k, v in ours.items()}
        last = start + window + 7
        assert allowed["sliding_attention"][start, start : last + 1].all()  # the first token: the whole block
        assert allowed["sliding_attention"][last, last - window + 1 : last + 1].all()
        assert not allowed["sliding_attention"][last, : last - window + 1].any()  # the last: only the window
        assert (
            allowed["full_attention"][last, start : last + 1].all() and allowed["full_attention"][last, 3:start].all()
        )
        assert not allowed["full_attention"][start, last + 1 :].any()


def test_batched_left_padding_equals_each_prompt_alone(models):
    model = models["bidirectional"]
    prompts = [
        _two_images_prompt(),
        [{"type": "image", "image": _image((30, 160, 30))}, {"type": "text", "text": "Describe."}],
    ]
    batch = _inputs(model, prompts)
    assert batch["attention_mask"][1, 0] == 0  # the second prompt is left-padded
    kw = dict(GREEDY, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad():
        batched = model(**batch).logits
    batched_gen = model.generate(**batch, **kw)
    for row, prompt in enumerate(prompts):
        alone = _inputs(model, [prompt])
        mask = batch["attention_mask"][row].bool()
        assert torch.equal(batch["input_ids"][row][mask], alone["input_ids"][0])
        with torch.no_grad():
            single = model(**alone).logits[0]
        torch.testing.assert_close(batched[row][mask], single, rtol=1e-5, atol=1e-5)
        single_gen = model.generate(**alone, **kw)
        new = batched_gen.sequences[row, batch["input_ids"].shape[1] :]
        assert new.tolist() == single_gen.sequences[0, alone["input_ids"].shape[1] :].tolist(), row
        for step in range(STEPS):
            torch.testing.assert_close(batched_gen.logits[step][row], single_gen.logits[step][0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_static_cache_and_sdpa_agree_with_dynamic_eager(models, mode, real_world_model_factory):
    """On sliding-window layers with world blocks: static-cache generation (masks built by create_masks_for_generate)
    gives the dynamic cache's greedy tokens, and SDPA gives eager's logits."""
    model = models[mode]
    batch = _inputs(
        model,
        [_two_images_prompt(), [{"type": "image", "image": _image((30, 160, 30))}, {"type": "text", "text": "Hi"}]],
    )
    kw = dict(GREEDY, output_logits=True, return_dict_in_generate=True)
    dynamic = model.generate(**batch, **kw)
    static = model.generate(**batch, **kw, cache_implementation="static")
    assert torch.equal(static.sequences, dynamic.sequences)
    for a, b in zip(static.logits, dynamic.logits):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    sdpa = real_world_model_factory(world_image_size=64, world_pooling=2, world_attention=mode)
    assert sdpa.config._attn_implementation == "sdpa"
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(sdpa(**batch).logits[mask], model(**batch).logits[mask], rtol=1e-5, atol=1e-5)


def test_bidirectional_world_changes_what_the_block_computes(models, sample_images):
    """The option matters: the two modes give the same logits before the world block and different ones inside it."""
    prompt = [{"type": "image", "image": sample_images[0]}, {"type": "text", "text": "What is it?"}]
    inputs = _inputs(models["bidirectional"], [prompt])
    ids = inputs["input_ids"][0]
    block = _blocks(ids, models["bidirectional"].config.world_token_id)[0]
    with torch.no_grad():
        bi = models["bidirectional"](**inputs).logits[0]
        causal = models["causal"](**inputs).logits[0]
    torch.testing.assert_close(bi[: block[0]], causal[: block[0]], rtol=0, atol=0)
    assert (bi[block[0]] - causal[block[0]]).abs().max() > 1e-4
