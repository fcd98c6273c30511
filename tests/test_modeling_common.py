"""TheWorld's own common model tests, modelled on what transformers' ``ModelTesterMixin`` and ``GenerationTesterMixin``
check (our code, not theirs): a tiny `TheWorldConfig` built from the config alone (no base folders), real forward and
generate calls, real files. No mocks.

`TheWorldModelTester` makes the config and the inputs: every prompt holds a SigLIP image block and the world block of
the same image (``<start_of_world>`` + N x ``<world_soft_token>`` + ``<end_of_world>``), rows are padded, and the
token types are those of `TheWorldProcessor` (0 text, 1 image, 2 world).
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import os
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    DynamicCache,
    GenerationMixin,
    LogitsProcessor,
    LogitsProcessorList,
)

import theworld
from theworld import TheWorld, TheWorldConfig, TheWorldEncoderConfig, TheWorldForConditionalGeneration, TheWorldModel
from theworld.checkpoint_theworld import apply_freeze_flags

MODELING_LOGGER = "theworld.modeling_theworld"


class TheWorldModelTester:
    """Config and inputs of a tiny TheWorld (Gemma 3 text 32 wide x 2 layers: one sliding-window layer (window 16,
    shorter than the prompts) and one global; SigLIP 16 px; a 3-stage Wan encoder; 32 px world images -> 4 x 4 = 16
    world tokens)."""

    vocab_size = 128
    pad_token_id, eos_token_id, bos_token_id = 0, 1, 2
    boi_token_id, eoi_token_id, image_token_id = 98, 99, 100
    start_of_world_token_id, end_of_world_token_id, world_token_id = 101, 102, 103
    image_size, patch_size, mm_tokens_per_image = 16, 4, 4
    world_image_size = 32
    sliding_window = 16

    def get_config(self, layer_types: tuple[str, ...] = ("sliding_attention", "full_attention"), **overrides):
        """The tiny `TheWorldConfig`; ``overrides`` are TheWorld fields, ``layer_types`` Gemma's attention layout."""
        text = {
            "model_type": "gemma3_text",
            "vocab_size": self.vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "query_pre_attn_scalar": 8,
            "sliding_window": self.sliding_window,
            "layer_types": list(layer_types),
            "max_position_embeddings": 256,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }
        vision = {
            "model_type": "siglip_vision_model",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "vision_use_head": False,
        }
        values = {
            "text_config": text,
            "vision_config": vision,
            "world_config": {"base_dim": 8, "num_res_blocks": 1},
            "mm_tokens_per_image": self.mm_tokens_per_image,
            "boi_token_index": self.boi_token_id,
            "eoi_token_index": self.eoi_token_id,
            "image_token_index": self.image_token_id,
            "start_of_world_token_id": self.start_of_world_token_id,
            "end_of_world_token_id": self.end_of_world_token_id,
            "world_token_id": self.world_token_id,
            "world_image_size": self.world_image_size,
            "world_pooling": 1,
        }
        values.update(overrides)
        return TheWorldConfig(**values)

    def get_model(self, seed: int = 0, model_class=TheWorldForConditionalGeneration, **overrides):
        """A model from the config alone, in eval mode, with weights that make images and worlds matter (transformers
        initialises Gemma's image projector to zero and the world encoder's convolutions very small)."""
        torch.manual_seed(seed)
        model = model_class(self.get_config(**overrides))
        base = model if isinstance(model, TheWorldModel) else model.model
        with torch.no_grad():
            base.multi_modal_projector.mm_input_projection_weight.normal_(std=0.5)
            if getattr(base, "world_encoder", None) is not None:
                for module in base.world_encoder.modules():
                    if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
                        module.reset_parameters()
        return model.eval()

    def row(self, seed: int, images: int = 1, prefix: int = 3, suffix: int = 4, world: bool = True) -> list[int]:
        """``<bos>`` + text + per image (``<start_of_image>`` + image tokens + ``<end_of_image>`` + world block) +
        text; text ids are seeded random ids below the special ones."""
        g = torch.Generator().manual_seed(seed)

        def text(n):
            return torch.randint(3, 90, (n,), generator=g).tolist()

        ids = [self.bos_token_id, *text(prefix)]
        n = self.get_config().num_world_tokens
        for _ in range(images):
            ids += [self.boi_token_id] + [self.image_token_id] * self.mm_tokens_per_image + [self.eoi_token_id]
            if world:
                ids += [self.start_of_world_token_id] + [self.world_token_id] * n + [self.end_of_world_token_id]
        return ids + text(suffix)

    def token_types(self, ids: torch.Tensor) -> torch.Tensor:
        types = torch.zeros_like(ids)
        types[ids == self.image_token_id] = 1
        types[ids == self.world_token_id] = 2
        return types

    def prepare_inputs(self, rows: list[list[int]], seed: int = 0, padding_side: str = "left") -> dict:
        """Pad ``rows`` into a batch; one seeded image and world image per image block, in row order."""
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_token_id)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            span = slice(length - len(r), length) if padding_side == "left" else slice(0, len(r))
            ids[i, span] = torch.tensor(r)
            mask[i, span] = 1
        g = torch.Generator().manual_seed(seed)
        images = int((ids == self.boi_token_id).sum())
        worlds = int((ids == self.start_of_world_token_id).sum())
        inputs = {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": self.token_types(ids),
            "pixel_values": torch.randn(images, 3, self.image_size, self.image_size, generator=g),
        }
        if worlds:
            size = self.world_image_size
            inputs["world_pixel_values"] = torch.rand(worlds, 3, size, size, generator=g) * 2 - 1
        return inputs

    def labels(self, inputs: dict) -> torch.Tensor:
        """``input_ids`` as labels, -100 on padding and on the first real token of each row (its logits come from a
        padded position, or from nothing)."""
        mask = inputs["attention_mask"]
        previous = torch.nn.functional.pad(mask, (1, 0))[:, :-1]
        return inputs["input_ids"].masked_fill((mask == 0) | (previous == 0), -100)

    def batch(self, seed: int = 0, padding_side: str = "left") -> dict:
        """Two rows of different lengths: one image each."""
        return self.prepare_inputs([self.row(seed), self.row(seed + 1, prefix=1, suffix=2)], seed, padding_side)


