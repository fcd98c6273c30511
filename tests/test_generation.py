"""Generation: the world is used in prefill and the KV cache afterwards, batched == unbatched, the earlier
``images=[...]`` API, and ``enable_world=False`` is exactly Gemma 3 (logits and greedy tokens, with images and
text-only, on the ``tiny`` bases and on the ``tiny-real`` bases whose sliding-window layers make the block-mask
composition matter). The ``theworld generate`` command is tested in test_cli.py."""

from __future__ import annotations

import pytest
import torch
from conftest import conversations
from transformers import AutoProcessor, Gemma3ForConditionalGeneration

from theworld.checkpoint_theworld import parameter_counts

TEXTS = ["Is the red circle left of the blue square?", "Describe."]
STEPS = 6
# eos_token_id=None: always generate STEPS tokens, so that the comparisons below cover every step.
GREEDY = dict(max_new_tokens=STEPS, do_sample=False, eos_token_id=None)


def _single(model, image, text):
    return model.processor.apply_chat_template(
        conversations([image], [text]),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )


def test_generate_uses_world_in_prefill(world_model, batch_inputs):
    kw = dict(GREEDY, output_logits=True, return_dict_in_generate=True)
    out = world_model.generate(**batch_inputs, **kw)
    swapped = world_model.generate(
        **{**batch_inputs, "world_pixel_values": batch_inputs["world_pixel_values"].flip(0)}, **kw
    )
    first, first_swapped = out.logits[0], swapped.logits[0]
    assert first.shape == (2, world_model.config.text_config.vocab_size)
    for row in range(2):
        assert (first[row] - first_swapped[row]).abs().max() > 1e-4, f"row {row}: generate ignored the world"
    # and the first step's logits are those of a plain forward pass over the prompt
    with torch.no_grad():
        forward = world_model(**batch_inputs).logits[:, -1]
    torch.testing.assert_close(first, forward, rtol=1e-5, atol=1e-5)


def test_generate_equals_manual_greedy_loops(world_model, sample_images):
    """generate == a manual greedy loop with the KV cache == recomputing the whole sequence at every step; the world
    encoder runs once (prefill) and every decode step feeds one token."""
    inputs = _single(world_model, sample_images[0], TEXTS[0])
    prompt_len = inputs["input_ids"].shape[1]
    encoder_calls, lengths = [], []
    hooks = [
        world_model.model.world_encoder.register_forward_hook(lambda *a: encoder_calls.append(1)),
        world_model.model.language_model.register_forward_pre_hook(
            lambda mod, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
        ),
    ]
    try:
        generated = world_model.generate(**inputs, **GREEDY)[0, prompt_len:].tolist()
    finally:
        for hook in hooks:
            hook.remove()
    assert len(generated) == STEPS
    assert len(encoder_calls) == 1, "the world must be encoded once, in prefill"
    assert lengths == [prompt_len] + [1] * (STEPS - 1)

    with torch.no_grad():
        out = world_model(**inputs, use_cache=True)
        cached = [int(out.logits[0, -1].argmax())]
        mask = inputs["attention_mask"]
        cache = out.cache
        for _ in range(STEPS - 1):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            out = world_model(input_ids=torch.tensor([[cached[-1]]]), attention_mask=mask, cache=cache, use_cache=True)
            cache = out.cache
            cached.append(int(out.logits[0, -1].argmax()))

        ids, full = inputs["input_ids"], []
        for _ in range(STEPS):
            step = {
                **inputs,
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "token_type_ids": torch.nn.functional.pad(inputs["token_type_ids"], (0, ids.shape[1] - prompt_len)),
            }
            token = int(world_model(**step, use_cache=False).logits[0, -1].argmax())
            full.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert generated == cached == full


def test_the_earlier_past_key_values_name_still_works(world_model, sample_images):
    inputs = _single(world_model, sample_images[1], TEXTS[1])
    with torch.no_grad():
        out = world_model(**inputs, use_cache=True)
        step = torch.tensor([[int(out.logits[0, -1].argmax())]])
        mask = torch.cat([inputs["attention_mask"], torch.ones(1, 1, dtype=torch.long)], dim=1)
        new = world_model(input_ids=step, attention_mask=mask, cache=out.cache).logits
        out = world_model(**inputs, use_cache=True)
        with pytest.warns(FutureWarning, match="`past_key_values` is deprecated .* Use `cache` instead"):
            old = world_model(input_ids=step, attention_mask=mask, past_key_values=out.past_key_values).logits
    assert torch.equal(new, old)


