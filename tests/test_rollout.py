"""World rollout in the full model: the Cosmos DiT's predicted latent frames become more world tokens.

theworld 0.1.0's guarantees, on the tiny seeded bases (real diffusers DiT, scheduler and T5; real files): the
``num_world_steps`` bound, the DiT left alone at k = 0, token counts x (1 + k), latents ``(B, z, 1 + k, h, w)``, no T5
once the prompt embeddings are cached, and partial checkpoints that carry those embeddings. That the rollout equals
diffusers' Video2World pipeline is tested in ``test_rollout_pipeline.py``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys

import pytest
import torch
from conftest import conversations
from safetensors import safe_open

from theworld import TheWorld, TheWorldConfig
from theworld.rollout_theworld import TEXT_SEQUENCE_LENGTH

TOKENS_PER_FRAME = 64  # the factory's 64 px world image, pooling 1: an 8 x 8 latent grid, spatial mode
STEPS = 2  # rollout_num_inference_steps: the smallest valid schedule keeps this file fast
T5_LOG = "Running the Cosmos T5 text encoder"


def _inputs(model: TheWorld, images, texts):
    return model.processor.apply_chat_template(
        conversations(images, texts), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", padding=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model_k1(world_model_factory):
    """One rollout step (2 denoising steps, seed 0). Tests do not change it."""
    return world_model_factory(num_world_steps=1, rollout_num_inference_steps=STEPS)


@pytest.fixture(scope="module")
def inputs_k1(model_k1, sample_images):
    return _inputs(model_k1, sample_images, ["Is the red circle left of the blue square?", "Describe."])


# Files opened (through Python) while the list is set: an audit hook, nothing is patched.
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _opened_under(root, fn):
    """Run ``fn()``; return ``(result, sorted paths opened under root, relative to it)``."""
    global _OPENED
    _OPENED = []
    try:
        result = fn()
    finally:
        opened, _OPENED = _OPENED, None
    root = os.path.realpath(root)
    inside = {os.path.realpath(p) for p in opened if os.path.realpath(p).startswith(root + os.sep)}
    return result, sorted(os.path.relpath(p, root) for p in inside)


def _copy_without(cosmos: str, target, *parts: str) -> str:
    shutil.copytree(cosmos, target, ignore=shutil.ignore_patterns(*parts) if parts else None)
    return str(target)


# ----------------------------------------------------------------------------------------------------------------------
# Token counts x (1 + k), latents (B, z, 1 + k, h, w)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 2])
def test_token_counts_and_latent_frames(k, world_model, model_k1, world_model_factory, sample_images):
    model = {0: world_model, 1: model_k1}.get(k) or world_model_factory(num_world_steps=k, rollout_num_inference_steps=STEPS)
    n = (1 + k) * TOKENS_PER_FRAME
    config = model.config
    assert (config.num_world_frames, config.num_world_tokens, model.processor.num_world_tokens) == (1 + k, n, n)
    batch = _inputs(model, sample_images, ["Left or right?", "Describe."])
    assert (batch["input_ids"] == config.world_token_id).sum(-1).tolist() == [n, n]
    with torch.no_grad():
        latents = model.encode_world(batch["world_pixel_values"])
        assert tuple(latents.shape) == (2, config.latent_channels, 1 + k, 8, 8)
        features = model.get_world_features(world_latents=latents)
        assert tuple(features.shape) == (2, n, config.text_config.hidden_size)
        cached = {name: value for name, value in batch.items() if name != "world_pixel_values"}
        out = model(**cached, world_latents=latents)
    assert out.logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(out.logits).all()
    inner = model.model
    if k:
        assert tuple(inner.world_step_embeddings.weight.shape) == (1 + k, config.text_config.hidden_size)
        text_dim = config.rollout_transformer_config["text_embed_dim"]
        assert tuple(inner.world_rollout.prompt_embeds.shape) == (1, TEXT_SEQUENCE_LENGTH, text_dim)
    else:
        assert getattr(inner, "world_step_embeddings", None) is None and getattr(inner, "world_rollout", None) is None


def test_predicted_frames_follow_the_current_frame(world_model, model_k1, inputs_k1):
    """Frame 0 is exactly the k = 0 model's latent; the predicted frame is new, finite, on the normalised scale."""
    with torch.no_grad():
        current = world_model.encode_world(inputs_k1["world_pixel_values"])
        latents = model_k1.encode_world(inputs_k1["world_pixel_values"])
        again = model_k1.encode_world(inputs_k1["world_pixel_values"])
    assert torch.equal(latents[:, :, :1], current)
    assert torch.equal(latents, again)  # deterministic (seeded noise)
    predicted = latents[:, :, 1]
    assert torch.isfinite(predicted).all() and not torch.allclose(predicted, current[:, :, 0])
    assert 0.05 < float(predicted.std()) < 10.0  # not the sigma_max = 80 noise scale
    assert not torch.allclose(predicted[0], predicted[1])  # each sample's prediction follows its own frame