TESTER = TheWorldModelTester()
GREEDY = dict(max_new_tokens=4, do_sample=False, eos_token_id=None)


@pytest.fixture(scope="module")
def model():
    """The shared tiny model (fp32, SDPA). Do not mutate it."""
    return TESTER.get_model()


@pytest.fixture(scope="module")
def inputs():
    return TESTER.batch()


def _real(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits[mask.bool()]


def _slice(inputs: dict, row: int) -> dict:
    """Row ``row`` of a padded batch, unpadded, with its own images."""
    keep = inputs["attention_mask"][row].bool()
    ids = inputs["input_ids"]
    images_before = int((ids[:row] == TESTER.boi_token_id).sum())
    worlds_before = int((ids[:row] == TESTER.start_of_world_token_id).sum())
    images = int((ids[row] == TESTER.boi_token_id).sum())
    worlds = int((ids[row] == TESTER.start_of_world_token_id).sum())
    out = {k: inputs[k][row : row + 1, keep] for k in ("input_ids", "attention_mask", "token_type_ids")}
    out["pixel_values"] = inputs["pixel_values"][images_before : images_before + images]
    out["world_pixel_values"] = inputs["world_pixel_values"][worlds_before : worlds_before + worlds]
    return out


# ======================================================================================================================
# API surface
# ======================================================================================================================
def test_public_classes_and_composite_config():
    assert TheWorld is TheWorldForConditionalGeneration
    assert GenerationMixin in TheWorldForConditionalGeneration.__bases__
    assert {"text_config", "vision_config", "world_config"} <= set(TheWorldConfig.sub_configs)
    config = TESTER.get_config()
    assert config.text_config.model_type == "gemma3_text"
    assert config.vision_config.model_type == "siglip_vision_model"
    assert isinstance(config.world_config, TheWorldEncoderConfig)
    assert config.get_text_config() is config.text_config
    assert config.num_world_tokens == 16 and config.world_token_ids == (101, 102, 103)
    for auto in (AutoModel, AutoModelForImageTextToText, AutoModelForCausalLM):
        assert type(auto.from_config(config)) is TheWorldForConditionalGeneration, auto.__name__


def test_base_model_num_parameters_and_standalone_base(model, inputs):
    assert model.base_model is model.model and isinstance(model.model, TheWorldModel)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.num_parameters() == sum(unique.values())
    # embedding tables: Gemma's (lm_head is tied to it), SigLIP's positions and the world boundary embeddings
    embeddings = {id(m.weight): m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    assert len(embeddings) == 3 and id(model.model.world_boundary_embeddings.weight) in embeddings
    assert model.num_parameters(exclude_embeddings=True) == sum(unique.values()) - sum(embeddings.values())
    # TheWorldModel on its own: the hidden states the head turns into logits, plus the world features
    base = TheWorldModel(model.config).eval()
    base.load_state_dict(model.model.state_dict())
    with torch.no_grad():
        out = base(**inputs)
        logits = model(**inputs).logits
    n_blocks = int((inputs["input_ids"] == TESTER.start_of_world_token_id).sum())
    assert out.last_hidden_state.shape == (*inputs["input_ids"].shape, 32)
    assert out.world_hidden_states.shape == (n_blocks, 16, 32)
    assert out.image_outputs.pooler_output.shape == (inputs["pixel_values"].shape[0], 4, 32)
    torch.testing.assert_close(model.lm_head(out.last_hidden_state), logits, rtol=0, atol=1e-6)


def test_embedding_accessors_tying_and_resize():
    model = TESTER.get_model()
    embed = model.get_input_embeddings()
    assert embed is model.model.language_model.embed_tokens
    assert model.get_output_embeddings() is model.lm_head
    assert model.lm_head.weight is embed.weight  # tied, as in Gemma 3
    # set_input_embeddings: the model reads the new module
    new = copy.deepcopy(embed)
    with torch.no_grad():
        new.weight.mul_(2)
    model.set_input_embeddings(new)
    assert model.get_input_embeddings() is new and model.model.language_model.embed_tokens is new
    # resize_token_embeddings grows the vocabulary of the text config; the head stays tied and the world ids keep their
    # rows (shrinking below a world or image id would drop them: ids must stay < vocab_size)
    inputs = TESTER.batch()
    model = TESTER.get_model()
    with torch.no_grad():
        before = model(**inputs).logits
    resized = model.resize_token_embeddings(TESTER.vocab_size + 8, mean_resizing=False)
    assert resized.weight.shape[0] == model.config.text_config.vocab_size == TESTER.vocab_size + 8
    assert model.lm_head.weight is model.get_input_embeddings().weight
    with torch.no_grad():
        after = model(**inputs).logits
    assert after.shape[-1] == TESTER.vocab_size + 8
    torch.testing.assert_close(after[..., : TESTER.vocab_size], before, rtol=0, atol=1e-6)


def test_output_hidden_states_attentions_return_dict_and_cache(inputs):
    model = TESTER.get_model()
    model.set_attn_implementation("eager")
    batch, length = inputs["input_ids"].shape
    labels = TESTER.labels(inputs)
    with torch.no_grad():
        out = model(**inputs, labels=labels, output_hidden_states=True, output_attentions=True, use_cache=True)
        plain = model(**inputs, use_cache=False)
        as_tuple = model(**inputs, labels=labels, return_dict=False)
    assert len(out.hidden_states) == 3 and all(h.shape == (batch, length, 32) for h in out.hidden_states)
    assert len(out.attentions) == 2 and all(a.shape == (batch, 4, length, length) for a in out.attentions)
    # each attention row is a distribution over the keys a query may see
    torch.testing.assert_close(out.attentions[1].sum(-1), torch.ones(batch, 4, length))
    assert plain.hidden_states is None and plain.attentions is None and plain.cache is None
    assert isinstance(out.cache, DynamicCache) and out.cache.get_seq_length() == length
    assert out.past_key_values is out.cache  # the earlier name still reads
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.loss)
    torch.testing.assert_close(as_tuple[1], out.logits)
    # continuing from the returned cache == recomputing the longer sequence
    step = torch.full((batch, 1), 7)
    mask = torch.cat([inputs["attention_mask"], torch.ones(batch, 1, dtype=torch.long)], dim=1)
    with torch.no_grad():
        cached = model(input_ids=step, attention_mask=mask, cache=out.cache).logits[:, -1]
        full = model(
            **{
                **inputs,
                "input_ids": torch.cat([inputs["input_ids"], step], 1),
                "attention_mask": mask,
                "token_type_ids": torch.nn.functional.pad(inputs["token_type_ids"], (0, 1)),
            }
        ).logits[:, -1]
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-5)


