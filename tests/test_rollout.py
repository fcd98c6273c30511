"""World rollout (issue 4): the Cosmos DiT predicts future latent frames that become more world tokens.

Everything runs on the tiny seeded Cosmos-Predict2 pipeline from ``theworld.tiny`` (real diffusers DiT, scheduler,
T5), real files and real subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import conversations
from safetensors.torch import load_file, save_file

from theworld import TheWorld, TheWorldConfig
from theworld.rollout_theworld import PROMPT_ROWS, TEXT_SEQUENCE_LENGTH

TOKENS_PER_FRAME = 64  # 64 px world image -> 8 x 8 latent grid, spatial mode


def _inputs(model: TheWorld, images, texts):
    return model.processor.apply_chat_template(
        conversations(images, texts), add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", padding=True,
    )


@pytest.fixture(scope="module")
def model_k1(world_model_factory):
    """A TheWorld with one rollout step (default 4 denoising steps, seed 0). Tests restore what they change."""
    return world_model_factory(num_world_steps=1)


@pytest.fixture(scope="module")
def inputs_k1(model_k1, sample_images):
    return _inputs(model_k1, sample_images, ["Is the red circle left of the blue square?", "Describe."])


# Files opened while the flag is set (an audit hook: nothing is patched).
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _opened_under(root, fn):
    """Run ``fn()``; return ``(result, sorted relative paths opened under root)``."""
    global _OPENED
    _OPENED = []
    try:
        result = fn()
    finally:
        opened, _OPENED = _OPENED, None
    root = os.path.realpath(root)
    rel = {os.path.relpath(os.path.realpath(p), root) for p in opened if os.path.realpath(p).startswith(root + os.sep)}
    return result, sorted(rel)


# ----------------------------------------------------------------------------------------------------------------------
# token counts
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, 1, 3])
def test_token_counts_config_processor_and_forward(k, world_model, model_k1, world_model_factory, sample_images):
    model = {0: world_model, 1: model_k1}.get(k) or world_model_factory(num_world_steps=k, rollout_num_inference_steps=2)
    n = (1 + k) * TOKENS_PER_FRAME
    assert model.config.num_world_frames == 1 + k
    assert model.config.num_world_tokens == n
    assert model.processor.num_world_tokens == n
    batch = _inputs(model, sample_images, ["Left or right?", "Describe."])
    counts = (batch["input_ids"] == model.config.world_token_id).sum(-1)
    assert counts.tolist() == [n, n]
    with torch.no_grad():
        latents = model.encode_world(batch["world_pixel_values"])
        assert tuple(latents.shape) == (2, 16, 1 + k, 8, 8)
        assert tuple(model.world_features(latents).shape) == (2, n, model.config.text_config.hidden_size)
        out = model(**{name: v for name, v in batch.items() if name != "world_pixel_values"}, world_latents=latents)
    assert out.logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(out.logits).all()
    if k:
        assert tuple(model.world_step_embeddings.weight.shape) == (1 + k, model.config.text_config.hidden_size)
        assert model.world_rollout.prompt_embeds.shape == (1, PROMPT_ROWS, model.config.transformer_config["text_embed_dim"])
    else:
        assert getattr(model, "world_step_embeddings", None) is None


def test_predicted_frames_follow_the_current_frame(world_model, model_k1, inputs_k1):
    """Frame 0 is exactly the k = 0 model's latent; predicted frames are new, finite, in the normalised scale."""
    wpv = inputs_k1["world_pixel_values"]
    with torch.no_grad():
        current = world_model.encode_world(wpv)
        latents = model_k1.encode_world(wpv)
    assert torch.equal(latents[:, :, :1], current)
    predicted = latents[:, :, 1]
    assert torch.isfinite(predicted).all()
    assert not torch.allclose(predicted, current[:, :, 0])
    assert 0.1 < float(predicted.std()) < 10.0  # the normalised latent scale, not the sigma_max = 80 noise scale
    # each sample's prediction depends on its own frame
    assert not torch.allclose(predicted[0], predicted[1])


# ----------------------------------------------------------------------------------------------------------------------
# determinism, seed, steps, linear cost
# ----------------------------------------------------------------------------------------------------------------------
def _dit_calls(model: TheWorld, fn):
    calls = []
    handle = model.world_rollout.transformer.register_forward_hook(lambda m, a, o: calls.append(a))
    try:
        return fn(), len(calls)
    finally:
        handle.remove()


