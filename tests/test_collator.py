"""The VSR collator: chat-template prompts, exact supervised positions, padding, batched world inputs."""

from __future__ import annotations

import pytest
import torch

from theworld.data.collator import PROMPT_TEMPLATE, VSRCollator, build_conversation, supervised_positions

CAPTIONS = ["The red circle is left of the blue square.", "The green triangle is far from the yellow square now."]


@pytest.fixture(scope="module")
def examples(sample_images):
    return [
        {"image": sample_images[0], "caption": CAPTIONS[0], "label": 1, "relation": "left of"},
        {"image": sample_images[1], "caption": CAPTIONS[1], "label": 0, "relation": "far from"},
    ]


def prompt_lengths(processor, examples) -> list[int]:
    """Token count of each example's generation prompt, tokenized alone (no padding)."""
    out = []
    for ex in examples:
        ids = processor.apply_chat_template(
            [build_conversation(ex["image"], ex["caption"])], add_generation_prompt=True, tokenize=True,
            return_dict=True, return_tensors="pt",
        )["input_ids"]
        out.append(ids.shape[1])
    return out


def test_supervised_positions_are_exactly_the_answer_tokens(world_model, examples):
    proc = world_model.processor
    batch = VSRCollator(proc)(examples)
    tok = proc.tokenizer
    lengths = batch["attention_mask"].sum(-1).tolist()
    assert lengths[0] != lengths[1], "the two captions must give different lengths so that padding is exercised"
    # The answer directly follows each example's own generation prompt.
    prompts = prompt_lengths(proc, examples)
    assert supervised_positions(batch["labels"]) == [(0, prompts[0]), (1, prompts[1])]
    for b, ex in enumerate(examples):
        p = prompts[b]
        assert tok.decode(batch["input_ids"][b, p]) == str(ex["label"])
        assert batch["labels"][b, p] == batch["input_ids"][b, p]
        # after the answer: <end_of_turn>, "\n", then right padding
        assert tok.convert_ids_to_tokens(batch["input_ids"][b, p + 1 : p + 3].tolist()) == ["<end_of_turn>", "\n"]
        assert lengths[b] == p + 3
    # right padding: real tokens first; padding carries mask 0, label -100, token type 0
    short = 0 if lengths[0] < lengths[1] else 1
    pad = batch["attention_mask"][short] == 0
    assert pad.sum() == abs(lengths[0] - lengths[1]) and pad[-1]
    assert (batch["input_ids"][short][pad] == tok.pad_token_id).all()
    assert (batch["labels"][short][pad] == -100).all()
    assert (batch["token_type_ids"][short][pad] == 0).all()


def test_end_of_turn_supervision_is_opt_in(world_model, examples):
    proc = world_model.processor
    batch = VSRCollator(proc, supervise_end_of_turn=True)(examples)
    prompts = prompt_lengths(proc, examples)
    assert supervised_positions(batch["labels"]) == [(0, prompts[0]), (0, prompts[0] + 1), (1, prompts[1]), (1, prompts[1] + 1)]
    eot = proc.tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert batch["labels"][0, prompts[0] + 1] == eot


def test_batch_holds_world_pixels_and_token_types(world_model, examples):
    proc = world_model.processor
    batch = VSRCollator(proc)(examples)
    cfg = world_model.config
    assert batch["world_pixel_values"].shape == (2, 3, cfg.world_image_size, cfg.world_image_size)
    torch.testing.assert_close(batch["world_pixel_values"], proc.world_pixel_values([e["image"] for e in examples]))
    assert batch["pixel_values"].shape[0] == 2
    # token_type_ids mark exactly the SigLIP image tokens (1) and the world tokens (2): the bidirectional blocks
    assert torch.equal(batch["token_type_ids"] == 1, batch["input_ids"] == cfg.image_token_id)
    assert torch.equal(batch["token_type_ids"] == 2, batch["input_ids"] == cfg.world_token_id)
    assert set(batch["token_type_ids"].unique().tolist()) == {0, 1, 2}
    # the world block follows the image's SigLIP block (world_placement "after_image")
    for row in batch["input_ids"].tolist():
        assert row[row.index(cfg.start_of_world_token_id) - 1] == cfg.eoi_token_id
    assert ((batch["input_ids"] == cfg.world_token_id).sum(-1) == cfg.num_world_tokens).all()
    assert (batch["labels"][batch["input_ids"] == cfg.world_token_id] == -100).all()


def test_loss_is_the_answer_token_cross_entropy(world_model, examples):
    proc = world_model.processor
    batch = VSRCollator(proc)(examples)
    with torch.no_grad():
        out = world_model(**batch)
        logits = world_model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    prompts = prompt_lengths(proc, examples)
    manual = torch.stack(
        [torch.nn.functional.cross_entropy(logits[b, prompts[b] - 1].float(), batch["input_ids"][b, prompts[b]]) for b in range(2)]
    ).mean()
    torch.testing.assert_close(out.loss.float(), manual, rtol=1e-5, atol=1e-5)


def test_prompt_mode_left_pads_and_ends_with_the_generation_prompt(world_model, examples):
    proc = world_model.processor
    batch = VSRCollator(proc, train=False)(examples)
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][:, 0].all()
    tok = proc.tokenizer
    for b in range(2):
        assert tok.convert_ids_to_tokens(batch["input_ids"][b, -3:].tolist()) == ["<start_of_turn>", "model", "\n"]
    text = tok.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert PROMPT_TEMPLATE.format(caption=CAPTIONS[0]) in text


def test_cached_latents_replace_world_pixels(world_model, examples):
    proc = world_model.processor
    with torch.no_grad():
        latents = world_model.encode_world(proc.world_pixel_values([e["image"] for e in examples]))
    cached = [{**ex, "world_latents": latents[i]} for i, ex in enumerate(examples)]
    batch = VSRCollator(proc)(cached)
    assert "world_pixel_values" not in batch
    assert torch.equal(batch["world_latents"], latents)
    with torch.no_grad():
        a = world_model(**VSRCollator(proc)(examples)).logits
        b = world_model(**batch).logits
    torch.testing.assert_close(a, b)


def test_collator_errors(world_model, examples):
    proc = world_model.processor
    with pytest.raises(ValueError, match="no 'label'"):
        VSRCollator(proc)([{k: v for k, v in examples[0].items() if k != "label"}])
    with pytest.raises(ValueError, match="label must be 0 or 1"):
        VSRCollator(proc)([{**examples[0], "label": 2}])
    with pytest.raises(ValueError, match="padding_side"):
        VSRCollator(proc, padding_side="middle")
    with pytest.raises(ValueError, match="caption"):
        VSRCollator(proc)([{**examples[0], "caption": "  "}])
    with pytest.raises(ValueError, match="empty"):
        VSRCollator(proc)([])
