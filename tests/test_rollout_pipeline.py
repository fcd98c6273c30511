"""Rollout = Video2World: `TheWorldRollout` against diffusers' ``Cosmos2VideoToWorldPipeline`` on the tiny bases.

The pipeline runs for real (tiny seeded Cosmos-Predict2 folder from ``theworld.tiny``: VAE, T5, DiT, scheduler) with
two test-only stand-ins, each needed for a reason outside what is compared:

* **torchvision's resize of the padding mask.** With ``concat_padding_mask=True`` the pipeline's DiT resizes its
  all-zero padding mask with ``torchvision.transforms.functional.resize``; torchvision cannot be installed next to
  this torch. A resize of an all-zero mask is all zeros of the target size, so the stand-in returns exactly that (and
  refuses a non-zero mask). It is installed only when diffusers could not import torchvision.
* **Safety checker.** The pipeline refuses to run without one, and the real one (``cosmos_guardrail``) downloads its
  own models. The stand-in passes every prompt; with ``output_type="latent"`` no video is checked.

The conditioning latent is the pipeline's own (VAE-encoded from a real image, sampled from the posterior): a wrapper
around ``pipeline.prepare_latents`` records it (or, for chained windows, replaces it), and that latent is fed to our
module. Both get the same initial noise through the pipeline's ``latents`` argument.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import initialization

from theworld.configuration_theworld import TheWorldConfig
from theworld.rollout_theworld import (
    DEFAULT_NEGATIVE_PROMPT,
    TEXT_SEQUENCE_LENGTH,
    TheWorldRollout,
    rollout_prompt_embeddings,
)

# The pipeline passes its sigmas to numpy as a torch tensor, which numpy 2 deprecates (ours passes an array).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy:DeprecationWarning")

SEED = 5
STEPS = 3  # rollout_num_inference_steps: small, but more than the no-op last step
GRID = 8  # 64 px world image -> 8 x 8 latent grid
Z = 16
TEXT_DIM = 32  # the tiny T5's d_model
T5_LOG = "Running the Cosmos T5 text encoder"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one intra-op thread (OpenMP threads stall badly when the 2-core test machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _diffusers_config(cosmos: str, name: str) -> dict:
    with open(os.path.join(cosmos, name)) as handle:
        return {k: v for k, v in json.load(handle).items() if not k.startswith("_")}


@pytest.fixture(scope="module")
def cosmos(tiny_bases) -> str:
    return tiny_bases.cosmos


@pytest.fixture(scope="module")
def prompt_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("rollout-prompt-cache"))


@pytest.fixture(scope="module")
def make_rollout(cosmos, prompt_cache):
    """``make(**config_overrides)``: a `TheWorldRollout` with the tiny DiT weights and filled prompt buffers."""
    dit_weights = load_file(os.path.join(cosmos, "transformer", "diffusion_pytorch_model.safetensors"))

    def make(**overrides) -> TheWorldRollout:
        settings = {
            "rollout_transformer_config": _diffusers_config(cosmos, "transformer/config.json"),
            "rollout_scheduler_config": _diffusers_config(cosmos, "scheduler/scheduler_config.json"),
            "world_image_size": 64,
            "num_world_steps": 2,
            "rollout_num_inference_steps": STEPS,
            "rollout_seed": SEED,
            **overrides,
        }
        rollout = TheWorldRollout(TheWorldConfig(**settings))
        rollout.transformer.load_state_dict(dit_weights)
        rollout.load_prompt_embeddings(cosmos, revision=None, cache_dir=prompt_cache)
        return rollout.eval()

    return make


class _PassingSafetyChecker:
    """Stand-in for ``cosmos_guardrail.CosmosSafetyChecker`` (see the module docstring)."""

    def to(self, *args, **kwargs):
        return self

    def check_text_safety(self, prompt: str) -> bool:
        return True


def _resize_all_zero_mask(mask: torch.Tensor, size, interpolation=None) -> torch.Tensor:
    """Stand-in for torchvision's resize, valid for the all-zero padding mask only (see the module docstring)."""
    if torch.count_nonzero(mask):
        raise ValueError("the torchvision stand-in only resizes the all-zero padding mask")
    return mask.new_zeros(*mask.shape[:-2], *size)