# ======================================================================================================================
# Saving and loading from a config alone
# ======================================================================================================================
def test_full_checkpoint_round_trip_from_config_alone(model, inputs, tmp_path):
    """A model built from a config alone has no processor and names bases that do not exist here; its full checkpoint
    loads without them (HF_HUB_OFFLINE=1: no network) with nothing missing or unexpected, and the same logits."""
    model.save_pretrained(tmp_path, save_full_model=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["checkpoint_kind"] == "full" and saved["model_type"] == "theworld"
    assert not (tmp_path / "processor_config.json").exists()
    with torch.no_grad():
        expected = model(**inputs).logits
    loaded = TheWorldForConditionalGeneration.from_pretrained(tmp_path)
    assert loaded.processor is None
    assert loaded.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, expected)
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert set(state) == set(loaded_state) and all(torch.equal(state[k], loaded_state[k]) for k in state)
    assert set(TESTER.get_config().world_token_ids) <= set(loaded.generation_config.suppress_tokens)

    auto, info = AutoModelForImageTextToText.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert type(auto) is TheWorldForConditionalGeneration
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and info["mismatched_keys"] == set()
    assert not info["error_msgs"]
    for cfg in (auto.config, auto.config.text_config, auto.config.vision_config):
        assert cfg._attn_implementation == "eager"
    with torch.no_grad():
        eager = auto(**inputs, output_attentions=True)
    assert eager.attentions is not None and len(eager.attentions) == 2  # eager attention really ran
    mask = inputs["attention_mask"]
    torch.testing.assert_close(_real(eager.logits, mask), _real(expected, mask), rtol=1e-5, atol=1e-5)