def test_rollout_is_deterministic_and_seeded(model_k1, inputs_k1):
    cfg = model_k1.config
    wpv = inputs_k1["world_pixel_values"]
    with torch.no_grad():
        a = model_k1.encode_world(wpv)
        torch.manual_seed(123)  # the global RNG plays no part
        b = model_k1.encode_world(wpv)
        logits_a = model_k1(**inputs_k1).logits
        logits_b = model_k1(**inputs_k1).logits
    assert torch.equal(a, b)
    assert torch.equal(logits_a, logits_b)
    try:
        cfg.rollout_seed = 1
        with torch.no_grad():
            c = model_k1.encode_world(wpv)
            logits_c = model_k1(**inputs_k1).logits
    finally:
        cfg.rollout_seed = 0
    assert torch.equal(c[:, :, :1], a[:, :, :1])
    assert not torch.allclose(c[:, :, 1:], a[:, :, 1:])
    assert not torch.allclose(logits_c, logits_a)


def test_denoising_steps_are_configurable_and_cost_is_linear_in_k(model_k1, inputs_k1):
    cfg = model_k1.config
    with torch.no_grad():
        current = model_k1.encode_world(inputs_k1["world_pixel_values"])[:, :, :1]
        four, calls4 = _dit_calls(model_k1, lambda: model_k1.rollout_latents(current, num_steps=3))
        try:
            cfg.rollout_num_inference_steps = 2
            two, calls2 = _dit_calls(model_k1, lambda: model_k1.rollout_latents(current, num_steps=3))
        finally:
            cfg.rollout_num_inference_steps = 4
        one_step, _ = _dit_calls(model_k1, lambda: model_k1.rollout_latents(current, num_steps=1))
    # one DiT call per denoising step per predicted frame, on a fixed 2-frame window: cost linear in k
    assert (calls4, calls2) == (3 * 4, 3 * 2)
    assert tuple(four.shape) == (2, 16, 4, 8, 8)
    assert not torch.allclose(two[:, :, 1:], four[:, :, 1:])
    # autoregressive: frame j does not depend on how many frames follow it
    assert torch.equal(one_step, four[:, :, :2])
    with pytest.raises(ValueError, match="rollout_num_inference_steps=1 is too small"):
        try:
            cfg.rollout_num_inference_steps = 1
            model_k1.rollout_latents(current)
        finally:
            cfg.rollout_num_inference_steps = 4


def test_rollout_runs_without_grad_but_the_current_frame_keeps_it(model_k1, inputs_k1):
    latents = model_k1.encode_world(inputs_k1["world_pixel_values"])[:, :, :1].clone().requires_grad_(True)
    out = model_k1.rollout_latents(latents)
    assert out.requires_grad
    out.sum().backward()
    assert torch.equal(latents.grad, torch.ones_like(latents))  # predicted frames are constants w.r.t. the input
    assert not any(p.requires_grad for p in model_k1.world_rollout.parameters())


# ----------------------------------------------------------------------------------------------------------------------
# k = 0 never touches the DiT; k > max_world_steps
# ----------------------------------------------------------------------------------------------------------------------
def test_dit_is_not_loaded_when_k_is_0(world_model, tiny_bases, tmp_path):
    names = {type(m).__name__ for m in world_model.modules()}
    assert "CosmosTransformer3DModel" not in names
    assert getattr(world_model, "world_rollout", None) is None
    assert not [k for k in world_model.state_dict() if k.startswith("world_rollout")]

    cosmos = tmp_path / "cosmos"  # a private copy without anything but the VAE
    shutil.copytree(tiny_bases.cosmos, cosmos)
    for sub in ("transformer", "scheduler", "text_encoder", "tokenizer"):
        shutil.rmtree(cosmos / sub)
    model = TheWorld.from_pretrained(tiny_bases.gemma, cosmos_model_name=str(cosmos), world_image_size=64)
    assert getattr(model, "world_rollout", None) is None
    model.save_pretrained(tmp_path / "ckpt")
    loaded, opened = _opened_under(cosmos, lambda: TheWorld.from_pretrained(str(tmp_path / "ckpt")))
    assert opened == ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    assert getattr(loaded, "world_rollout", None) is None
    # ...while rollout needs the DiT and says where it looked
    for kw in ({"num_world_steps": 1}, {"load_full_cosmos_pipeline": True}):
        with pytest.raises(FileNotFoundError, match=r"No transformer/config\.json in the Cosmos source"):
            TheWorld.from_pretrained(tiny_bases.gemma, cosmos_model_name=str(cosmos), world_image_size=64, **kw)