class _Probe:
    """The pipeline plus a wrapper around its ``prepare_latents`` that records / replaces the conditioning latent."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.condition = None  # the latent to inject, (1, z, 1, h, w), or None to keep the pipeline's
        self.used = None  # the conditioning latent the last call used
        original = pipeline.prepare_latents

        def prepare_latents(*args, **kwargs):
            out = original(*args, **kwargs)
            conditioning = out[1]  # normalised latents times sigma_data (= 1), (1, z, 1 + k, h, w)
            if self.condition is not None:
                conditioning[:, :, :1] = self.condition
            self.used = conditioning[:, :, :1].clone()
            return out

        pipeline.prepare_latents = prepare_latents

    def run(self, image, k: int, guidance: float, noise: torch.Tensor, condition=None) -> torch.Tensor:
        self.condition = condition
        return self.pipeline(
            image=image,
            prompt="",
            num_frames=1 + 4 * k,
            height=64,
            width=64,
            num_inference_steps=STEPS,
            guidance_scale=guidance,
            output_type="latent",
            latents=noise,
        ).frames


@pytest.fixture(scope="module")
def probe(cosmos):
    from diffusers import (
        AutoencoderKLWan,
        Cosmos2VideoToWorldPipeline,
        CosmosTransformer3DModel,
        FlowMatchEulerDiscreteScheduler,
    )
    from diffusers.models.transformers import transformer_cosmos
    from transformers import T5EncoderModel, T5TokenizerFast

    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(transformer_cosmos, "transforms"):  # torchvision is missing
            stand_in = types.SimpleNamespace(
                functional=types.SimpleNamespace(resize=_resize_all_zero_mask),
                InterpolationMode=types.SimpleNamespace(NEAREST="nearest"),
            )
            patch.setattr(transformer_cosmos, "transforms", stand_in, raising=False)
        pipeline = Cosmos2VideoToWorldPipeline(
            text_encoder=T5EncoderModel.from_pretrained(cosmos, subfolder="text_encoder"),
            tokenizer=T5TokenizerFast.from_pretrained(cosmos, subfolder="tokenizer"),
            transformer=CosmosTransformer3DModel.from_pretrained(cosmos, subfolder="transformer"),
            vae=AutoencoderKLWan.from_pretrained(cosmos, subfolder="vae"),
            scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(cosmos, subfolder="scheduler"),
            safety_checker=_PassingSafetyChecker(),
        )
        pipeline.set_progress_bar_config(disable=True)
        yield _Probe(pipeline)


@pytest.fixture(scope="module")
def image():
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), (240, 240, 240))
    ImageDraw.Draw(im).ellipse((5, 20, 30, 45), fill=(220, 30, 30))
    ImageDraw.Draw(im).rectangle((36, 8, 60, 30), fill=(30, 30, 220))
    return im


def _joint_noise(k: int) -> torch.Tensor:
    """The documented joint-mode noise: one ``(1, z, 1 + k, h, w)`` draw from a CPU generator seeded rollout_seed."""
    return torch.randn((1, Z, 1 + k, GRID, GRID), generator=torch.Generator().manual_seed(SEED))


# ----------------------------------------------------------------------------------------------------------------------
# Equal to the pipeline
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "guidance"), [(1, 1.0), (1, 7.0), (2, 1.0), (2, 3.0)])
def test_joint_rollout_equals_pipeline(make_rollout, probe, image, k, guidance):
    rollout = make_rollout(num_world_steps=k, rollout_guidance_scale=guidance)
    theirs = probe.run(image, k, guidance, _joint_noise(k))
    condition = probe.used  # the pipeline's own conditioning latent (sigma_data = 1: the normalised latent)
    ours = rollout(condition, k)
    assert theirs.shape == ours.shape == (1, Z, 1 + k, GRID, GRID)
    assert ours[:, :, :1] is not condition and torch.equal(ours[:, :, :1], condition)
    # The pipeline returns latents in the normalised space times sigma_data (= 1), like ours. Its frame 0 is not
    # compared: it keeps a sigma_min-sized remnant of the initial noise there, ours is the condition itself.
    torch.testing.assert_close(ours[:, :, 1:], theirs[:, :, 1:], rtol=1e-5, atol=1e-5)


def test_prompt_buffers_equal_pipeline_embeddings(make_rollout, probe):
    from diffusers.pipelines.cosmos import pipeline_cosmos2_video2world

    assert DEFAULT_NEGATIVE_PROMPT == pipeline_cosmos2_video2world.DEFAULT_NEGATIVE_PROMPT
    rollout = make_rollout()
    positive, negative = probe.pipeline.encode_prompt(prompt="", do_classifier_free_guidance=True, device="cpu")
    assert rollout.prompt_embeds.shape == rollout.negative_prompt_embeds.shape == (1, TEXT_SEQUENCE_LENGTH, TEXT_DIM)
    torch.testing.assert_close(rollout.prompt_embeds, positive, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rollout.negative_prompt_embeds, negative, rtol=1e-6, atol=1e-6)
    # "" tokenises to </s> alone: one non-zero row, the 511 others zero (as the pipeline feeds the DiT).
    assert torch.count_nonzero(rollout.prompt_embeds[:, 1:]) == 0 and torch.count_nonzero(rollout.prompt_embeds[:, 0])


def test_autoregressive_is_chained_two_frame_video2world(make_rollout, probe, image):
    """theworld 0.1.0's rollout: window j is the pipeline (k = 1) conditioned on frame j - 1, noise drawn per step."""
    k = 2
    rollout = make_rollout(num_world_steps=k, rollout_mode="autoregressive", rollout_guidance_scale=1.0)
    probe.run(image, 1, 1.0, _joint_noise(1))
    condition = probe.used
    ours = rollout(condition, k)
    generator = torch.Generator().manual_seed(SEED)
    step_noises = [torch.randn((Z, 1, GRID, GRID), generator=generator) for _ in range(k)]
    previous = condition
    for j, step_noise in enumerate(step_noises, start=1):
        # Frame 0 of the pipeline's noise is unused (the condition replaces it): zeros.
        noise = torch.cat([torch.zeros_like(step_noise), step_noise], dim=1).unsqueeze(0)
        window = probe.run(image, 1, 1.0, noise, condition=previous)
        torch.testing.assert_close(ours[:, :, j : j + 1], window[:, :, 1:], rtol=1e-5, atol=1e-5)
        previous = window[:, :, 1:]
    batch = torch.cat([condition, condition.flip(-1)])
    assert rollout(batch, k).shape == (2, Z, 1 + k, GRID, GRID)


