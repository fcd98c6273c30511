"""Checkpoint saving (issue 3, points 1-3): partial and full saves, their exact contents and size, and reloading
with ``TheWorld.from_pretrained`` bit for bit, with dtype and device_map. Tiny real models; no mocks.

The helpers at the top (`perturb`, `model_inputs`, `logits_and_tokens`, ...) are shared with the other checkpoint
test files (``from test_checkpoint import ...``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from conftest import conversations
from safetensors import safe_open

import theworld
from theworld import TheWorld
from theworld.modeling_theworld import DIGEST_KEY, REMOTE_CODE_FILES, read_safetensors_header

PROMPTS = ["Is the red circle left of the blue square?", "Describe."]
GEMMA_MODULE_PREFIXES = ("model.", "lm_head.")


# ----------------------------------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------------------------------
def perturb(model: TheWorld, seed: int) -> TheWorld:
    """Move every trainable tensor away from its initial value, so that a loader that forgot to apply a checkpoint
    tensor (leaving a fresh init) cannot reproduce the saved model by accident."""
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
    """``(logits (B, L, V), greedy tokens (B, L + new_tokens))`` of ``model`` on ``inputs``.

    The world images go through the model's own VAE encoder once; its latents ``(B, z, T, h, w)`` then feed both the
    forward pass and generation (the VAE is the slowest part of a tiny model on CPU). ``new_tokens=0``: logits only.
    """
    rest = dict(inputs)
    pixels = rest.pop("world_pixel_values", None)
    if pixels is not None:
        rest["world_latents"] = model.encode_world(pixels)
    logits = model(**rest).logits
    if not new_tokens:
        return logits, None
    tokens = model.generate(**rest, max_new_tokens=new_tokens, do_sample=False)
    return logits, tokens


def assert_same_inputs(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def saved_keys(folder: str) -> dict[str, tuple]:
    """``{name: shape}`` of every tensor in a checkpoint folder's safetensors files."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), "pt") as f:
                for key in f.keys():
                    out[key] = tuple(f.get_slice(key).get_shape())
    return out


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def gemma_dtype_report(model) -> dict[str, set]:
    """dtypes per part: Gemma, Cosmos VAE, world modules."""
    parts: dict[str, set] = {"gemma": set(), "vae": set(), "world": set()}
    for name, param in model.named_parameters():
        if name.startswith(GEMMA_MODULE_PREFIXES):
            parts["gemma"].add(param.dtype)
        elif name.startswith("cosmos_vae."):
            parts["vae"].add(param.dtype)
        else:
            parts["world"].add(param.dtype)
    return parts


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(world_model_factory):
    """A default (projector-only) model with perturbed trainable tensors."""
    return perturb(world_model_factory(seed=3), seed=11)


@pytest.fixture(scope="module")
def partial_dir(trained, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("partial"))
    trained.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(trained, sample_images):
    inputs = model_inputs(trained.processor, sample_images)
    return inputs, *logits_and_tokens(trained, inputs)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Partial save
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
    installed = os.path.dirname(theworld.__file__)
    for name in REMOTE_CODE_FILES:
        assert sha256(os.path.join(partial_dir, name)) == sha256(os.path.join(installed, name)), name