def test_dtype_round_trips(inputs, tmp_path):
    """Saved in bfloat16 -> loads in bfloat16 (world projector, boundary embeddings and world encoder in float32);
    dtype= overrides; world_encoder_dtype=None lets the encoder follow the model."""
    model = TESTER.get_model()
    model.save_pretrained(tmp_path / "fp32", save_full_model=True)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", save_full_model=True)

    def dtypes(m):
        return {
            "language": m.model.language_model.embed_tokens.weight.dtype,
            "vision": m.model.vision_tower.embeddings.patch_embedding.weight.dtype,
            "projector": m.model.world_projector.linear_1.weight.dtype,
            "boundary": m.model.world_boundary_embeddings.weight.dtype,
            "encoder": m.model.world_encoder.encoder.conv_in.weight.dtype,
        }

    bf16, fp32 = torch.bfloat16, torch.float32
    kept = {"language": bf16, "vision": bf16, "projector": fp32, "boundary": fp32, "encoder": fp32}
    from_bf16 = TheWorldForConditionalGeneration.from_pretrained(tmp_path / "bf16")
    assert dtypes(from_bf16) == kept
    assert dtypes(TheWorldForConditionalGeneration.from_pretrained(tmp_path / "bf16", dtype=fp32)) == dict.fromkeys(
        kept, fp32
    )
    loaded = TheWorldForConditionalGeneration.from_pretrained(tmp_path / "fp32", dtype=bf16)
    assert dtypes(loaded) == kept
    following = TheWorldForConditionalGeneration.from_pretrained(
        tmp_path / "fp32", dtype=bf16, world_encoder_dtype=None
    )
    assert dtypes(following) == {**kept, "encoder": bf16}
    # mixed precision runs, in both directions of the inputs' dtype, and trains the float32 projector in float32
    for m in (loaded, following):
        for cast in (fp32, bf16):
            batch = {k: v.to(cast) if v.is_floating_point() else v for k, v in inputs.items()}
            out = m(**batch, labels=TESTER.labels(inputs))
            assert out.logits.dtype == bf16 and torch.isfinite(out.loss)
    out.loss.backward()
    grad = following.model.world_projector.linear_1.weight.grad
    assert grad is not None and grad.dtype == fp32 and grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_model_to_half_precision_forward_and_generate(inputs, dtype):
    model = TESTER.get_model().to(dtype)
    assert all(p.dtype == dtype for p in model.parameters())
    batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        out = model(**batch, labels=TESTER.labels(inputs))
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    generated = model.generate(**batch, **GREEDY)
    assert generated.shape == (2, inputs["input_ids"].shape[1] + GREEDY["max_new_tokens"])
    # fp32 inputs work too: the world encoder and the vision tower cast their pixels to their own dtype
    assert model.generate(**inputs, **GREEDY).shape == generated.shape