# ----------------------------------------------------------------------------------------------------------------------
# Batching, determinism, gradients, config
# ----------------------------------------------------------------------------------------------------------------------
def test_batched_equals_unbatched_and_deterministic(make_rollout):
    rollout = make_rollout(num_world_steps=2, rollout_guidance_scale=3.0)
    frames = torch.randn(2, Z, 1, GRID, GRID, generator=torch.Generator().manual_seed(1))
    rng_before = torch.get_rng_state()
    together = rollout(frames, 2)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the rollout's noise never touches the global RNG
    assert together.shape == (2, Z, 3, GRID, GRID)
    for i in range(2):
        torch.testing.assert_close(together[i : i + 1], rollout(frames[i : i + 1], 2), rtol=1e-5, atol=1e-5)
    assert torch.equal(rollout(frames, 2), together)
    assert not torch.allclose(together[0, :, 1:], together[1, :, 1:])  # different frames, different futures
    rollout.config.rollout_seed = SEED + 1  # read at call time
    assert not torch.allclose(rollout(frames, 2)[:, :, 1:], together[:, :, 1:])


def test_gradient_reaches_the_input_frame_only(make_rollout):
    rollout = make_rollout(num_world_steps=1, rollout_guidance_scale=1.0)
    frame = torch.randn(1, Z, 1, GRID, GRID, requires_grad=True)
    out = rollout(frame, 1)
    out.square().sum().backward()
    torch.testing.assert_close(frame.grad, 2 * frame.detach())  # only through the returned first frame
    assert not any(p.requires_grad or p.grad is not None for p in rollout.parameters())
    assert rollout(frame, 0) is frame