# ----------------------------------------------------------------------------------------------------------------------
# The bound, and the DiT left alone at k = 0
# ----------------------------------------------------------------------------------------------------------------------
def test_rollout_bound_is_a_value_error_naming_num_world_steps(tiny_bases):
    with pytest.raises(ValueError, match=r"num_world_steps must lie in \[0, max_world_steps=4\], got 5\. .*max_world_steps"):
        TheWorldConfig(num_world_steps=5, max_world_steps=4)
    with pytest.raises(ValueError, match=r"num_world_steps must lie in \[0, max_world_steps=16\], got 17"):
        TheWorld.from_pretrained(tiny_bases.gemma, cosmos_model_name=tiny_bases.cosmos, num_world_steps=17)


def test_dit_is_not_loaded_at_k_0(world_model, tiny_bases, tmp_path):
    assert getattr(world_model.model, "world_rollout", None) is None
    assert "CosmosTransformer3DModel" not in {type(m).__name__ for m in world_model.modules()}
    assert not [key for key in world_model.state_dict() if "world_rollout" in key]
    # a Cosmos copy with nothing but the VAE builds a k = 0 model, and only vae/ is read
    cosmos = _copy_without(tiny_bases.cosmos, tmp_path / "cosmos", "transformer", "scheduler", "text_encoder", "tokenizer")
    model, opened = _opened_under(cosmos, lambda: TheWorld.from_pretrained(
        tiny_bases.gemma, cosmos_model_name=cosmos, world_image_size=64))  # fmt: skip
    assert getattr(model.model, "world_rollout", None) is None
    assert opened and all(path.startswith("vae" + os.sep) for path in opened), opened
    # ... while rollout needs the DiT and says where it looked
    for kw in ({"num_world_steps": 1}, {"load_full_cosmos_pipeline": True}):
        with pytest.raises(FileNotFoundError, match=r"No transformer/config\.json in the Cosmos source"):
            TheWorld.from_pretrained(tiny_bases.gemma, cosmos_model_name=cosmos, world_image_size=64, **kw)


