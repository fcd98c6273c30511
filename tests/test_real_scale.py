"""Real-scale fidelity (issue 10): what holds on the tiny bases holds on Gemma 3 4B and Cosmos-Predict2 2B.

The real architectures are built from the configs shipped in ``theworld.real_configs`` on the meta device (no weights,
no network) and checked against the published parameter counts (``real_configs/SOURCES.md``); the reach of the world
tokens, the precision plan and the memory model are checked at real shape; the sliding-window warning and the
no-content-dropped default are checked end to end on the tiny bases; the real-shape benchmark runs as a smoke test.
"""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import conversations
from PIL import Image

from theworld import real_configs
from theworld.planning import (
    build_meta_model,
    estimate_train_memory,
    gemma_layer_activation_bytes,
    plan,
    siglip_layer_activation_bytes,
    world_tokens_outside_window,
)
from theworld.processing_theworld import world_tokens_outside_window as processor_outside_window

GEMMA = "google/gemma-3-4b-it"
COSMOS = "nvidia/Cosmos-Predict2-2B-Video2World"
ROOT = Path(__file__).resolve().parents[1]

# Published / verified parameter counts (real_configs/SOURCES.md, sections 1e and 2f).
GEMMA_TOTAL = 4_300_079_472
GEMMA_VISION = 416_866_032
GEMMA_MM_PROJECTOR = 2_950_272
GEMMA_EMBEDDINGS = 671_252_480
GEMMA_LAYER = 94_382_592
VAE_ENCODER, VAE_QUANT_CONV, VAE_TOTAL = 53_595_872, 1_056, 126_892_531
VAE_TIME_CONV = 553_536  # the temporal down-sampling convolutions an image never reaches (left out of our encoder)
DIT_TOTAL = 1_956_413_440
# TheWorld's own parts at d_model 2560: spatial mlp projector 16 -> 2560 -> 2560, two boundary embeddings.
PROJECTOR = 16 * 2560 + 2560 + 2560 * 2560 + 2560
BOUNDARY = 2 * 2560


@pytest.fixture(scope="module")
def empty_cache(tmp_path_factory) -> str:
    """An empty hub cache: plans read the shipped configs whatever the session's cache holds."""
    return str(tmp_path_factory.mktemp("empty-hub-cache"))


@pytest.fixture(scope="module")
def default_plan(empty_cache) -> dict:
    return plan(cache_dir=empty_cache)


@pytest.fixture(scope="module")
def real_config(empty_cache):
    from theworld.planning import resolve_cosmos, resolve_gemma, theworld_config

    gemma, cosmos = resolve_gemma(cache_dir=empty_cache), resolve_cosmos(cache_dir=empty_cache)
    assert gemma.kind == cosmos.kind == "shipped config"
    return theworld_config(gemma, cosmos)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


# ----------------------------------------------------------------------------------------------------------------------
# The shipped configs
# ----------------------------------------------------------------------------------------------------------------------
def test_shipped_configs_hold_the_published_values():
    assert real_configs.KNOWN_REPOS == (GEMMA, COSMOS)
    assert real_configs.real_config_files(GEMMA) == ["config.json", "processor_facts.json"]
    assert real_configs.real_config_files(COSMOS) == [
        "model_index.json", "scheduler/scheduler_config.json", "transformer/config.json", "vae/config.json",
    ]  # fmt: skip
    gemma = real_configs.load_real_config(GEMMA)
    assert gemma["text_config"] == {
        "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024,
    }  # fmt: skip
    assert (gemma["image_token_index"], gemma["boi_token_index"], gemma["mm_tokens_per_image"]) == (262144, 255999, 256)
    assert (gemma["vision_config"]["image_size"], gemma["vision_config"]["patch_size"]) == (896, 14)
    vae = real_configs.load_real_config(COSMOS, "config.json", "vae")
    assert (vae["z_dim"], vae["base_dim"], vae["dim_mult"], vae["temperal_downsample"]) == (16, 96, [1, 2, 4, 4],
                                                                                          [False, True, True])  # fmt: skip
    dit = real_configs.load_real_config(COSMOS, "config.json", "transformer")
    assert (dit["in_channels"], dit["num_layers"], dit["num_attention_heads"] * dit["attention_head_dim"]) == (17, 28,
                                                                                                               2048)  # fmt: skip
    assert dit["extra_pos_embed_type"] is None
    scheduler = real_configs.load_real_config(COSMOS, "scheduler_config.json", "scheduler")
    assert scheduler["use_karras_sigmas"] is True and scheduler["sigma_max"] == 80.0
    facts = real_configs.gemma_processor_facts()
    assert (facts["embedding_rows"], facts["image_token_id"], facts["image_seq_length"], facts["image_size"]) == (
        262208, 262144, 256, 896)  # fmt: skip
    assert list(facts["world_token_ids"].values()) == [262145, 262146, 262147]
    # hub ids are case-insensitive; anything else is refused with the list of what ships
    assert real_configs.has_real_config("Google/Gemma-3-4B-IT") and not real_configs.has_real_config("google/gemma-2b")
    with pytest.raises(KeyError, match="ships the configs of google/gemma-3-4b-it"):
        real_configs.load_real_config("google/gemma-2b")
    with pytest.raises(FileNotFoundError, match=r"ships no tokenizer\.json; shipped files: config\.json"):
        real_configs.load_real_config(GEMMA, "tokenizer.json")