def test_config_validation_names_the_field(cosmos):
    transformer = _diffusers_config(cosmos, "transformer/config.json")
    scheduler = _diffusers_config(cosmos, "scheduler/scheduler_config.json")
    base = {"world_image_size": 64, "num_world_steps": 1, "rollout_scheduler_config": scheduler}
    with pytest.raises(ValueError, match="rollout_transformer_config is None"):
        TheWorldRollout(TheWorldConfig(**base))
    text2world = {**transformer, "in_channels": Z}  # no condition-mask channel: not a Video2World DiT
    with pytest.raises(ValueError, match=r"rollout_transformer_config has in_channels=16.*in_channels=17"):
        TheWorldRollout(TheWorldConfig(**base, rollout_transformer_config=text2world))
    with pytest.raises(ValueError, match="rollout_scheduler_config is None"):
        TheWorldRollout(
            TheWorldConfig(**{**base, "rollout_scheduler_config": None}, rollout_transformer_config=transformer)
        )


def test_diffusers_is_imported_only_behind_the_guard(cosmos, monkeypatch):
    import ast
    import sys

    import theworld.rollout_theworld as module

    tree = ast.parse(Path(module.__file__).read_text())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top_level |= {
        node.module.split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    allowed = {"torch", "transformers", "huggingface_hub", "safetensors", "__future__"} | set(sys.stdlib_module_names)
    assert top_level <= allowed, top_level - allowed
    config = TheWorldConfig(
        rollout_transformer_config=_diffusers_config(cosmos, "transformer/config.json"),
        rollout_scheduler_config=_diffusers_config(cosmos, "scheduler/scheduler_config.json"),
        world_image_size=64,
        num_world_steps=1,
    )
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    with pytest.raises(
        ImportError, match=r"num_world_steps > 0 or load_full_cosmos_pipeline=True.*pip install diffusers"
    ):
        TheWorldRollout(config)


def test_builds_on_meta_device_without_init(cosmos):
    config = TheWorldConfig(
        rollout_transformer_config=_diffusers_config(cosmos, "transformer/config.json"),
        rollout_scheduler_config=_diffusers_config(cosmos, "scheduler/scheduler_config.json"),
        world_image_size=64,
        num_world_steps=1,
    )
    with torch.device("meta"), initialization.no_init_weights():
        rollout = TheWorldRollout(config)
    assert rollout.transformer.proj_out.weight.is_meta
    assert rollout.prompt_embeds.is_meta and rollout.prompt_embeds.shape == (1, TEXT_SEQUENCE_LENGTH, TEXT_DIM)
    state = rollout.state_dict()
    assert {"prompt_embeds", "negative_prompt_embeds"} <= set(state)  # persistent buffers: checkpoints hold them
    assert not any(p.requires_grad for p in rollout.parameters())


# ----------------------------------------------------------------------------------------------------------------------
# Prompt-embedding cache: T5 once per Cosmos revision
# ----------------------------------------------------------------------------------------------------------------------
def _copy_text_parts(cosmos: str, dest: Path) -> Path:
    for sub in ("text_encoder", "tokenizer"):
        shutil.copytree(os.path.join(cosmos, sub), dest / sub)
    return dest


def _t5_runs(caplog) -> int:
    return sum(T5_LOG in r.getMessage() for r in caplog.records)


def test_warm_cache_never_loads_t5(cosmos, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="theworld.rollout_theworld")
    source = _copy_text_parts(cosmos, tmp_path / "cosmos")
    cache = str(tmp_path / "cache")
    cold = rollout_prompt_embeddings(str(source), revision="rev-a", text_dim=TEXT_DIM, cache_dir=cache)
    assert _t5_runs(caplog) == 1
    for tensor in cold:
        assert tensor.shape == (1, TEXT_SEQUENCE_LENGTH, TEXT_DIM) and tensor.dtype == torch.float32
        assert tensor.device.type == "cpu"
    files = [p for p in Path(cache).rglob("*") if p.is_file()]
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left behind
    assert files[0].relative_to(cache).parts[:2] == ("theworld", "rollout-prompts")

    # The proof: without T5's weights and tokenizer, a warm call still returns the same tensors.
    shutil.rmtree(source / "text_encoder")
    shutil.rmtree(source / "tokenizer")
    warm = rollout_prompt_embeddings(str(source), revision="rev-a", text_dim=TEXT_DIM, cache_dir=cache)
    assert _t5_runs(caplog) == 1
    assert all(torch.equal(a, b) for a, b in zip(cold, warm))

    # Another revision misses the cache: it needs T5, which is gone.
    with pytest.raises(OSError):
        rollout_prompt_embeddings(str(source), revision="rev-b", text_dim=TEXT_DIM, cache_dir=cache)
    assert _t5_runs(caplog) == 2


def test_changed_local_files_miss_the_cache(cosmos, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="theworld.rollout_theworld")
    source = _copy_text_parts(cosmos, tmp_path / "cosmos")
    cache = str(tmp_path / "cache")
    first = rollout_prompt_embeddings(str(source), revision=None, text_dim=TEXT_DIM, cache_dir=cache)
    again = rollout_prompt_embeddings(str(source), revision=None, text_dim=TEXT_DIM, cache_dir=cache)
    assert _t5_runs(caplog) == 1 and all(torch.equal(a, b) for a, b in zip(first, again))

    weights = source / "text_encoder" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors = {name: t * 1.5 if name.endswith("layer_norm.weight") else t for name, t in tensors.items()}
    save_file(tensors, str(weights), metadata={"format": "pt"})
    changed = rollout_prompt_embeddings(str(source), revision=None, text_dim=TEXT_DIM, cache_dir=cache)
    assert _t5_runs(caplog) == 2
    assert not torch.equal(changed[1], first[1])

    # An unreadable cache file is recomputed, not trusted.
    for path in Path(cache).rglob("*.safetensors"):
        path.write_bytes(b"not a safetensors file")
    recomputed = rollout_prompt_embeddings(str(source), revision=None, text_dim=TEXT_DIM, cache_dir=cache)
    assert _t5_runs(caplog) == 3 and all(torch.equal(a, b) for a, b in zip(changed, recomputed))


def test_hub_source_is_keyed_by_commit(cosmos, tmp_path, caplog):
    """A hub repo (an offline hub cache here): the default branch resolves to its commit, which keys the cache."""
    caplog.set_level(logging.INFO, logger="theworld.rollout_theworld")
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub_cache = tmp_path / "hub"
    repo = hub_cache / "models--theworld-test--cosmos"
    snapshot = _copy_text_parts(cosmos, repo / "snapshots" / commit)
    shutil.copy(os.path.join(cosmos, "model_index.json"), snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    hub_kwargs = {"cache_dir": str(hub_cache), "local_files_only": True}
    cache = str(tmp_path / "prompts")
    by_branch = rollout_prompt_embeddings(
        "theworld-test/cosmos", revision=None, text_dim=TEXT_DIM, hub_kwargs=hub_kwargs, cache_dir=cache
    )
    by_commit = rollout_prompt_embeddings(
        "theworld-test/cosmos", revision=commit, text_dim=TEXT_DIM, hub_kwargs=hub_kwargs, cache_dir=cache
    )
    assert _t5_runs(caplog) == 1 and all(torch.equal(a, b) for a, b in zip(by_branch, by_commit))
    in_kwargs = rollout_prompt_embeddings(
        "theworld-test/cosmos", revision=None, text_dim=TEXT_DIM, hub_kwargs={**hub_kwargs, "revision": commit},
        cache_dir=cache,
    )  # fmt: skip
    assert _t5_runs(caplog) == 1 and all(torch.equal(a, b) for a, b in zip(in_kwargs, by_commit))
    with pytest.raises(ValueError, match="one Cosmos revision"):
        rollout_prompt_embeddings(
            "theworld-test/cosmos", revision="main", text_dim=TEXT_DIM, hub_kwargs={"revision": commit}
        )
    (cached,) = Path(cache).rglob("*.safetensors")
    assert cached.parent.name == commit and cached.parent.parent.name == "models--theworld-test--cosmos"
    local = rollout_prompt_embeddings(cosmos, revision=None, text_dim=TEXT_DIM, cache_dir=cache)
    assert all(torch.equal(a, b) for a, b in zip(local, by_branch))