# ----------------------------------------------------------------------------------------------------------------------
# T5 runs once per Cosmos revision
# ----------------------------------------------------------------------------------------------------------------------
def test_fresh_rollout_build_with_a_warm_cache_does_not_load_t5(tiny_bases, tmp_path, caplog):
    """A hub repo (an offline hub cache here): the second fresh build reads the cached prompt embeddings, so the
    repo's text_encoder/ can be gone."""
    caplog.set_level(logging.INFO, logger="theworld.rollout_theworld")
    hub = tmp_path / "hub"
    commit = hashlib.sha1(str(tmp_path).encode()).hexdigest()  # unique: the prompt cache is keyed by it
    repo = hub / "models--theworld-test--cosmos-rollout"
    snapshot = _copy_without(tiny_bases.cosmos, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    def build():
        return TheWorld.from_pretrained(
            tiny_bases.gemma, cosmos_model_name="theworld-test/cosmos-rollout", cache_dir=str(hub),
            local_files_only=True, world_image_size=64, world_pooling=1, num_world_steps=1,
            rollout_num_inference_steps=STEPS,
        )  # fmt: skip

    first = build()
    assert first.config.cosmos_revision == commit
    assert sum(T5_LOG in r.getMessage() for r in caplog.records) == 1
    shutil.rmtree(os.path.join(snapshot, "text_encoder"))
    shutil.rmtree(os.path.join(snapshot, "tokenizer"))
    second = build()
    assert sum(T5_LOG in r.getMessage() for r in caplog.records) == 1  # not again
    rollout_a, rollout_b = first.model.world_rollout, second.model.world_rollout
    assert torch.equal(rollout_a.prompt_embeds, rollout_b.prompt_embeds)
    assert torch.equal(rollout_a.negative_prompt_embeds, rollout_b.negative_prompt_embeds)
    assert torch.count_nonzero(rollout_b.prompt_embeds) > 0


# ----------------------------------------------------------------------------------------------------------------------
# Training and partial checkpoints with k > 0
# ----------------------------------------------------------------------------------------------------------------------
def test_partial_checkpoint_with_rollout_round_trips(world_model_factory, sample_images, tiny_bases, tmp_path):
    model = world_model_factory(seed=1, num_world_steps=2, rollout_num_inference_steps=STEPS)
    inner = model.model
    batch = _inputs(model, sample_images, ["Where is it?", "Describe."])
    steps = inner.world_step_embeddings.weight
    assert steps.requires_grad
    assert not any(p.requires_grad for p in inner.world_rollout.parameters())
    model.train()
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch, labels=labels).loss.backward()
    assert steps.grad is not None and bool((steps.grad.abs().sum(-1) > 0).all())  # every frame's row learns
    assert all(p.grad is None for p in inner.world_rollout.parameters())
    with torch.no_grad():  # stand-ins for an optimizer step
        steps.add_(torch.randn_like(steps))
        inner.world_projector.linear_1.weight.mul_(1.5)
    model.zero_grad()
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits

    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        saved = {key: f.get_tensor(key) for key in f.keys()}
    assert set(saved) == {
        "model.world_projector.linear_1.weight", "model.world_projector.linear_1.bias",
        "model.world_projector.linear_2.weight", "model.world_projector.linear_2.bias",
        "model.world_boundary_embeddings.weight", "model.world_step_embeddings.weight",
        "model.world_rollout.prompt_embeds", "model.world_rollout.negative_prompt_embeds",
    }  # fmt: skip
    assert torch.equal(saved["model.world_step_embeddings.weight"], steps.detach())
    assert torch.equal(saved["model.world_rollout.prompt_embeds"], inner.world_rollout.prompt_embeds)
    assert (ckpt / "rollout_theworld.py").is_file()

    # Loading reads the DiT but never T5: a Cosmos copy without text_encoder/ and tokenizer/ serves.
    cosmos = _copy_without(tiny_bases.cosmos, tmp_path / "cosmos-no-t5", "text_encoder", "tokenizer")
    loaded = TheWorld.from_pretrained(str(ckpt), cosmos_model_name=cosmos)
    assert loaded.config.num_world_steps == 2 and loaded.config.num_world_tokens == 3 * TOKENS_PER_FRAME
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, reference)


def test_rollout_in_bf16(world_model_factory, model_k1, inputs_k1):
    model = world_model_factory(num_world_steps=1, rollout_num_inference_steps=STEPS, dtype=torch.bfloat16)
    inner = model.model
    assert inner.world_rollout.transformer.proj_out.weight.dtype == torch.bfloat16
    assert {p.dtype for p in inner.world_encoder.parameters()} == {torch.float32}  # world_encoder_dtype="float32"
    wpv = inputs_k1["world_pixel_values"]
    with torch.no_grad():
        bf16 = model.encode_world(wpv)
        fp32 = model_k1.encode_world(wpv)
        logits = model(**inputs_k1).logits
    torch.testing.assert_close(bf16[:, :, 0].float(), fp32[:, :, 0], rtol=1e-4, atol=1e-4)  # fp32 encoder: same frame
    cos = torch.nn.functional.cosine_similarity(bf16[:, :, 1].float().flatten(), fp32[:, :, 1].flatten(), dim=0)
    assert cos > 0.98, cos
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_fresh_rollout_build_starts_at_k_0_with_float32_world_parts(world_model_factory):
    model = world_model_factory(num_world_steps=1, rollout_num_inference_steps=STEPS, dtype=torch.bfloat16)
    inner = model.model
    assert torch.count_nonzero(inner.world_step_embeddings.weight) == 0  # zero init: starts as the k = 0 model
    for layer in (inner.world_projector.linear_1, inner.world_projector.linear_2):
        fan_out, fan_in = layer.weight.shape
        xavier_std = (2.0 / (fan_in + fan_out)) ** 0.5  # random_projection_init=False
        assert abs(float(layer.weight.detach().float().std()) / xavier_std - 1) < 0.2
    for name in ("world_projector", "world_boundary_embeddings", "world_step_embeddings"):
        assert {p.dtype for p in getattr(inner, name).parameters()} == {torch.float32}, name