def test_load_full_cosmos_pipeline_loads_the_dit_with_k_0(world_model_factory, tiny_bases, sample_images):
    model = world_model_factory(load_full_cosmos_pipeline=True)
    assert model.config.num_world_tokens == TOKENS_PER_FRAME
    assert type(model.world_rollout.transformer).__name__ == "CosmosTransformer3DModel"
    assert set(model.config.base_fingerprints) >= {"cosmos_transformer", "cosmos_text_encoder"}
    wpv = model.processor.preprocess_world_images(sample_images)
    with torch.no_grad():
        assert model.encode_world(wpv).shape[2] == 1  # k = 0: no rollout in the forward pass
        assert model.rollout_latents(model.encode_world(wpv), num_steps=2).shape[2] == 3  # but available by hand


def test_clear_error_for_k_above_max_world_steps(tiny_bases):
    with pytest.raises(ValueError, match=r"num_world_steps must be an int in \[0, max_world_steps=4\], got 5\. .*"
                       r"raise max_world_steps"):
        TheWorldConfig(num_world_steps=5, max_world_steps=4)
    with pytest.raises(ValueError, match=r"num_world_steps .*max_world_steps=16\], got 17"):
        TheWorld.from_pretrained(tiny_bases.gemma, cosmos_model_name=tiny_bases.cosmos, num_world_steps=17)


def test_cached_latents_with_the_wrong_frame_count_are_refused(model_k1, world_model, inputs_k1):
    with torch.no_grad():
        one_frame = world_model.encode_world(inputs_k1["world_pixel_values"])
        with pytest.raises(ValueError, match=r"world_latents hold 1 frame\(s\) but this model \(num_world_steps=1\) needs 2"):
            model_k1(**{k: v for k, v in inputs_k1.items() if k != "world_pixel_values"}, world_latents=one_frame)
        cached = model_k1.encode_world(inputs_k1["world_pixel_values"])
        direct = model_k1(**inputs_k1).logits
        via_cache = model_k1(**{k: v for k, v in inputs_k1.items() if k != "world_pixel_values"}, world_latents=cached)
    assert torch.equal(direct, via_cache.logits)