# ======================================================================================================================
# Equivalences of the forward pass
# ======================================================================================================================
def test_eager_and_sdpa_agree(inputs):
    sdpa = TESTER.get_model()
    eager = TESTER.get_model()
    eager.set_attn_implementation("eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config.text_config._attn_implementation == "eager"
    labels = TESTER.labels(inputs)
    with torch.no_grad():
        a, b = sdpa(**inputs, labels=labels), eager(**inputs, labels=labels)
    mask = inputs["attention_mask"]
    torch.testing.assert_close(_real(a.logits, mask), _real(b.logits, mask), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_batch_rows_equal_each_sample_alone(model, padding_side):
    rows = [TESTER.row(10, images=2), TESTER.row(11, prefix=1, suffix=1), TESTER.row(12, world=False)]
    batch = TESTER.prepare_inputs(rows, seed=3, padding_side=padding_side)
    assert (batch["attention_mask"] == 0).any(-1).tolist() == [False, True, True]
    with torch.no_grad():
        batched = model(**batch).logits
        for i in range(len(rows)):
            alone = model(**_slice(batch, i)).logits[0]
            torch.testing.assert_close(_real(batched[i], batch["attention_mask"][i]), alone, rtol=1e-5, atol=1e-5)


def test_left_padding_with_and_without_position_ids(model, inputs):
    mask = inputs["attention_mask"]
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        without = model(**inputs).logits
        with_ids = model(**inputs, position_ids=position_ids).logits
        alone = model(**_slice(inputs, 1)).logits[0]
    torch.testing.assert_close(_real(with_ids, mask), _real(without, mask), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_real(with_ids[1], mask[1]), alone, rtol=1e-5, atol=1e-5)


def test_missing_attention_mask_is_caught(model, inputs, caplog):
    """Padded input_ids without their attention_mask: the padding is attended to (the logits change) and a warning
    names the rows; unpadded input without a mask is fine and silent."""
    no_mask = {k: v for k, v in inputs.items() if k != "attention_mask"}
    mask = inputs["attention_mask"]
    with caplog.at_level(logging.WARNING, logger=MODELING_LOGGER), torch.no_grad():
        masked = model(**inputs).logits
        assert not caplog.records
        unmasked = model(**no_mask).logits
    assert [r.getMessage() for r in caplog.records] == [
        "Rows [1] of input_ids start or end with the pad token (id 0) but no attention_mask was given, so the padding "
        "is attended to and changes the logits. Pass the attention_mask the processor returns."
    ]
    assert (unmasked[1][mask[1].bool()] - masked[1][mask[1].bool()]).abs().max() > 1e-3
    caplog.clear()
    single = _slice(inputs, 1)
    with caplog.at_level(logging.WARNING, logger=MODELING_LOGGER), torch.no_grad():
        silent = model(**{k: v for k, v in single.items() if k != "attention_mask"}).logits
    assert not caplog.records
    with torch.no_grad():
        torch.testing.assert_close(silent, model(**single).logits, rtol=0, atol=0)


@pytest.mark.parametrize("with_types", [True, False], ids=["token_type_ids", "no_token_type_ids"])
def test_inputs_embeds_equal_input_ids(model, inputs, with_types):
    """The world placeholders and markers are found from token_type_ids, or by their embedding rows without them
    (then, as in Gemma 3 without token types, the image tokens attend causally)."""
    labels = TESTER.labels(inputs)
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    given = {k: v for k, v in inputs.items() if with_types or k != "token_type_ids"}
    rest = {k: v for k, v in given.items() if k != "input_ids"}
    with torch.no_grad():
        by_ids = model(**given, labels=labels)
        by_embeds = model(inputs_embeds=embeds, **rest, labels=labels)
    torch.testing.assert_close(by_embeds.logits, by_ids.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_embeds.loss, by_ids.loss, rtol=1e-5, atol=1e-5)  # world positions masked alike
    torch.testing.assert_close(by_embeds.world_hidden_states, by_ids.world_hidden_states, rtol=0, atol=0)


def test_generate_from_inputs_embeds(model, inputs):
    """``generate(inputs_embeds=...)`` (with the token types that locate the world blocks) gives the tokens of
    ``generate(input_ids=...)``; the output holds only the new tokens, as for any decoder-only model."""
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    rest = {k: v for k, v in inputs.items() if k != "input_ids"}
    by_ids = model.generate(**inputs, **GREEDY)
    by_embeds = model.generate(inputs_embeds=embeds, **rest, **GREEDY)
    assert torch.equal(by_embeds, by_ids[:, inputs["input_ids"].shape[1] :])


def test_labels_never_supervise_world_positions(model, inputs):
    ids = inputs["input_ids"]
    labels = TESTER.labels(inputs)  # naive labels that include the world blocks
    world = (ids >= TESTER.start_of_world_token_id) & (ids <= TESTER.world_token_id)
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    logits = out.logits.float()
    masked = labels.masked_fill(world, -100)
    manual = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), masked[:, 1:].flatten(), ignore_index=-100)
    unmasked = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, manual)
    assert (unmasked - out.loss).abs() > 1e-3