# ----------------------------------------------------------------------------------------------------------------------
# Parameter counts on the meta device
# ----------------------------------------------------------------------------------------------------------------------
def test_gemma_3_4b_builds_on_meta_with_the_published_count():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config.from_dict(real_configs.load_real_config(GEMMA))
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(config)
    assert _count(model) == GEMMA_TOTAL
    assert _count(model.model.vision_tower) == GEMMA_VISION
    assert _count(model.model.multi_modal_projector) == GEMMA_MM_PROJECTOR
    assert model.model.language_model.embed_tokens.weight.numel() == GEMMA_EMBEDDINGS
    assert _count(model.model.language_model.layers[0]) == GEMMA_LAYER
    text = config.text_config
    full = [i for i, kind in enumerate(text.layer_types) if kind == "full_attention"]
    assert full == [5, 11, 17, 23, 29] and len(text.layer_types) == 34 and text.sliding_window == 1024


def test_cosmos_vae_and_dit_build_on_meta_and_our_encoder_matches_diffusers():
    from diffusers import AutoencoderKLWan, CosmosTransformer3DModel

    from theworld.configuration_theworld import TheWorldEncoderConfig
    from theworld.world_encoder_theworld import TheWorldWanEncoder, is_unused_diffusers_key

    vae_config = real_configs.load_real_config(COSMOS, "config.json", "vae")
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(vae_config)
        dit = CosmosTransformer3DModel.from_config(real_configs.load_real_config(COSMOS, "config.json", "transformer"))
        ours = TheWorldWanEncoder(TheWorldEncoderConfig.from_vae_config(vae_config))
    assert _count(vae) == VAE_TOTAL
    assert (_count(vae.encoder), _count(vae.quant_conv)) == (VAE_ENCODER, VAE_QUANT_CONV)
    assert _count(dit) == DIT_TOTAL
    # Our 2-D encoder holds diffusers' encoder + quant_conv tensors, same names and shapes, minus the time_conv ones.
    theirs = {k: tuple(v.shape) for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
    unused = {k for k in theirs if is_unused_diffusers_key(k)}
    assert sum(int(np.prod(theirs[k])) for k in unused) == VAE_TIME_CONV
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {k: s for k, s in theirs.items() if k not in unused}
    assert _count(ours) == VAE_ENCODER + VAE_QUANT_CONV - VAE_TIME_CONV


def test_theworld_at_real_shape(default_plan):
    parts = default_plan["parameters_by_part"]
    assert parts["world_encoder"] == VAE_ENCODER + VAE_QUANT_CONV - VAE_TIME_CONV
    assert parts["world_projector"] == PROJECTOR == 6_599_680  # the earlier code's spatial mlp, same size
    assert parts["world_boundary_embeddings"] == BOUNDARY
    assert parts["vision_tower"] + parts["multi_modal_projector"] + parts["language_model"] == GEMMA_TOTAL
    total = GEMMA_TOTAL + VAE_ENCODER + VAE_QUANT_CONV - VAE_TIME_CONV + PROJECTOR + BOUNDARY
    assert default_plan["total_parameters"] == total == 4_359_727_664
    assert 4.2e9 <= default_plan["total_parameters"] <= 4.5e9
    assert default_plan["trainable_parameters"] == PROJECTOR + BOUNDARY  # the default freeze flags
    # The world ids are spare rows of the 262,208-row embedding: no resize, nothing untrained left behind.
    assert default_plan["world_token_ids"] == [262145, 262146, 262147]
    assert default_plan["world_token_ids_in_embedding"] is True
    # A partial checkpoint is at its floor: the trainable fp32 tensors plus a small header (DESIGN.md: <= 1.01x).
    floor = default_plan["trainable_parameters"] * 4
    assert floor < default_plan["partial_checkpoint_bytes"] <= 1.01 * floor


def test_token_counts_default_4096_channel_and_rollout(default_plan, empty_cache):
    assert (default_plan["world_tokens"], default_plan["world_tokens_per_frame"]) == (256, 256)  # 512 px, pooling 4
    wide = plan(world_pooling=1, cache_dir=empty_cache)
    assert wide["world_tokens"] == 4096 and wide["total_parameters"] == default_plan["total_parameters"]
    assert wide["sequence_length"] - default_plan["sequence_length"] == 4096 - 256
    channel = plan(world_projection_mode="channel", cache_dir=empty_cache)
    assert channel["world_tokens"] == 16  # one token per latent channel, 16 x 16 = 256 dims after pooling
    assert channel["parameters_by_part"]["world_projector"] == 256 * 2560 + 2560 + 2560 * 2560 + 2560
    rollout = plan(num_world_steps=1, cache_dir=empty_cache)
    assert (rollout["world_tokens"], rollout["num_world_frames"]) == (512, 2)  # x (1 + k)
    assert rollout["parameters_by_part"]["world_rollout"] == DIT_TOTAL
    assert rollout["parameters_by_part"]["world_step_embeddings"] == 2 * 2560
    assert rollout["total_parameters"] == default_plan["total_parameters"] + DIT_TOTAL + 2 * 2560
    assert rollout["trainable_parameters"] == default_plan["trainable_parameters"] + 2 * 2560  # the DiT is frozen
    # the partial checkpoint carries the rollout's two (1, 512, 1024) prompt buffers in the model dtype (bf16)
    extra = rollout["partial_checkpoint_bytes"] - default_plan["partial_checkpoint_bytes"]
    assert 2 * 2560 * 4 + 2 * 512 * 1024 * 2 <= extra <= 2 * 2560 * 4 + 2 * 512 * 1024 * 2 + 512  # + header


# ----------------------------------------------------------------------------------------------------------------------
# Reach
# ----------------------------------------------------------------------------------------------------------------------
def test_every_world_token_is_in_the_window_for_prompts_up_to_512(default_plan, empty_cache):
    from theworld.planning import SequenceLayout

    assert default_plan["sliding_window"] == 1024
    assert default_plan["layer_types"] == {"sliding_attention": 29, "full_attention": 5}
    layout = SequenceLayout(default_plan["layout"]["before_world"], default_plan["layout"]["after_world"], "")
    for prompt_tokens in range(1, 513):
        assert world_tokens_outside_window(layout, 256, prompt_tokens, 1024) == 0, prompt_tokens
    at_512 = plan(prompt_tokens=512, cache_dir=empty_cache)
    assert at_512["world_tokens_outside_window"] == 0
    assert at_512["farthest_world_token_distance"] < 1024
    # the margin: the first world token leaves the window of the answer at a 762-token question
    limit = default_plan["max_prompt_tokens_in_window"]
    assert limit == 1024 - 1 - 256 - default_plan["layout"]["after_world"] == 761
    assert world_tokens_outside_window(layout, 256, limit, 1024) == 0
    assert world_tokens_outside_window(layout, 256, limit + 1, 1024) == 1


def test_4096_world_tokens_mostly_fall_outside_the_window(empty_cache):
    wide = plan(world_image_size=512, world_pooling=1, world_projection_mode="spatial", cache_dir=empty_cache)
    assert wide["world_tokens"] == 4096
    assert wide["world_tokens_outside_window"] > 3000
    # exactly: all but the sliding_window - (tokens after the block) - 1 nearest to the question
    tail = wide["layout"]["after_world"] + wide["prompt_tokens"]
    assert wide["world_tokens_outside_window"] == 4096 - (1024 - 1 - tail)
    assert wide["max_prompt_tokens_in_window"] is None
    # after <bos> (theworld 0.1.0's placement) the 256 default tokens sit behind the 256-token image block
    after_bos = plan(world_placement="after_bos", cache_dir=empty_cache)
    assert after_bos["sequence_length"] == plan(cache_dir=empty_cache)["sequence_length"]
    assert after_bos["farthest_world_token_distance"] > 256 + 256


# ----------------------------------------------------------------------------------------------------------------------
# Precision
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_world_encoder_stays_float32_at_real_shape(real_config, dtype):
    model = build_meta_model(real_config, dtype)
    assert model.device.type == "meta"
    assert "world_encoder" in model._get_dtype_plan(dtype)  # the loader's keep-in-fp32 plan
    dtypes = {}
    for name, param in model.named_parameters():
        part = name.split(".")[1]
        dtypes.setdefault(part, set()).add(param.dtype)
    assert dtypes["world_encoder"] == {torch.float32}
    assert dtypes["world_projector"] == dtypes["world_boundary_embeddings"] == {torch.float32}
    assert dtypes["language_model"] == dtypes["vision_tower"] == {dtype}
    # configurable: world_encoder_dtype=None follows the model
    real_config_none = copy.deepcopy(real_config)
    real_config_none.world_encoder_dtype = None
    follows = build_meta_model(real_config_none, dtype)
    assert "world_encoder" not in follows._get_dtype_plan(dtype)
    assert {p.dtype for p in follows.model.world_encoder.parameters()} == {dtype}


def test_plan_memory_counts_the_float32_encoder(default_plan, empty_cache):
    assert default_plan["parameter_dtypes"]["world_encoder"] == "float32"
    assert default_plan["parameter_dtypes"]["language_model"] == "bfloat16"
    follows = plan(world_encoder_dtype=None, cache_dir=empty_cache)
    assert follows["parameter_dtypes"]["world_encoder"] == "bfloat16"
    encoder = VAE_ENCODER + VAE_QUANT_CONV - VAE_TIME_CONV
    weights = default_plan["memory_breakdown_bytes"]["fixed"]["weights"]
    assert weights - follows["memory_breakdown_bytes"]["fixed"]["weights"] == encoder * (4 - 2)


# ----------------------------------------------------------------------------------------------------------------------
# The memory model against autograd, at real width
# ----------------------------------------------------------------------------------------------------------------------
def _uninitialised(model_class, config):
    """``model_class(config)`` in bf16 without weight initialisation (transformers' ``no_init_weights``): only what
    autograd saves is measured here, not values."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        model = model_class._from_config(config, dtype=torch.bfloat16)
    return model.train()


def _saved_bytes_per_layer(model, layers, run, inputs) -> int:
    """Bytes autograd saves for backward inside ``layers[-1]`` during ``run(inputs)``: the storages first saved while
    that layer runs (parameters and anything an earlier layer already saved, such as RoPE tables, excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    current = [None]
    first_seen: dict[int, tuple[int, int]] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if current[0] is not None and storage.data_ptr() not in params:
            first_seen.setdefault(storage.data_ptr(), (current[0], storage.nbytes()))
        return tensor

    handles = []
    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(lambda m, a, i=index: current.__setitem__(0, i)))
        handles.append(layer.register_forward_hook(lambda m, a, o: current.__setitem__(0, None)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            run(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return sum(size for layer, size in first_seen.values() if layer == len(layers) - 1)


@pytest.fixture(scope="module")
def gemma_two_layers():
    from transformers import Gemma3Config
    from transformers.models.gemma3.modeling_gemma3 import Gemma3TextModel

    text = Gemma3Config.from_dict(real_configs.load_real_config(GEMMA)).text_config
    cut = text.__class__.from_dict({**text.to_dict(), "vocab_size": 64, "num_hidden_layers": 2,
                                    "layer_types": ["sliding_attention"] * 2})  # fmt: skip
    return _uninitialised(Gemma3TextModel, cut)


@pytest.mark.parametrize("trainable", [False, True], ids=["frozen", "trainable"])
def test_gemma_layer_activation_formula_matches_autograd(gemma_two_layers, trainable):
    """Saved bytes per token of a real-width Gemma 3 4B decoder layer (bf16) equal the planning formula."""
    model = gemma_two_layers
    model.requires_grad_(trainable)
    hidden = model.config.hidden_size
    measured = {}
    for length in (8, 16):
        embeds = torch.zeros(1, length, hidden, dtype=torch.bfloat16, requires_grad=True)
        run = lambda x: model(inputs_embeds=x)  # noqa: E731
        measured[length] = _saved_bytes_per_layer(model, model.layers, run, embeds)
    per_token = (measured[16] - measured[8]) / 8
    expected = gemma_layer_activation_bytes(model.config, torch.bfloat16, trainable)
    assert expected == (210_944 if trainable else 126_976)
    assert abs(per_token - expected) <= 0.01 * expected, (per_token, expected)


def test_siglip_layer_activation_formula_matches_autograd():
    from transformers import Gemma3Config
    from transformers.models.siglip.modeling_siglip import SiglipVisionModel

    vision = Gemma3Config.from_dict(real_configs.load_real_config(GEMMA)).vision_config
    measured = {}
    for size in (56, 112):  # 16 and 64 patches
        model = _uninitialised(SiglipVisionModel, vision.__class__.from_dict({**vision.to_dict(), "num_hidden_layers": 2,
                                                                             "image_size": size}))  # fmt: skip
        pixels = torch.zeros(1, 3, size, size, dtype=torch.bfloat16)
        run = lambda x, m=model: m(pixel_values=x)  # noqa: E731
        measured[size] = _saved_bytes_per_layer(model, model.encoder.layers, run, pixels)
    per_patch = (measured[112] - measured[56]) / (64 - 16)
    expected = siglip_layer_activation_bytes(vision, torch.bfloat16)
    assert abs(per_patch - expected) <= 0.01 * expected, (per_patch, expected)


def test_memory_estimate_against_the_earlier_profile(empty_cache):
    """The earlier code's profile (batch 2): TheWorld projection-only at ~5,076 tokens 90 GB, Gemma full FT 47 GB."""
    earlier = plan(world_pooling=1, world_placement="after_bos", prompt_tokens=5076 - 4096 - 270, batch_size=2,
                   cache_dir=empty_cache)  # fmt: skip
    assert earlier["sequence_length"] == 5076
    # the earlier code also held the unused DiT and T5-11B encoder on the device (bf16)
    unused_pipeline_gb = (DIT_TOTAL + 4_864_791_552) * 2 / 2**30
    assert 60 < earlier["train_memory_total_gb"] < 90
    assert abs(earlier["train_memory_total_gb"] + unused_pipeline_gb - 90) < 0.1 * 90
    gemma_full = plan(enable_world=False, freeze_gemma_vision=False, freeze_gemma_language=False,
                      prompt_tokens=5076 - 4096 - 270, batch_size=2, cache_dir=empty_cache)  # fmt: skip
    assert gemma_full["trainable_parameters"] == gemma_full["total_parameters"] == GEMMA_TOTAL
    assert 40 < gemma_full["train_memory_total_gb"] < 65
    defaults = plan(batch_size=2, cache_dir=empty_cache)
    per_sample = defaults["memory_breakdown_bytes"]["per_sample"]
    assert per_sample["language_model_layers"] == 34 * 126_976 * defaults["sequence_length"]  # frozen, input grads
    assert per_sample["logits_and_loss"] == defaults["sequence_length"] * 262_208 * 10
    assert defaults["train_memory_total_gb"] < earlier["train_memory_total_gb"] / 4
    # eager attention adds the L x L probabilities of every layer
    eager = plan(batch_size=2, attn_implementation="eager", cache_dir=empty_cache)
    length = defaults["sequence_length"]
    extra = (eager["train_memory_per_sample_gb"] - defaults["train_memory_per_sample_gb"]) * 2**30
    assert abs(extra - 34 * 8 * length * length * 6) < 0.01 * 2**30


def test_trainable_world_encoder_is_counted_on_the_meta_device(real_config):
    config = copy.deepcopy(real_config)
    config.freeze_cosmos_vae = False
    model = build_meta_model(config, torch.bfloat16)
    assert all(p.requires_grad for p in model.model.world_encoder.parameters())
    memory = estimate_train_memory(model, 590)
    # a trainable fp32 Wan encoder at 512 px keeps gigabytes of conv activations (3.1 GiB measured on meta)
    assert 2 * 2**30 < memory["per_sample_bytes"]["world_encoder"] < 5 * 2**30
    assert memory["fixed_bytes"]["gradients"] > (VAE_ENCODER - VAE_TIME_CONV) * 4


# ----------------------------------------------------------------------------------------------------------------------
# End to end on the tiny bases
# ----------------------------------------------------------------------------------------------------------------------
def test_processor_warns_once_with_the_number_outside_the_window(real_world_model_factory, sample_images, caplog):
    model = real_world_model_factory(world_pooling=1)  # 64 world tokens, sliding window 32
    processor = model.processor
    assert processor.sliding_window == model.config.text_config.sliding_window == 32
    texts = ["Is the red circle left of the blue square?", "Describe."]
    with caplog.at_level(logging.WARNING, logger="theworld.processing_theworld"):
        batch = processor.apply_chat_template(conversations(sample_images, texts), add_generation_prompt=True,
                                              tokenize=True, return_dict=True, return_tensors="pt", padding=True)  # fmt: skip
        processor.apply_chat_template(conversations(sample_images, texts), add_generation_prompt=True, tokenize=True,
                                      return_dict=True, return_tensors="pt", padding=True)  # fmt: skip
    warnings = [r for r in caplog.records if "out of reach of Gemma's sliding-window layers" in r.getMessage()]
    assert len(warnings) == 1
    outside = [
        processor_outside_window(row, model.config.world_token_id, 32, mask)
        for row, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]
    assert all(n > 0 for n in outside)
    assert warnings[0].getMessage().startswith(f"{sum(outside)} of {2 * 64} world tokens")
    # the default pooling (4: 4 tokens for a 64 px world image here) stays inside the window: no warning
    caplog.clear()
    quiet = real_world_model_factory(world_pooling=4)
    assert quiet.config.num_world_tokens == 4
    with caplog.at_level(logging.WARNING, logger="theworld.processing_theworld"):
        quiet.processor.apply_chat_template(conversations(sample_images, texts), add_generation_prompt=True,
                                            tokenize=True, return_dict=True, return_tensors="pt", padding=True)  # fmt: skip
    assert not [r for r in caplog.records if "sliding-window" in r.getMessage()]


def test_no_content_dropped_by_default(world_model_factory):
    """A 256 x 64 white image with a red bar in its leftmost 16 columns keeps red in the leftmost tenth."""
    model = world_model_factory()
    assert model.config.world_resize_mode == "squash"
    pixels = np.full((64, 256, 3), 255, dtype=np.uint8)
    pixels[:, :16] = (255, 0, 0)
    world = model.processor.world_pixel_values([Image.fromarray(pixels)])
    size = model.config.world_image_size
    assert tuple(world.shape) == (1, 3, size, size)
    tenth = world[0, :, :, : size // 10]
    red = (tenth[0] > 0.8) & (tenth[1] < -0.8) & (tenth[2] < -0.8)
    assert red.any(dim=0).sum() >= 1 and bool(red[:, 0].all())
    # the rest of the picture is still there too (white on the right)
    assert bool((world[0, :, :, -1] > 0.9).all())


# ----------------------------------------------------------------------------------------------------------------------
# The real-shape benchmark (smoke)
# ----------------------------------------------------------------------------------------------------------------------
def test_real_shape_bench_smoke(tmp_path):
    command = [
        sys.executable, str(ROOT / "benchmarks" / "real_shape_bench.py"), "--device", "cpu", "--layers", "1",
        "--vision-layers", "1", "--vocab-size", "2048", "--image-size", "112", "--mm-tokens-per-image", "16",
        "--world-image-size", "16", "--world-pooling", "1", "--prompt-tokens", "4", "--batch", "1", "--repeats", "0",
        "--threads", "2",
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-4000:]
    out = run.stdout
    assert "CUT: layers, vision_layers, vocab_size, image_size, mm_tokens_per_image" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["theworld"],
                                                                                               ["gemma-full"],
                                                                                               ["gemma-projector"])}  # fmt: skip
    assert set(rows) == {"theworld", "gemma-full", "gemma-projector"}
    assert int(rows["theworld"][2].replace(",", "")) == PROJECTOR + BOUNDARY
    assert int(rows["gemma-projector"][2].replace(",", "")) == GEMMA_MM_PROJECTOR
    for row in rows.values():
        assert float(row[3]) > 0 and float(row[4]) > 0 and float(row[5]) > 0
    full_line = next(line for line in out.splitlines() if line.startswith("ratio TheWorld / Gemma 3 full fine-tune"))
    assert "train step time" in full_line and "(earlier code 4.9x, target <= 1.3x)" in full_line
    assert "(earlier code 1.9x, target <= 1.15x)" in full_line and "the targets apply at full depth" in full_line
    assert any(line.startswith("ratio TheWorld / Gemma 3 projector-only") for line in out.splitlines())
    assert not (tmp_path / "hf-home").exists() or not any((tmp_path / "hf-home").rglob("*"))