def test_partial_config_and_auto_maps(partial_dir, trained):
    with open(os.path.join(partial_dir, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == "theworld"
    assert config["architectures"] == ["TheWorld"]
    assert config["checkpoint_kind"] == "partial"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_theworld.TheWorldConfig",
        "AutoModel": "modeling_theworld.TheWorld",
        "AutoModelForImageTextToText": "modeling_theworld.TheWorld",
    }
    assert config["gemma_model_name"] == trained.config.gemma_model_name
    assert config["vae_config"]["z_dim"] == trained.cosmos_vae.config.z_dim  # skeleton buildable from config alone
    assert set(config["base_fingerprints"]) == {"gemma", "cosmos_vae"}
    with open(os.path.join(partial_dir, "processor_config.json")) as f:
        processor_config = json.load(f)
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_theworld.TheWorldProcessor"
    with open(os.path.join(partial_dir, "checkpoint_config.json")) as f:
        meta = json.load(f)
    assert meta["model_config"]["gemma_model_name"] == trained.config.gemma_model_name
    assert meta["model_config"]["cosmos_model_name"] == trained.config.cosmos_model_name
    assert meta["model_config"]["world_projection_mode"] == "spatial"
    assert meta["freeze_config"] == {
        "freeze_gemma_vision": True,
        "freeze_gemma_language": True,
        "freeze_cosmos_vae": True,
    }
    assert meta["trainable_parameters"] == trained.get_trainable_parameters()[0]
    with open(os.path.join(partial_dir, "chat_template.jinja")) as f:
        assert f.read() == trained.processor.chat_template


def test_partial_holds_exactly_the_trainable_tensors_at_floor_size(partial_dir, trained):
    trainable = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    assert set(trainable) == {
        "world_projector.projection.0.weight",
        "world_projector.projection.0.bias",
        "world_projector.projection.2.weight",
        "world_projector.projection.2.bias",
        "world_boundary_embeddings.weight",
    }
    keys = saved_keys(partial_dir)
    assert set(keys) == set(trainable)
    with safe_open(os.path.join(partial_dir, "model.safetensors"), "pt") as f:
        for name, param in trainable.items():
            assert torch.equal(f.get_tensor(name), param.detach()), name
        metadata = f.metadata()
    assert metadata["checkpoint_kind"] == "partial"
    assert json.loads(metadata["base_fingerprints"]) == trained.config.base_fingerprints
    assert DIGEST_KEY in metadata
    path = os.path.join(partial_dir, "model.safetensors")
    _, header_length = read_safetensors_header(path)
    floor = sum(p.numel() * p.element_size() for p in trainable.values())
    assert os.path.getsize(path) <= 1.01 * floor + header_length
    assert os.path.getsize(path) - header_length == floor


def test_model_card(partial_dir, trained):
    with open(os.path.join(partial_dir, "README.md")) as f:
        card = f.read()
    trainable, total, _ = trained.get_trainable_parameters()
    assert card.startswith("---\n") and "library_name: transformers" in card
    assert trained.config.gemma_model_name in card and trained.config.cosmos_model_name in card
    assert f"{trainable:,} of {total:,}" in card
    assert "`world_projector`" in card and "`world_boundary_embeddings`" in card
    assert "trust_remote_code=True" in card and 'revision="' in card and "Pin the revision" in card
    assert "AutoProcessor.from_pretrained" in card


@pytest.mark.parametrize(
    "overrides, expect_prefixes",
    [
        ({"freeze_gemma_language": False}, ("model.language_model.",)),
        (
            {"freeze_gemma_vision": False, "freeze_cosmos_vae": False},
            ("model.vision_tower.", "model.multi_modal_projector.", "cosmos_vae.encoder.", "cosmos_vae.quant_conv."),
        ),
    ],
    ids=["language", "vision+vae"],
)
def test_partial_with_unfrozen_parts(world_model_factory, sample_images, tmp_path, overrides, expect_prefixes):
    model = perturb(world_model_factory(seed=5, **overrides), seed=12)
    model.save_pretrained(tmp_path)
    keys = saved_keys(str(tmp_path))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}  # tied lm_head is listed once
    assert set(keys) == set(trainable)
    assert "lm_head.weight" not in keys  # tied to embed_tokens: never stored twice
    for prefix in expect_prefixes:
        assert any(k.startswith(prefix) for k in keys), prefix
    path = os.path.join(tmp_path, "model.safetensors")
    _, header_length = read_safetensors_header(path)
    floor = sum(p.numel() * p.element_size() for p in trainable.values())
    assert os.path.getsize(path) <= 1.01 * floor + header_length

    loaded = TheWorld.from_pretrained(str(tmp_path))
    assert loaded.lm_head.weight.data_ptr() == loaded.model.language_model.embed_tokens.weight.data_ptr()
    loaded_state = loaded.state_dict()
    for name, param in model.state_dict().items():
        assert torch.equal(loaded_state[name], param), name
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == set(trainable)
    inputs = model_inputs(model.processor, sample_images)  # every tensor is equal; the logits too
    assert torch.equal(logits_and_tokens(loaded, inputs, 0)[0], logits_and_tokens(model, inputs, 0)[0])