# ======================================================================================================================
# Training
# ======================================================================================================================
@pytest.mark.filterwarnings("ignore:`gradient_checkpointing_(enable|disable)` is deprecated:FutureWarning")
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(inputs):
    model = TESTER.get_model(freeze_gemma_language=False, freeze_gemma_vision=False)
    apply_freeze_flags(model)
    model.train()
    calls = []  # forward calls of the first attention module
    model.model.language_model.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))

    def loss_and_grads():
        model.zero_grad(set_to_none=True)
        calls.clear()
        loss = model(**inputs, labels=TESTER.labels(inputs), use_cache=False).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    loss, grads = loss_and_grads()
    assert calls == [1]
    model.gradient_checkpointing_enable()
    assert model.model.language_model.gradient_checkpointing
    checkpointed_loss, checkpointed = loss_and_grads()
    assert calls == [1, 1], "with gradient checkpointing the layer is recomputed in the backward pass"
    model.gradient_checkpointing_disable()
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=0)
    assert set(checkpointed) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize(
    "flags",
    [
        {},
        {"freeze_gemma_vision": False},
        {"freeze_gemma_language": False},
        {"freeze_cosmos_vae": False},
    ],
    ids=["default", "vision", "language", "world_encoder"],
)
def test_gradients_reach_exactly_the_trainable_parameters(inputs, flags):
    model = TESTER.get_model(**flags)
    apply_freeze_flags(model)
    model.train()
    prefixes = tuple(model.config.trainable_prefixes())
    expected = {"model.world_projector.", "model.world_boundary_embeddings."}
    expected |= {"freeze_gemma_vision": {"model.vision_tower.", "model.multi_modal_projector."},
                 "freeze_gemma_language": {"model.language_model.", "lm_head."},
                 "freeze_cosmos_vae": {"model.world_encoder."}}.get(next(iter(flags), None), set())  # fmt: skip
    assert set(prefixes) == expected
    model(**inputs, labels=TESTER.labels(inputs)).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model.num_parameters(only_trainable=True) == trainable > 0


