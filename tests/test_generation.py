"""Generation (issue 2, point 8): the world is used in prefill and the KV cache afterwards, batched == unbatched,
``enable_world=False`` is exactly Gemma 3, the earlier ``images=[...]`` API, and the ``theworld generate`` command."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest
import torch
from conftest import conversations
from transformers import AutoProcessor, Gemma3ForConditionalGeneration

from theworld import generate_cmd

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
    """generate == a manual greedy loop with the KV cache == recomputing the whole sequence at every step; the VAE
    runs once (prefill) and every decode step feeds one token."""
    inputs = _single(world_model, sample_images[0], TEXTS[0])
    prompt_len = inputs["input_ids"].shape[1]
    vae_calls, lengths = [], []
    hooks = [
        world_model.cosmos_vae.encoder.register_forward_hook(lambda *a: vae_calls.append(1)),
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
    assert len(vae_calls) == 1, "the world must be encoded once, in prefill"
    assert lengths == [prompt_len] + [1] * (STEPS - 1)

    with torch.no_grad():
        out = world_model(**inputs, use_cache=True)
        cached = [int(out.logits[0, -1].argmax())]
        mask = inputs["attention_mask"]
        cache = out.past_key_values
        for _ in range(STEPS - 1):
            mask = torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], dim=1)
            out = world_model(
                input_ids=torch.tensor([[cached[-1]]]), attention_mask=mask, past_key_values=cache, use_cache=True
            )
            cache = out.past_key_values
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


def test_generate_with_legacy_images_list(world_model, batch_inputs, sample_images):
    """``generate(input_ids without world blocks, images=[PIL, ...])`` == processor-built inputs."""
    n = world_model.config.num_world_tokens
    keep = []
    for row in range(2):
        first = int(batch_inputs["attention_mask"][row].argmax())
        keep.append(
            torch.tensor(list(range(first + 1)) + list(range(first + 3 + n, batch_inputs["input_ids"].shape[1])))
        )
    stripped = {
        k: torch.stack([batch_inputs[k][r, keep[r]] for r in range(2)])
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    expected = world_model.generate(**batch_inputs, **GREEDY)
    legacy = world_model.generate(
        **stripped, pixel_values=batch_inputs["pixel_values"], images=list(sample_images), **GREEDY
    )
    assert torch.equal(legacy, expected)


# ----------------------------------------------------------------------------------------------------------------------
# enable_world=False is Gemma 3
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma_pair(world_model_factory, tiny_bases):
    theworld = world_model_factory(enable_world=False)
    gemma = Gemma3ForConditionalGeneration.from_pretrained(tiny_bases.gemma).eval()
    processor = AutoProcessor.from_pretrained(tiny_bases.gemma)
    return theworld, gemma, processor


def test_world_disabled_is_exactly_gemma3(gemma_pair, sample_images):
    theworld, gemma, processor = gemma_pair
    assert not hasattr(theworld, "cosmos_vae") and not hasattr(theworld, "world_projector")
    assert theworld.get_trainable_parameters()[0] == 0
    inputs = processor.apply_chat_template(
        conversations(sample_images, TEXTS),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        ours, theirs = theworld(**inputs).logits, gemma(**inputs).logits
    assert torch.equal(ours, theirs)
    # with labels too (same loss)
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    with torch.no_grad():
        assert torch.equal(theworld(**inputs, labels=labels).loss, gemma(**inputs, labels=labels).loss)
    assert torch.equal(theworld.generate(**inputs, **GREEDY), gemma.generate(**inputs, **GREEDY))
    # Gemma's own stopping behaviour (generation_config with its eos ids) is kept as well
    plain = dict(max_new_tokens=STEPS, do_sample=False)
    assert torch.equal(theworld.generate(**inputs, **plain), gemma.generate(**inputs, **plain))


def test_world_disabled_text_only(gemma_pair):
    theworld, gemma, processor = gemma_pair
    inputs = processor.tokenizer(["Hello there", "A longer text prompt here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(theworld(**inputs).logits, gemma(**inputs).logits)
    assert torch.equal(theworld.generate(**inputs, **GREEDY), gemma.generate(**inputs, **GREEDY))


# ----------------------------------------------------------------------------------------------------------------------
# theworld generate
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_checkpoint(world_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("generate_ckpt")
    world_model.save_pretrained(path)
    return str(path)


def _args(**kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    generate_cmd.add_arguments(parser)
    argv = []
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def test_generate_command_subprocess(world_model, saved_checkpoint, sample_images, tmp_path):
    image_path = tmp_path / "scene.png"
    sample_images[0].save(image_path)
    expected = generate_cmd.generate_answer(world_model, world_model.processor, sample_images[0], TEXTS[0], 5)
    assert expected, "the tiny model should produce some text for this prompt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "theworld.cli",
            "generate",
            "--model",
            saved_checkpoint,
            "--image",
            str(image_path),
            "--prompt",
            TEXTS[0],
            "--max-new-tokens",
            "5",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == expected


def test_generate_command_remote_code_in_process(world_model, saved_checkpoint, sample_images, tmp_path, capsys):
    image_path = tmp_path / "scene.png"
    sample_images[1].save(image_path)
    args = _args(
        model=saved_checkpoint,
        image=image_path,
        prompt=TEXTS[1],
        max_new_tokens=4,
        trust_remote_code=True,
        device="cpu",
    )
    assert generate_cmd.run(args) == 0
    expected = generate_cmd.generate_answer(world_model, world_model.processor, sample_images[1], TEXTS[1], 4)
    assert capsys.readouterr().out.strip() == expected


def test_generate_command_errors(saved_checkpoint, tmp_path, capsys):
    assert generate_cmd.run(_args(model=saved_checkpoint, image=tmp_path / "missing.png", prompt="x")) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert generate_cmd.run(_args(model=saved_checkpoint, image=bad, prompt="x")) == 2
    assert "cannot read" in capsys.readouterr().err
    assert generate_cmd.run(_args(model=saved_checkpoint, prompt="x", max_new_tokens=0)) == 2
    assert "--max-new-tokens must be at least 1" in capsys.readouterr().err