# ----------------------------------------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------------------------------------
def test_generation_with_rollout_batched_equals_unbatched(model_k1, sample_images):
    texts = ["Is the red circle left of the blue square?", "Describe."]
    batch = _inputs(model_k1, sample_images, texts)
    assert batch["attention_mask"][1, 0] == 0  # left padded
    kw = dict(max_new_tokens=6, do_sample=False)
    together = model_k1.generate(**batch, **kw)[:, batch["input_ids"].shape[1] :]
    for i in range(2):
        alone = _inputs(model_k1, sample_images[i : i + 1], texts[i : i + 1])
        tokens = model_k1.generate(**alone, **kw)[:, alone["input_ids"].shape[1] :]
        assert tokens.tolist() == together[i : i + 1].tolist()
    assert together.shape == (2, 6)
    # the rolled-out latents are batch-invariant too (same noise for every sample)
    with torch.no_grad():
        both = model_k1.encode_world(batch["world_pixel_values"])
        first = model_k1.encode_world(batch["world_pixel_values"][:1])
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# training, checkpoints, remote code
# ----------------------------------------------------------------------------------------------------------------------
_AUTOMODEL_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTheWorld(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "theworld" or name.startswith("theworld."):
                raise ImportError("theworld is blocked in this process: only the checkpoint's remote code may run")
            return None

    sys.meta_path.insert(0, BlockTheWorld())
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel

    ckpt, inputs_file, out_file = sys.argv[1:4]
    model = AutoModel.from_pretrained(ckpt, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    assert type(model.world_rollout).__module__.endswith("rollout_theworld"), type(model.world_rollout).__module__
    assert not [m for m in sys.modules if m == "theworld" or m.startswith("theworld.")]
    with torch.no_grad():
        logits = model(**load_file(inputs_file)).logits
    save_file({"logits": logits.contiguous()}, out_file)
    """
)


def test_step_embeddings_train_save_and_round_trip_bit_for_bit(world_model_factory, sample_images, tiny_bases, tmp_path):
    model = world_model_factory(seed=1, num_world_steps=2, rollout_num_inference_steps=3)
    batch = _inputs(model, sample_images, ["Where is it?", "Describe."])
    emb = model.world_step_embeddings.weight
    assert emb.requires_grad and torch.count_nonzero(emb) == 0  # zero init: starts as the k = 0 model
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    model(**batch, labels=labels).loss.backward()
    assert emb.grad is not None and bool((emb.grad.abs().sum(-1) > 0).all())  # every frame's row gets a gradient
    assert all(p.grad is None for p in model.world_rollout.parameters())
    with torch.no_grad():
        emb.add_(torch.randn_like(emb))  # stand-in for an optimizer step
        model.world_projector.projection[0].weight.mul_(1.5)
    model.zero_grad()
    model.eval()
    with torch.no_grad():
        reference = model(**batch).logits

    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    saved = load_file(ckpt / "model.safetensors")
    assert set(saved) == {
        "world_projector.projection.0.weight", "world_projector.projection.0.bias",
        "world_projector.projection.2.weight", "world_projector.projection.2.bias",
        "world_boundary_embeddings.weight", "world_step_embeddings.weight", "world_rollout.prompt_embeds",
    }
    assert torch.equal(saved["world_step_embeddings.weight"], emb.detach())
    assert torch.equal(saved["world_rollout.prompt_embeds"], model.world_rollout.prompt_embeds)
    assert (ckpt / "rollout_theworld.py").is_file()
    config = json.loads((ckpt / "config.json").read_text())
    assert config["num_world_steps"] == 2 and config["transformer_config"]["in_channels"] == 17
    assert "cosmos_transformer" in config["base_fingerprints"]

    # a later load reads the DiT but never the text encoder (the prompt embedding travels with the checkpoint)
    loaded, opened = _opened_under(tiny_bases.cosmos, lambda: TheWorld.from_pretrained(str(ckpt)))
    assert "transformer/diffusion_pytorch_model.safetensors" in opened
    assert not [p for p in opened if p.startswith(("text_encoder", "tokenizer", "safety_checker"))], opened
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, reference)

    # a full checkpoint carries the DiT itself and reads nothing from the Cosmos source
    model.save_pretrained(tmp_path / "full", save_full_model=True)
    full, opened = _opened_under(tiny_bases.cosmos, lambda: TheWorld.from_pretrained(str(tmp_path / "full")))
    assert opened == []
    with torch.no_grad():
        assert torch.equal(full(**batch).logits, reference)

    # AutoModel with the checkpoint's own remote code, in a process where `import theworld` fails
    inputs_file, out_file = tmp_path / "inputs.safetensors", tmp_path / "out.safetensors"
    save_file({k: v.contiguous() for k, v in batch.items()}, inputs_file)
    script = tmp_path / "automodel.py"
    script.write_text(_AUTOMODEL_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    run = subprocess.run(
        [sys.executable, str(script), str(ckpt), str(inputs_file), str(out_file)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert torch.equal(load_file(out_file)["logits"], reference)


def test_rollout_in_bf16(world_model_factory, model_k1, inputs_k1):
    model = world_model_factory(num_world_steps=1, dtype=torch.bfloat16)
    assert model.world_rollout.transformer.proj_out.weight.dtype == torch.bfloat16
    assert model.world_rollout.prompt_embeds.dtype == torch.bfloat16
    assert model.world_step_embeddings.weight.dtype == torch.float32  # kept in fp32 like the projector
    wpv = inputs_k1["world_pixel_values"]
    with torch.no_grad():
        bf16 = model.encode_world(wpv)
        again = model.encode_world(wpv)
        fp32 = model_k1.encode_world(wpv)
        logits = model(**inputs_k1).logits
    assert torch.equal(bf16, again)
    cos = torch.nn.functional.cosine_similarity(bf16[:, :, 1].flatten(), fp32[:, :, 1].flatten(), dim=0)
    assert cos > 0.99, cos
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()


def test_text_context_is_the_pipelines_padded_prompt(model_k1, tiny_bases):
    """The stored rows plus zero rows: the exact (B, 512, D) tensor the pipeline feeds the DiT for the empty prompt."""
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(tiny_bases.cosmos, subfolder="tokenizer")
    encoder = T5EncoderModel.from_pretrained(tiny_bases.cosmos, subfolder="text_encoder").eval()
    tokens = tokenizer([""], padding="max_length", max_length=TEXT_SEQUENCE_LENGTH, return_tensors="pt")
    with torch.no_grad():
        expected = encoder(tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    expected[:, int(tokens.attention_mask.sum()) :] = 0  # what the pipeline does past the prompt length
    rollout = model_k1.world_rollout
    torch.testing.assert_close(rollout.text_context(1, torch.float32, torch.device("cpu")), expected)
    ctx = rollout.text_context(3, torch.float32, torch.device("cpu"))
    assert tuple(ctx.shape) == (3, TEXT_SEQUENCE_LENGTH, rollout.prompt_embeds.shape[-1])
    assert torch.equal(ctx[:, :PROMPT_ROWS], rollout.prompt_embeds.expand(3, -1, -1))
    assert torch.count_nonzero(ctx[:, PROMPT_ROWS:]) == 0
    assert torch.count_nonzero(rollout.prompt_embeds) > 0