# ----------------------------------------------------------------------------------------------------------------------
# 2. Full save
# ----------------------------------------------------------------------------------------------------------------------
def test_full_save_is_sharded_and_loads_without_the_bases(tiny_bases, sample_images, tmp_path):
    # A private copy of the bases (never the session fixture folders), deleted before loading.
    bases = tmp_path / "bases"
    shutil.copytree(tiny_bases.gemma, bases / "gemma")
    shutil.copytree(tiny_bases.cosmos, bases / "cosmos")
    torch.manual_seed(0)
    model = TheWorld.from_pretrained(str(bases / "gemma"), cosmos_model_name=str(bases / "cosmos"), world_image_size=64)
    perturb(model, seed=13)
    inputs = model_inputs(model.processor, sample_images)
    ref_logits, ref_tokens = logits_and_tokens(model, inputs)

    full, partial = tmp_path / "full", tmp_path / "partial"
    model.save_pretrained(full, save_full_model=True, max_shard_size="1MB")
    model.save_pretrained(partial)
    names = sorted(os.listdir(full))
    shards = [n for n in names if n.startswith("model-") and n.endswith(".safetensors")]
    assert len(shards) > 1 and "model.safetensors" not in names
    with open(full / "model.safetensors.index.json") as f:
        index = json.load(f)
    assert sorted(set(index["weight_map"].values())) == shards
    expected = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    keys = saved_keys(str(full))
    assert set(keys) == set(index["weight_map"]) == set(expected)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())
    for shard in shards:
        assert os.path.getsize(full / shard) < 1_100_000 or len(read_safetensors_header(str(full / shard))[0]) == 2

    shutil.rmtree(bases)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    loaded = TheWorld.from_pretrained(str(full))
    assert loaded.config.checkpoint_kind == "full"
    got_logits, got_tokens = logits_and_tokens(loaded, model_inputs(loaded.processor, sample_images))
    assert torch.equal(got_logits, ref_logits) and torch.equal(got_tokens, ref_tokens)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.language_model.embed_tokens.weight.data_ptr()
    # The partial checkpoint of the same model needs the bases, and says so.
    with pytest.raises(OSError, match="Could not load the Gemma base .*gemma.*save_full_model=True"):
        TheWorld.from_pretrained(str(partial))


# ----------------------------------------------------------------------------------------------------------------------
# 3. TheWorld.from_pretrained reproduces the saved model; dtype and device_map are honoured
# ----------------------------------------------------------------------------------------------------------------------
def test_from_pretrained_and_from_checkpoint_reproduce_logits_and_generation(partial_dir, reference, sample_images):
    inputs, ref_logits, ref_tokens = reference
    loaded = TheWorld.from_pretrained(partial_dir)
    got_inputs = model_inputs(loaded.processor, sample_images)
    assert_same_inputs(got_inputs, inputs)
    logits, tokens = logits_and_tokens(loaded, got_inputs)
    assert torch.equal(logits, ref_logits)
    assert torch.equal(tokens, ref_tokens)
    with torch.no_grad():  # also through the model's own world_pixel_values path
        assert torch.equal(loaded(**got_inputs).logits, ref_logits)
    assert not loaded.training
    assert loaded.get_trainable_parameters()[0] == sum(p.numel() for p in loaded.world_projector.parameters()) + (
        loaded.world_boundary_embeddings.weight.numel()
    )
    alias = TheWorld.from_checkpoint(partial_dir)  # the earlier API's name
    reference_state = loaded.state_dict()
    assert all(torch.equal(v, reference_state[k]) for k, v in alias.state_dict().items())


def test_dtype_and_device_map_partial_and_full(partial_dir, trained, sample_images, tmp_path):
    full = str(tmp_path / "full")
    trained.save_pretrained(full, save_full_model=True)
    inputs = model_inputs(trained.processor, sample_images)
    with torch.no_grad():
        fp32_logits = trained(**inputs).logits
    results = []
    for folder, dtype in ((partial_dir, torch.bfloat16), (full, "bfloat16")):
        model = TheWorld.from_pretrained(folder, dtype=dtype, device_map="cpu")
        parts = gemma_dtype_report(model)
        assert parts == {"gemma": {torch.bfloat16}, "vae": {torch.bfloat16}, "world": {torch.float32}}, folder
        assert all(p.device.type == "cpu" for p in model.parameters())
        with torch.no_grad():
            results.append(model(**inputs).logits)
    assert torch.equal(results[1], results[0])  # partial == full; dtype object == string
    assert results[0].dtype == torch.bfloat16
    torch.testing.assert_close(results[0].float(), fp32_logits, atol=0.15, rtol=0.05)
    # The bf16 weights are the saved fp32 weights rounded once (world modules unchanged, still fp32).
    reference_state = trained.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, reference_state[name].to(tensor.dtype)), name