def test_batched_left_padded_generation_equals_single(world_model, batch_inputs, sample_images):
    assert batch_inputs["attention_mask"][1, 0] == 0  # the second prompt is left-padded
    kw = dict(GREEDY, output_logits=True, return_dict_in_generate=True)
    batched = world_model.generate(**batch_inputs, **kw)
    batched_tokens = batched.sequences[:, batch_inputs["input_ids"].shape[1] :]
    for row in range(2):
        single = _single(world_model, sample_images[row], TEXTS[row])
        alone = world_model.generate(**single, **kw)
        assert batched_tokens[row].tolist() == alone.sequences[0, single["input_ids"].shape[1] :].tolist(), row
        # not only the argmax: every step's logits agree, so padding changes nothing a sampler could see
        for step in range(STEPS):
            torch.testing.assert_close(batched.logits[step][row], alone.logits[step][0], rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def after_bos_model(world_model_factory):
    """The earlier API puts the world block right after ``<bos>``; so does this model's processor."""
    return world_model_factory(world_placement="after_bos")


def _strip_world(model, inputs):
    """``inputs`` with the world block (right after each row's ``<bos>``) removed."""
    n = model.config.num_world_tokens
    ids = inputs["input_ids"]
    keep = []
    for row in range(ids.shape[0]):
        first = int(inputs["attention_mask"][row].argmax())
        assert ids[row, first + 1] == model.config.start_of_world_token_id
        keep.append(torch.tensor(list(range(first + 1)) + list(range(first + 3 + n, ids.shape[1]))))
    stripped = {
        k: torch.stack([inputs[k][r, keep[r]] for r in range(len(keep))])
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert not (stripped["input_ids"] == model.config.world_token_id).any()
    return stripped


def test_legacy_images_list_gives_the_same_logits_and_tokens(after_bos_model, sample_images):
    """``forward``/``generate`` with ``images=[PIL, ...]`` on prompts without world blocks == processor-built inputs
    (the world block goes after ``<bos>``); with prompts that hold the blocks the images are only the world pixels."""
    model = after_bos_model
    inputs = model.processor.apply_chat_template(
        conversations(sample_images, TEXTS), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", padding=True,
    )  # fmt: skip
    stripped = _strip_world(model, inputs)
    without_world = {k: v for k, v in inputs.items() if k != "world_pixel_values"}
    with torch.no_grad():
        expected = model(**inputs).logits
        legacy = model(**stripped, pixel_values=inputs["pixel_values"], images=list(sample_images)).logits
        both = model(**without_world, images=list(sample_images)).logits
    assert legacy.shape == expected.shape
    torch.testing.assert_close(legacy, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(both, expected, rtol=0, atol=1e-6)
    generated = model.generate(**inputs, **GREEDY)
    assert torch.equal(
        model.generate(**stripped, pixel_values=inputs["pixel_values"], images=list(sample_images), **GREEDY),
        generated,
    )
    assert torch.equal(model.generate(**without_world, images=list(sample_images), **GREEDY), generated)


def test_legacy_images_list_errors(world_model, batch_inputs, sample_images):
    without_world = {k: v for k, v in batch_inputs.items() if k != "world_pixel_values"}
    with pytest.raises(ValueError, match=r"Got 1 images for 2 prompts; pass exactly one image per prompt"):
        world_model(**without_world, images=[sample_images[0]])
    with pytest.raises(ValueError, match=r"Got 3 images for 2 prompts"):
        world_model.generate(**without_world, images=[sample_images[0]] * 3, max_new_tokens=1)


# ----------------------------------------------------------------------------------------------------------------------
# enable_world=False is Gemma 3
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["tiny", "tiny-real"])
def gemma_pair(request, world_model_factory, real_world_model_factory, tiny_bases, tiny_real_bases):
    factory, bases = (
        (world_model_factory, tiny_bases) if request.param == "tiny" else (real_world_model_factory, tiny_real_bases)
    )
    theworld = factory(enable_world=False)
    gemma = Gemma3ForConditionalGeneration.from_pretrained(bases.gemma).eval()
    processor = AutoProcessor.from_pretrained(bases.gemma)
    text = theworld.config.text_config
    # tiny-real slides over a window shorter than the prompts below; tiny's layers are global
    window = text.sliding_window if "sliding_attention" in text.layer_types else None
    assert (window is not None) == (request.param == "tiny-real")
    return theworld, gemma, processor, window


def test_world_disabled_is_exactly_gemma3_with_images(gemma_pair, sample_images):
    theworld, gemma, processor, window = gemma_pair
    assert not hasattr(theworld.model, "world_encoder") and not hasattr(theworld.model, "world_projector")
    assert parameter_counts(theworld)[0] == 0  # nothing trains with the default freeze flags
    assert theworld.config.num_world_tokens == 0
    long_text = TEXTS[0] + " Answer in one word, then explain it in detail, step by step."
    inputs = processor.apply_chat_template(
        conversations(sample_images, [long_text, TEXTS[1]]),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
    )
    assert "token_type_ids" in inputs and inputs["attention_mask"][1, 0] == 0
    assert window is None or inputs["input_ids"].shape[1] > window  # the window and the image blocks compose
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        ours, theirs = theworld(**inputs, labels=labels), gemma(**inputs, labels=labels)
    assert torch.equal(ours.logits, theirs.logits)
    assert torch.equal(ours.loss, theirs.loss)
    assert torch.equal(theworld.generate(**inputs, **GREEDY), gemma.generate(**inputs, **GREEDY))
    static = dict(GREEDY, cache_implementation="static")
    assert torch.equal(theworld.generate(**inputs, **static), gemma.generate(**inputs, **static))
    # Gemma's own stopping behaviour (generation_config with its eos ids) is kept as well
    plain = dict(max_new_tokens=STEPS, do_sample=False)
    assert torch.equal(theworld.generate(**inputs, **plain), gemma.generate(**inputs, **plain))


def test_world_disabled_is_exactly_gemma3_text_only(gemma_pair):
    theworld, gemma, processor, window = gemma_pair
    inputs = processor.tokenizer(
        ["Hello there", "A longer text prompt here, long enough to pass a small sliding window of the tiny model"],
        return_tensors="pt",
        padding=True,
    )
    assert window is None or inputs["input_ids"].shape[1] > window
    with torch.no_grad():
        assert torch.equal(theworld(**inputs).logits, gemma(**inputs).logits)
    assert torch.equal(theworld.generate(**inputs, **GREEDY), gemma.generate(**inputs, **GREEDY))