# ======================================================================================================================
# Compile, export, caches
# ======================================================================================================================
def test_compile_fullgraph_prefill(model, inputs):
    """The prefill (images, world, block masks) compiles to one graph: no data-dependent Python branch (the host-side
    checks of the world blocks run only outside compile). Decode steps: see the host-synchronisation test and the
    export test."""
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = model(**inputs).logits
        torch.testing.assert_close(compiled(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def dynamic_cache_pytree():
    """transformers' pytree registration of `DynamicCache` (what ``torch.export`` needs for a cache input), undone
    afterwards so that the rest of the session sees the default."""
    from torch.fx import _pytree as fx_pytree
    from torch.utils import _pytree
    from transformers.integrations.executorch import register_dynamic_cache_export_support

    registered = DynamicCache in _pytree.SUPPORTED_NODES
    register_dynamic_cache_export_support()
    yield
    if not registered:
        _pytree._deregister_pytree_node(DynamicCache)
        fx_pytree._deregister_pytree_flatten_spec(DynamicCache)


def test_torch_export_prefill_and_decode(inputs, dynamic_cache_pytree):
    """Prefill and decode step under ``torch.export`` (non-strict), equal to eager. The decode step takes its cache
    as a `DynamicCache` input (transformers' pytree support), which keeps no token count for sliding-window layers, so
    this model's layers are global; the sliding layout is covered by the compile test."""
    model = TESTER.get_model(layer_types=("full_attention", "full_attention"))
    with torch.no_grad():
        prefill = torch.export.export(model, args=(), kwargs={**inputs, "use_cache": False}, strict=False)
        expected = model(**inputs, use_cache=False).logits
        torch.testing.assert_close(prefill.module()(**inputs, use_cache=False).logits, expected, rtol=1e-5, atol=1e-5)

        batch, length = inputs["input_ids"].shape
        step = {
            "input_ids": expected[:, -1].argmax(-1, keepdim=True),
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones(batch, 1, dtype=torch.long)], 1),
            "position_ids": inputs["attention_mask"].sum(-1, keepdim=True),
            "use_cache": True,
        }

        def prefilled():
            return model(**inputs, use_cache=True).cache

        decode = torch.export.export(model, args=(), kwargs={**step, "cache": prefilled()}, strict=False)
        eager = model(**step, cache=prefilled()).logits
        torch.testing.assert_close(decode.module()(**step, cache=prefilled()).logits, eager, rtol=1e-5, atol=1e-5)


def test_static_cache_generation_equals_dynamic(model, inputs):
    kw = dict(GREEDY, max_new_tokens=6, output_logits=True, return_dict_in_generate=True)
    dynamic = model.generate(**inputs, **kw)
    static = model.generate(**inputs, **kw, cache_implementation="static")
    assert torch.equal(static.sequences, dynamic.sequences)
    for a, b in zip(static.logits, dynamic.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


class _HostSyncs(TorchDispatchMode):
    """Records where an op copies a tensor value to the host (``.item()``, ``bool(tensor)``, ``nonzero``): the innermost
    frame outside torch, as ``file:function``."""

    OPS = (
        torch.ops.aten._local_scalar_dense.default,
        torch.ops.aten.nonzero.default,
        torch.ops.aten.is_nonzero.default,
    )

    def __init__(self):
        super().__init__()
        self.sites: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            stack = traceback.extract_stack()[:-1]  # without this frame
            frames = [f for f in stack if f"{os.sep}torch{os.sep}" not in f.filename]
            self.sites.append(f"{os.path.basename(frames[-1].filename)}:{frames[-1].name}")
        return func(*args, **(kwargs or {}))


def test_decode_steps_do_no_host_synchronisation(inputs):
    """Static cache (the compilable path): a decode step never waits for the device. With a dynamic cache the only wait
    is transformers' own SDPA mask shortcut (Gemma 3 does the same), none in TheWorld's code."""
    model = TESTER.get_model()
    forward = model.forward
    sites: list[list[str]] = []

    @functools.wraps(forward)
    def recorded(*args, **kwargs):
        if kwargs["input_ids"].shape[1] > 1:  # the prefill may check its world blocks on the host
            return forward(*args, **kwargs)
        with _HostSyncs() as mode:
            out = forward(*args, **kwargs)
        sites.append(mode.sites)
        return out

    model.forward = recorded
    model.generate(**inputs, **GREEDY, cache_implementation="static")
    assert sites == [[]] * (GREEDY["max_new_tokens"] - 1)
    sites.clear()
    model.generate(**inputs, **GREEDY)
    assert len(sites) == GREEDY["max_new_tokens"] - 1
    assert {site for step in sites for site in step} <= {"masking_utils.py:_ignore_causal_mask_sdpa"}


class _Cycle(LogitsProcessor):
    """Makes ``token_ids[step % len(token_ids)]`` the only possible token at each step."""

    def __init__(self, token_ids: list[int], prompt_length: int):
        self.token_ids, self.prompt_length = token_ids, prompt_length

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, -1e9)
        forced[:, self.token_ids[(input_ids.shape[1] - self.prompt_length) % len(self.token_ids)]] = 0.0
        return forced


