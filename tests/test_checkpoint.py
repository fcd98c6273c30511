"""Checkpoint saving and loading (issue 8): partial and full saves with their exact contents and size, reloading bit for
bit through ``TheWorld.from_pretrained`` and transformers' own loading options (``dtype``, ``device_map``,
``attn_implementation``, ``output_loading_info``, ``key_mapping``, ``state_dict``, shards), load-time overrides,
``save_pretrained`` as ``Trainer`` calls it, and base paths. Tiny real models; no mocks.

The helpers at the top (`perturb`, `model_inputs`, `logits_and_tokens`, ...) are shared with the other checkpoint
test files (``from test_checkpoint import ...``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct

import pytest
import torch
from conftest import conversations
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

import theworld
from theworld import TheWorld, TheWorldForConditionalGeneration
from theworld.checkpoint_theworld import DIGEST_KEY, REMOTE_CODE_FILES

PROMPTS = ["Is the red circle left of the blue square?", "Describe."]
WORLD_PREFIXES = ("model.world_projector.", "model.world_boundary_embeddings.", "model.world_step_embeddings.")


# ----------------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------------
def perturb(model: TheWorld, seed: int) -> TheWorld:
    """Move every trainable tensor away from its initial value, so that a loader that forgot to apply a checkpoint
    tensor (leaving a fresh init or the base weight) cannot reproduce the saved model by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            if param.requires_grad:
                noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.05
                param.add_(noise.to(param.dtype))
    return model


def model_inputs(processor, images) -> dict:
    """Left-padded processor output for two prompts (one per image)."""
    return processor.apply_chat_template(
        conversations(images, PROMPTS),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
    )


@torch.no_grad()
def logits_and_tokens(model, inputs: dict, new_tokens: int = 6) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(logits (B, L, V), greedy tokens (B, L + new_tokens))`` of ``model`` on ``inputs`` (``new_tokens=0``: logits
    only).

    The world images go through the model's own world encoder once; its latents ``(B_w, z, T, h, w)`` then feed both
    the forward pass and generation (the encoder is the slowest part of a tiny model on CPU).
    """
    rest = dict(inputs)
    pixels = rest.pop("world_pixel_values", None)
    if pixels is not None:
        rest["world_latents"] = model.model.encode_world(pixels)
    logits = model(**rest).logits
    if not new_tokens:
        return logits, None
    tokens = model.generate(**rest, max_new_tokens=new_tokens, do_sample=False)
    return logits, tokens


def assert_same_inputs(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def saved_keys(folder) -> dict[str, tuple]:
    """``{name: shape}`` of every tensor in a checkpoint folder's safetensors files."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as f:
                for key in f.keys():
                    out[key] = tuple(f.get_slice(key).get_shape())
    return out


def header_length(path) -> int:
    """Bytes before the tensor data of a safetensors file: the 8-byte length prefix plus the JSON header."""
    with open(path, "rb") as f:
        return 8 + struct.unpack("<Q", f.read(8))[0]


def sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def folder_bytes(folder) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder)) if (folder / n).is_file()}


def dtype_report(model) -> dict[str, set]:
    """dtypes per part: Gemma (language model, SigLIP, projector, lm_head), the world encoder, the world modules."""
    parts: dict[str, set] = {"gemma": set(), "world_encoder": set(), "world": set()}
    for name, param in model.named_parameters():
        if name.startswith("model.world_encoder."):
            parts["world_encoder"].add(param.dtype)
        elif name.startswith(WORLD_PREFIXES):
            parts["world"].add(param.dtype)
        else:
            parts["gemma"].add(param.dtype)
    return parts


def assert_same_state(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(world_model_factory):
    """A default (projector-only) model with perturbed trainable tensors."""
    return perturb(world_model_factory(seed=3), seed=11)


@pytest.fixture(scope="module")
def partial_dir(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("partial") / "ckpt"
    trained.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def full_dir(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("full") / "ckpt"
    trained.save_pretrained(folder, save_full_model=True, max_shard_size="1MB")
    return folder


@pytest.fixture(scope="module")
def reference(trained, sample_images):
    inputs = model_inputs(trained.processor, sample_images)
    return inputs, *logits_and_tokens(trained, inputs)


# ----------------------------------------------------------------------------------------------------------------------
# Partial save: files, config, tensors at the floor size, model card, byte reproducibility
# ----------------------------------------------------------------------------------------------------------------------
def test_partial_save_writes_exactly_the_documented_files(partial_dir):
    expected = {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "checkpoint_config.json",
        "README.md",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        *REMOTE_CODE_FILES,
    }
    assert set(os.listdir(partial_dir)) == expected  # no staging leftovers, no pickle
    assert not [n for n in os.listdir(partial_dir.parent) if n.startswith(".")]  # nothing left next to it either
    installed = os.path.dirname(theworld.__file__)
    for name in REMOTE_CODE_FILES:
        assert sha256(partial_dir / name) == sha256(os.path.join(installed, name)), name


def test_partial_config_and_auto_maps(partial_dir, trained):
    config = json.loads((partial_dir / "config.json").read_text())
    assert config["model_type"] == "theworld"
    assert config["architectures"] == ["TheWorldForConditionalGeneration"]
    assert config["checkpoint_kind"] == "partial" and config["checkpoint_format_version"] == 2
    target = "modeling_theworld.TheWorldForConditionalGeneration"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_theworld.TheWorldConfig",
        "AutoModel": target,
        "AutoModelForImageTextToText": target,
        "AutoModelForCausalLM": target,
    }
    bases = config["base_models"]
    assert bases["gemma"]["name"] == trained.config.gemma_model_name and os.path.isabs(bases["gemma"]["name"])
    assert bases["cosmos"]["name"] == trained.config.cosmos_model_name
    assert set(bases["gemma"]["fingerprints"]) == {"model.safetensors"}
    assert set(bases["cosmos"]["fingerprints"]) == {"vae/diffusion_pytorch_model.safetensors"}
    assert config["world_config"]["z_dim"] == trained.config.world_config.z_dim  # skeleton buildable from config alone
    generation = json.loads((partial_dir / "generation_config.json").read_text())
    assert set(trained.config.world_token_ids) <= set(generation["suppress_tokens"])
    processor_config = json.loads((partial_dir / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_theworld.TheWorldProcessor"
    meta = json.loads((partial_dir / "checkpoint_config.json").read_text())
    assert meta["model_config"]["gemma_model_name"] == trained.config.gemma_model_name
    assert meta["model_config"]["cosmos_model_name"] == trained.config.cosmos_model_name
    assert meta["model_config"]["world_projection_mode"] == "spatial"
    assert meta["freeze_config"] == {
        "freeze_gemma_vision": True,
        "freeze_gemma_language": True,
        "freeze_cosmos_vae": True,
    }
    assert meta["trainable_parameters"] == sum(p.numel() for p in trained.parameters() if p.requires_grad)
    assert (partial_dir / "chat_template.jinja").read_text() == trained.processor.chat_template


def test_partial_holds_exactly_the_trainable_tensors_at_floor_size(partial_dir, trained):
    trainable = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    assert set(trainable) == {
        "model.world_projector.linear_1.weight",
        "model.world_projector.linear_1.bias",
        "model.world_projector.linear_2.weight",
        "model.world_projector.linear_2.bias",
        "model.world_boundary_embeddings.weight",
    }
    assert set(saved_keys(partial_dir)) == set(trainable)
    path = partial_dir / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        for name, param in trainable.items():
            assert torch.equal(f.get_tensor(name), param.detach()), name
        metadata = f.metadata()
    assert metadata["checkpoint_kind"] == "partial" and metadata["format"] == "pt" and DIGEST_KEY in metadata
    floor = sum(p.numel() * p.element_size() for p in trainable.values())
    assert os.path.getsize(path) - header_length(path) == floor  # the tensor bytes are exactly the floor
    assert os.path.getsize(path) <= 1.01 * floor + header_length(path)


def test_model_card(partial_dir, trained):
    card = (partial_dir / "README.md").read_text()
    trainable = sum(p.numel() for p in trained.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trained.parameters())
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert trained.config.gemma_model_name in card and trained.config.cosmos_model_name in card
    assert f"{trainable:,} of {total:,}" in card
    assert "`model.world_projector`" in card and "`model.world_boundary_embeddings`" in card
    assert "trust_remote_code=True" in card and 'revision="' in card and "Pin the revision" in card
    assert "AutoProcessor.from_pretrained" in card


def test_saving_the_same_model_twice_writes_the_same_bytes(trained, partial_dir, full_dir, tmp_path):
    trained.save_pretrained(tmp_path / "again")
    assert folder_bytes(tmp_path / "again") == folder_bytes(partial_dir)
    trained.save_pretrained(tmp_path / "full_again", save_full_model=True, max_shard_size="1MB")
    assert folder_bytes(tmp_path / "full_again") == folder_bytes(full_dir)


@pytest.mark.parametrize(
    "overrides, expect_prefixes",
    [
        ({"freeze_gemma_language": False}, ("model.language_model.",)),
        (
            {"freeze_gemma_vision": False, "freeze_cosmos_vae": False},
            ("model.vision_tower.", "model.multi_modal_projector.", "model.world_encoder."),
        ),
    ],
    ids=["language", "vision+encoder"],
)
def test_partial_with_unfrozen_parts(world_model_factory, sample_images, tmp_path, overrides, expect_prefixes):
    """The bases (hub key layout) and the checkpoint both hold the unfrozen tensors: the checkpoint's must win."""
    model = perturb(world_model_factory(seed=5, **overrides), seed=12)
    model.save_pretrained(tmp_path)
    keys = saved_keys(tmp_path)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}  # tied lm_head is listed once
    assert set(keys) == set(trainable)
    assert "lm_head.weight" not in keys  # tied to embed_tokens: never stored twice
    for prefix in expect_prefixes:
        assert any(k.startswith(prefix) for k in keys), prefix
    path = tmp_path / "model.safetensors"
    floor = sum(p.numel() * p.element_size() for p in trainable.values())
    assert os.path.getsize(path) - header_length(path) == floor

    loaded = TheWorld.from_pretrained(str(tmp_path))
    assert loaded.lm_head.weight.data_ptr() == loaded.model.language_model.embed_tokens.weight.data_ptr()
    assert_same_state(loaded, model)
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == set(trainable)
    inputs = model_inputs(model.processor, sample_images)
    assert torch.equal(logits_and_tokens(loaded, inputs, 0)[0], logits_and_tokens(model, inputs, 0)[0])


# ----------------------------------------------------------------------------------------------------------------------
# Full save
# ----------------------------------------------------------------------------------------------------------------------
def test_full_save_is_sharded_and_loads_without_the_bases(tiny_bases, sample_images, tmp_path):
    # A private copy of the bases (never the session fixture folders), deleted before loading.
    bases = tmp_path / "bases"
    shutil.copytree(tiny_bases.gemma, bases / "gemma")
    shutil.copytree(tiny_bases.cosmos, bases / "cosmos")
    torch.manual_seed(0)
    model = TheWorld.from_pretrained(
        str(bases / "gemma"), cosmos_model_name=str(bases / "cosmos"), world_image_size=64, world_pooling=1
    )
    perturb(model, seed=13)
    inputs = model_inputs(model.processor, sample_images)
    ref_logits, ref_tokens = logits_and_tokens(model, inputs)

    full, partial = tmp_path / "full", tmp_path / "partial"
    model.save_pretrained(full, save_full_model=True, max_shard_size="1MB")
    model.save_pretrained(partial)
    names = sorted(os.listdir(full))
    shards = [n for n in names if n.startswith("model-") and n.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors" not in names
    index = json.loads((full / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    assert set(saved_keys(full)) == set(index["weight_map"]) == set(expected)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())

    shutil.rmtree(bases)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    loaded = TheWorld.from_pretrained(str(full))
    assert loaded.config.checkpoint_kind == "full"
    got_logits, got_tokens = logits_and_tokens(loaded, model_inputs(loaded.processor, sample_images))
    assert torch.equal(got_logits, ref_logits) and torch.equal(got_tokens, ref_tokens)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.language_model.embed_tokens.weight.data_ptr()
    # The partial checkpoint of the same model needs the bases, and says so.
    with pytest.raises(OSError, match=r"Could not find the Gemma 3 base .*gemma.*save_full_model=True"):
        TheWorld.from_pretrained(str(partial))


def test_config_only_model_full_checkpoint_loads_offline_through_auto_classes(tmp_path):
    """Issue 8: ``TheWorldForConditionalGeneration(config)`` saved full while no base folder exists (its config names
    google/gemma-3-4b-it, unreachable offline) loads with nothing missing or unexpected and bit-identical logits."""
    from test_modeling_common import TESTER

    model = TESTER.get_model(seed=1)
    assert not os.path.exists(model.config.gemma_model_name)
    inputs = TESTER.batch(seed=2)
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_pretrained(tmp_path, save_full_model=True)
    for auto in (AutoModelForImageTextToText, AutoModel, AutoModelForCausalLM):
        loaded, info = auto.from_pretrained(tmp_path, output_loading_info=True)
        assert type(loaded) is TheWorldForConditionalGeneration
        assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
        with torch.no_grad():
            assert torch.equal(loaded(**inputs).logits, expected), auto.__name__
    eager = AutoModelForImageTextToText.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager" == eager.config.text_config._attn_implementation
    real = inputs["attention_mask"].bool()  # padded positions attend to nothing: their values are not compared
    with torch.no_grad():
        torch.testing.assert_close(eager(**inputs).logits[real], expected[real], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# TheWorld.from_pretrained reproduces the saved model; transformers' loading options are honoured
# ----------------------------------------------------------------------------------------------------------------------
def test_from_pretrained_and_from_checkpoint_reproduce_logits_and_generation(partial_dir, reference, sample_images):
    inputs, ref_logits, ref_tokens = reference
    loaded = TheWorld.from_pretrained(str(partial_dir))
    got_inputs = model_inputs(loaded.processor, sample_images)
    assert_same_inputs(got_inputs, inputs)
    logits, tokens = logits_and_tokens(loaded, got_inputs)
    assert torch.equal(logits, ref_logits)
    assert torch.equal(tokens, ref_tokens)
    assert not loaded.training
    assert loaded.name_or_path == str(partial_dir)
    trainable = {n for n, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {n for n in saved_keys(partial_dir)}
    assert_same_state(TheWorld.from_checkpoint(str(partial_dir)), loaded)  # the earlier API's name


class Records(logging.Handler):
    """Collects the records of a logger that does not propagate to the root (transformers' loggers)."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


def test_loading_is_quiet_when_clean(partial_dir, full_dir, world_model_factory, tmp_path):
    """No "LOAD REPORT" for clean partial/full loads, nor for the world modules a fresh build initialises on purpose;
    a real problem still raises (TheWorld's strict check), naming the key."""
    with Records("transformers") as records:
        TheWorld.from_pretrained(str(partial_dir))
        TheWorld.from_pretrained(str(full_dir))
        world_model_factory(seed=1)
    assert "LOAD REPORT" not in records.text() and "MISSING" not in records.text()
    broken = shutil.copytree(partial_dir, tmp_path / "broken")
    state = load_file(broken / "model.safetensors")
    del state["model.world_projector.linear_2.bias"]
    save_file(state, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"does not match the model: missing keys "
                                         r"\['model.world_projector.linear_2.bias'\]"):  # fmt: skip
        TheWorld.from_pretrained(str(broken))


def test_dtype_and_device_maps(partial_dir, full_dir, trained, reference):
    """bfloat16 with a device map: "cpu", "auto" and a dict naming the world modules too, partial and full."""
    inputs = reference[0]
    results = []
    world_map = {"model.language_model": "cpu", "model.vision_tower": "cpu", "model.multi_modal_projector": "cpu",
                 "model.world_encoder": "cpu", "model.world_projector": "cpu",
                 "model.world_boundary_embeddings": "cpu", "lm_head": "cpu"}  # fmt: skip
    loads = ((partial_dir, torch.bfloat16, "cpu"), (full_dir, "bfloat16", "auto"), (partial_dir, "bfloat16", "auto"),
             (full_dir, torch.bfloat16, world_map))  # fmt: skip
    for folder, dtype, device_map in loads:
        kind = folder.parent.name
        model = TheWorld.from_pretrained(str(folder), dtype=dtype, device_map=device_map)
        # float32 world modules (and world encoder: world_encoder_dtype="float32"), bfloat16 Gemma
        assert dtype_report(model) == {"gemma": {torch.bfloat16}, "world_encoder": {torch.float32},
                                       "world": {torch.float32}}, (kind, device_map)  # fmt: skip
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        with torch.no_grad():
            results.append(model(**inputs).logits)
    assert all(torch.equal(r, results[0]) for r in results)
    assert results[0].dtype == torch.bfloat16
    torch.testing.assert_close(results[0].float(), reference[1], atol=0.15, rtol=0.05)
    # The bf16 weights are the saved fp32 weights rounded once.
    reference_state = trained.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference_state[name].to(tensor.dtype)), name


def test_attn_implementation_and_loading_info(partial_dir, full_dir, reference):
    for folder in (partial_dir, full_dir):
        model, info = AutoModel.from_pretrained(str(folder), attn_implementation="eager", output_loading_info=True)
        assert info["missing_keys"] == set() and info["unexpected_keys"] == set() and not info["mismatched_keys"]
        assert model.config._attn_implementation == "eager" == model.config.text_config._attn_implementation
        with torch.no_grad():
            out = model(**reference[0], output_attentions=True)
        assert out.attentions is not None  # eager attention really ran
        real = reference[0]["attention_mask"].bool()  # padded positions attend to nothing: not compared
        torch.testing.assert_close(out.logits[real], reference[1][real], rtol=1e-5, atol=1e-5)
        plain = TheWorld.from_pretrained(str(folder))
        assert isinstance(plain, TheWorld)  # no info unless asked for


def test_key_mapping_and_in_memory_state_dict(full_dir, trained, reference, tmp_path):
    # A full checkpoint whose projector tensors were stored under other names loads with key_mapping=...
    renamed = shutil.copytree(full_dir, tmp_path / "renamed")
    for name in os.listdir(renamed):
        if name.startswith("model-"):
            path = renamed / name
            with safe_open(str(path), "pt") as f:
                metadata = f.metadata()
            state = load_file(path)
            state = {k.replace("model.world_projector.", "legacy_projector."): v for k, v in state.items()}
            save_file(state, path, metadata=metadata)
    index = json.loads((renamed / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k.replace("model.world_projector.", "legacy_projector."): v
                           for k, v in index["weight_map"].items()}  # fmt: skip
    (renamed / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"unexpected keys \['legacy_projector.linear_1.bias'.*missing keys"):
        TheWorld.from_pretrained(str(renamed))
    model = TheWorld.from_pretrained(str(renamed), key_mapping={r"^legacy_projector\.": "model.world_projector."})
    assert_same_state(model, trained)
    # transformers' in-memory form: from_pretrained(None, config=..., state_dict=...)
    model = TheWorld.from_pretrained(None, config=trained.config, state_dict=trained.state_dict())
    assert_same_state(model, trained)
    with torch.no_grad():
        assert torch.equal(model(**reference[0]).logits, reference[1])
    with pytest.raises(ValueError, match=r"needs config=TheWorldConfig\(\.\.\.\) and state_dict="):
        TheWorld.from_pretrained(None, config=trained.config)


# ----------------------------------------------------------------------------------------------------------------------
# Load-time overrides: the same through TheWorld.from_pretrained and AutoModel.from_pretrained
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("load", [TheWorld.from_pretrained, AutoModel.from_pretrained], ids=["TheWorld", "AutoModel"])
def test_load_time_overrides(load, partial_dir, full_dir, trained, reference):
    for folder in (partial_dir, full_dir):
        model = load(str(folder), freeze_gemma_language=False)  # 0.1.0's AutoModel failed here with "missing keys"
        assert model.config.freeze_gemma_language is False
        assert model.model.language_model.layers[0].self_attn.q_proj.weight.requires_grad
        assert_same_state(model, trained)
        model = load(str(folder), world_attention="causal", rollout_seed=3)
        assert (model.config.world_attention, model.config.rollout_seed) == ("causal", 3)
    for key, value in (("world_pooling", 2), ("enable_world", False), ("world_projection_mode", "channel")):
        with pytest.raises(ValueError, match=rf"{key} is an architecture field and cannot change at load time"):
            load(str(partial_dir), **{key: value})
    for key, value in (("world_placement", "after_bos"), ("rollout_mode", "autoregressive")):
        with pytest.raises(ValueError, match=rf"{key} cannot change at load time"):
            load(str(full_dir), **{key: value})
    same = load(str(partial_dir), world_pooling=1, world_placement="after_image")  # agreeing values are fine
    assert same.config.world_pooling == 1


def test_config_read_from_another_checkpoint(partial_dir, trained, world_model_factory, tmp_path):
    """AutoModel reads config.json before the weights: a config that belongs to another checkpoint (another folder's,
    or the folder was replaced by a concurrent save in between) is never mixed in. Left as it was saved, it is
    replaced by the folder's own; changed by the user, it is refused."""
    other = world_model_factory(seed=1, freeze_gemma_vision=False)
    other.save_pretrained(tmp_path / "other")
    foreign = TheWorld.config_class.from_pretrained(tmp_path / "other")
    model = TheWorld.from_pretrained(str(partial_dir), config=foreign)
    assert model.config.freeze_gemma_vision is True  # the folder's own config
    assert_same_state(model, trained)
    foreign.freeze_gemma_language = False
    with pytest.raises(ValueError, match=r"is not the config of .*concurrent save replaced"):
        TheWorld.from_pretrained(str(partial_dir), config=foreign)


# ----------------------------------------------------------------------------------------------------------------------
# save_pretrained as Trainer / accelerate call it
# ----------------------------------------------------------------------------------------------------------------------
def test_save_with_state_dict_and_safe_serialization(trained, partial_dir, tmp_path, caplog):
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    trained.save_pretrained(tmp_path / "a", state_dict=state, safe_serialization=True)
    assert folder_bytes(tmp_path / "a") == folder_bytes(partial_dir)
    with caplog.at_level(logging.WARNING):
        trained.save_pretrained(tmp_path / "b", state_dict=state, safe_serialization=False, is_main_process=True)
    assert "always safetensors" in caplog.text and not list((tmp_path / "b").glob("*.bin"))
    assert folder_bytes(tmp_path / "b") == folder_bytes(partial_dir)
    trained.save_pretrained(tmp_path / "c", is_main_process=False)  # other ranks write nothing
    assert not (tmp_path / "c").exists()
    trained.save_pretrained(tmp_path / "d", save_full_model=True, state_dict=state)
    assert set(saved_keys(tmp_path / "d")) == set(state) - {"lm_head.weight"}  # tied: stored once
    assert_same_state(TheWorld.from_pretrained(str(tmp_path / "d")), trained)
    wrapped = {f"module.{k}": v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"state_dict passed to save_pretrained lacks .*model.world_projector"):
        trained.save_pretrained(tmp_path / "e", state_dict=wrapped)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['shard_size'\]"):
        trained.save_pretrained(tmp_path / "f", shard_size="1MB")
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


# ----------------------------------------------------------------------------------------------------------------------
# Base paths
# ----------------------------------------------------------------------------------------------------------------------
def test_relative_base_paths_are_recorded_absolute_and_load_elsewhere(tiny_bases, tmp_path, monkeypatch, caplog):
    work = tmp_path / "work"
    shutil.copytree(tiny_bases.gemma, work / "bases" / "gemma")
    shutil.copytree(tiny_bases.cosmos, work / "bases" / "cosmos")
    monkeypatch.chdir(work)
    with caplog.at_level(logging.WARNING, logger="theworld.checkpoint_theworld"):
        model = TheWorld.from_pretrained("bases/gemma", cosmos_model_name="bases/cosmos", world_image_size=64)
    assert model.config.gemma_model_name == str(work / "bases" / "gemma")
    assert model.config.cosmos_model_name == str(work / "bases" / "cosmos")
    assert "not portable" in caplog.text
    model.save_pretrained("ckpt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = TheWorld.from_pretrained(str(work / "ckpt"))
    assert_same_state(loaded, model)