def test_world_ids_are_suppressed_and_tolerated_in_decode(model, inputs):
    world_ids = list(TESTER.get_config().world_token_ids)
    assert set(world_ids) <= set(model.generation_config.suppress_tokens)
    out = model.generate(**inputs, **GREEDY, output_scores=True, return_dict_in_generate=True)
    for scores in out.scores:
        assert torch.isinf(scores[:, world_ids]).all() and (scores[:, world_ids] < 0).all()
    prompt = inputs["input_ids"].shape[1]
    # world ids that do get sampled (here: forced after the suppression) are ordinary decode inputs
    for cache in ("dynamic", "static"):
        forced = LogitsProcessorList([_Cycle(world_ids, prompt)])
        generated = model.generate(**inputs, **GREEDY, logits_processor=forced, cache_implementation=cache)
        assert generated[0, prompt:].tolist() == (world_ids * 2)[: GREEDY["max_new_tokens"]], cache


def test_beam_search_and_several_sequences_keep_each_rows_world(model):
    """Expanding a batch for beams repeats each row's own images and world images together (rows hold 2 and 1 of
    them): the prefill sees row 0's pair twice, then row 1's image twice, and the tokens equal each row alone."""
    batch = TESTER.prepare_inputs([TESTER.row(20, images=2), TESTER.row(21, prefix=2)], seed=5)
    kw = dict(GREEDY, num_beams=2, num_return_sequences=2, output_scores=True, return_dict_in_generate=True)
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        together = model.generate(**batch, **kw)
    finally:
        hook.remove()
    order = [0, 1, 0, 1, 2, 2]  # row 0 holds entries 0 and 1, row 1 entry 2; two beams each
    assert torch.equal(seen[0]["world_pixel_values"], batch["world_pixel_values"][order])
    assert torch.equal(seen[0]["pixel_values"], batch["pixel_values"][order])
    assert all("world_pixel_values" not in step for step in seen[1:])  # decode steps take no world input
    prompt = batch["input_ids"].shape[1]
    for row in range(2):
        alone = _slice(batch, row)
        expected = model.generate(**alone, **kw)
        assert torch.equal(together.sequences[2 * row : 2 * row + 2, prompt:], expected.sequences[:, -4:]), row
        torch.testing.assert_close(
            together.sequences_scores[2 * row : 2 * row + 2], expected.sequences_scores, rtol=1e-4, atol=1e-4
        )


# ======================================================================================================================
# Config round trips
# ======================================================================================================================
def test_config_round_trips(tmp_path):
    config = TESTER.get_config(my_experiment="run-7", world_attention="causal")
    data = config.to_dict()
    assert data["my_experiment"] == "run-7" and data["world_config"]["base_dim"] == 8
    again = TheWorldConfig.from_dict(data)
    assert again.to_dict() == data
    assert json.loads(config.to_json_string()) == json.loads(again.to_json_string())
    config.save_pretrained(tmp_path)
    for loaded in (TheWorldConfig.from_pretrained(tmp_path), AutoConfig.from_pretrained(tmp_path)):
        assert type(loaded) is TheWorldConfig
        assert loaded.my_experiment == "run-7" and loaded.world_attention == "causal"
        assert loaded.num_world_tokens == 16 and loaded.text_config.sliding_window == TESTER.sliding_window
        dumped = {k: v for k, v in loaded.to_dict().items() if k != "_name_or_path"}
        assert dumped == {k: v for k, v in data.items() if k != "_name_or_path"}
    # a model built from the loaded config has the same state-dict layout
    with torch.device("meta"):
        skeleton = TheWorldForConditionalGeneration(TheWorldConfig.from_pretrained(tmp_path))
    with torch.device("meta"):
        reference = TheWorldForConditionalGeneration(config)
    assert {k: v.shape for k, v in skeleton.state_dict().items()} == {
        k: v.shape for k, v in reference.state_dict().items()
    }
    assert theworld.__version__ == config.theworld_version
