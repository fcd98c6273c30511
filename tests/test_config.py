"""TheWorldConfig: the composite layout, derived geometry, validation with errors naming the field, misspelt fields,
extra attributes, provenance, round trips, and the upgrade of theworld 0.1.0 configs (checkpoint format 1)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, PreTrainedConfig

from theworld import TheWorldConfig, TheWorldEncoderConfig
from theworld.configuration_theworld import (
    ARCHITECTURE_FIELDS,
    FORMAT_1_DEFAULTS,
    LOAD_TIME_FIELDS,
    WAN_LATENTS_MEAN,
    upgrade_config_dict,
)
from theworld.modeling_theworld import TheWorldProjector


def _plain(cfg: TheWorldConfig) -> dict:
    """``to_dict()`` without the load path, which differs between a built and a loaded config by design."""
    data = cfg.to_dict()
    data.pop("_name_or_path", None)
    return data


def _config(**kw) -> TheWorldConfig:
    kw.setdefault("world_pooling", 1)
    return TheWorldConfig(**kw)


# ----------------------------------------------------------------------------------------------------------------------
# defaults and layout
# ----------------------------------------------------------------------------------------------------------------------
def test_defaults_are_gemma3_4b_and_cosmos_predict2():
    cfg = TheWorldConfig()
    assert set(TheWorldConfig.sub_configs) == {"text_config", "vision_config", "world_config"}
    assert cfg.text_config.model_type == "gemma3_text" and cfg.vision_config.model_type == "siglip_vision_model"
    assert isinstance(cfg.world_config, TheWorldEncoderConfig) and cfg.world_config.latents_mean == WAN_LATENTS_MEAN
    # 512 px, pooling 4: a 16 x 16 grid of 16-channel latents = 256 world tokens, like Gemma's 256 image tokens
    assert (cfg.world_image_size, cfg.world_pooling, cfg.num_world_tokens) == (512, 4, 256)
    assert cfg.num_world_tokens == cfg.mm_tokens_per_image
    assert (cfg.world_attention, cfg.world_placement, cfg.world_resize_mode) == (
        "bidirectional",
        "after_image",
        "squash",
    )
    assert cfg.world_encoder_dtype == "float32"
    assert (cfg.rollout_mode, cfg.rollout_num_inference_steps, cfg.rollout_guidance_scale) == ("joint", 35, 7.0)
    # the world tokens take spare rows of Gemma 3's 262,208-row embedding, after <image_soft_token> (262144)
    assert cfg.world_token_ids == (262145, 262146, 262147) and cfg.image_token_id == 262144
    assert (cfg.gemma_model_name, cfg.cosmos_model_name) == (
        "google/gemma-3-4b-it",
        "nvidia/Cosmos-Predict2-2B-Video2World",
    )
    assert cfg.trainable_prefixes() == ["model.world_projector.", "model.world_boundary_embeddings."]
    assert set(ARCHITECTURE_FIELDS).isdisjoint(LOAD_TIME_FIELDS)


# ----------------------------------------------------------------------------------------------------------------------
# num_world_tokens and projector input size
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "tokens", "dim"),
    [
        # the formula: (world_image_size / (8 * world_pooling))**2 spatial tokens of z=16, or z=16 channel tokens,
        # times 1 + num_world_steps frames
        ({"world_image_size": 512}, 4096, 16),
        ({"world_image_size": 512, "world_projection_mode": "channel"}, 16, 4096),
        ({"world_image_size": 512, "world_pooling": 4}, 256, 16),
        ({"world_image_size": 64}, 64, 16),
        ({"world_image_size": 64, "world_projection_mode": "channel"}, 16, 64),
        ({"world_image_size": 32, "world_projection_mode": "channel"}, 16, 16),
        ({"world_image_size": 64, "world_pooling": 2}, 16, 16),
        ({"world_image_size": 64, "world_pooling": 4, "world_projection_mode": "channel"}, 16, 4),
        ({"world_image_size": 128, "world_pooling": 2}, 64, 16),
        ({"world_image_size": 64, "num_world_steps": 2}, 3 * 64, 16),
        ({"world_image_size": 64, "num_world_steps": 1, "world_projection_mode": "channel"}, 2 * 16, 64),
        ({"world_image_size": 64, "enable_world": False}, 0, 16),
    ],
)
def test_num_world_tokens_and_token_dim(kw, tokens, dim):
    cfg = _config(**kw)
    assert cfg.num_world_tokens == tokens
    assert cfg.world_token_dim == dim
    if cfg.enable_world and cfg.world_projection_mode == "spatial":
        side = cfg.world_image_size // (8 * cfg.world_pooling)
        assert cfg.num_world_tokens == side**2 * (1 + cfg.num_world_steps)


def test_geometry_follows_the_world_encoder_config():
    """An encoder with other z / compression changes the token count and width: nothing is hard-coded."""
    encoder = {"z_dim": 8, "dim_mult": [1, 2, 4], "temperal_downsample": [False, True]}
    encoder.update(latents_mean=[0.0] * 8, latents_std=[1.0] * 8)
    cfg = _config(world_config=encoder, world_image_size=64)  # 4x compression, z=8
    assert cfg.world_config.spatial_compression == 4
    assert (cfg.latent_channels, cfg.latent_grid_size) == (8, 16)
    assert (cfg.num_world_tokens, cfg.world_token_dim) == (256, 8)
    channel = _config(world_config=encoder, world_image_size=64, world_projection_mode="channel")
    assert (channel.num_world_tokens, channel.world_token_dim) == (8, 256)


@pytest.mark.parametrize(
    ("mode", "arch", "params"),
    [
        ("spatial", "mlp", 6_599_680),  # the earlier code's counts with d = 2560 at 512 px, pooling 1
        ("channel", "mlp", 17_044_480),
        ("spatial", "linear", 16 * 2560 + 2560),
        ("channel", "mlp_no_final_gelu", 17_044_480),
    ],
)
def test_projector_size_matches_earlier_code(mode, arch, params):
    cfg = _config(
        world_image_size=512,
        world_projection_mode=mode,
        projection_architecture=arch,
        text_config={"hidden_size": 2560},
    )
    with torch.device("meta"):
        projector = TheWorldProjector(cfg)
    assert sum(p.numel() for p in projector.parameters()) == params
    assert projector.linear_1.in_features == cfg.world_token_dim
    x = torch.randn(1, 3, cfg.world_token_dim, device="meta")
    assert projector(x).shape == (1, 3, 2560)


def test_projector_activations():
    cfg = _config(world_image_size=32, text_config={"hidden_size": 8})
    torch.manual_seed(0)
    x = torch.randn(2, 5, cfg.world_token_dim)
    outputs = {}
    for arch in ("mlp", "mlp_no_final_gelu", "linear"):
        projector = TheWorldProjector(
            _config(world_image_size=32, text_config={"hidden_size": 8}, projection_architecture=arch)
        )
        torch.manual_seed(1)
        for p in projector.parameters():
            torch.nn.init.normal_(p)
        outputs[arch] = projector(x)
        if arch != "linear":
            inner = torch.nn.functional.gelu(projector.linear_1(x))
            expected = projector.linear_2(inner)
            torch.testing.assert_close(outputs[arch], torch.nn.functional.gelu(expected) if arch == "mlp" else expected)
        else:
            torch.testing.assert_close(outputs[arch], projector.linear_1(x))
            assert not hasattr(projector, "linear_2")


# ----------------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"world_projection_mode": "pixel"}, r"world_projection_mode must be one of .*'pixel'"),
        ({"projection_architecture": "conv"}, r"projection_architecture must be one of .*'conv'"),
        ({"world_attention": "sideways"}, r"world_attention must be one of \('bidirectional', 'causal'\)"),
        ({"world_placement": "end"}, r"world_placement must be one of"),
        ({"world_resize_mode": "stretch"}, r"world_resize_mode must be one of"),
        ({"rollout_mode": "parallel"}, r"rollout_mode must be one of"),
        ({"world_encoder_dtype": "bfloat16"}, r"world_encoder_dtype must be 'float32' .* or None"),
        ({"checkpoint_kind": "half"}, r"checkpoint_kind must be one of"),
        (
            {"enable_world": False, "freeze_cosmos_vae": False},
            r"freeze_cosmos_vae=False contradicts enable_world=False",
        ),
        ({"max_world_steps": -1}, r"max_world_steps must be >= 0, got -1"),
        ({"num_world_steps": 5, "max_world_steps": 4}, r"num_world_steps must lie in \[0, max_world_steps=4\], got 5"),
        ({"num_world_steps": -1}, r"num_world_steps must lie in"),
        ({"world_pooling": 0}, r"world_pooling must be >= 1, got 0"),
        ({"rollout_num_inference_steps": 1}, r"rollout_num_inference_steps must be >= 2"),
        ({"world_image_size": 8}, r"world_image_size must be >= 16 pixels, got 8"),
        (
            {"world_image_size": 100},
            r"world_image_size=100 must be divisible by the world encoder's spatial compression \(8\)",
        ),
        ({"world_image_size": 64, "world_pooling": 3}, r"world_image_size=64 .*world_pooling \(3\)"),
        ({"world_token": "<start_of_world>"}, r"start_of_world_token, end_of_world_token and world_token"),
        ({"checkpoint_format_version": 99}, r"checkpoint_format_version=99 was written by a newer theworld"),
    ],
)
def test_invalid_values_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        _config(**kw)


def test_invalid_world_encoder_config():
    with pytest.raises(ValueError, match=r"temperal_downsample has 2 entries but dim_mult \[1, 2, 4, 4\] needs 3"):
        TheWorldEncoderConfig(temperal_downsample=[False, True])
    with pytest.raises(ValueError, match=r"latents_mean and latents_std need z_dim=8 values, got 16 and 16"):
        TheWorldEncoderConfig(z_dim=8)
    with pytest.raises(ValueError, match=r"is_residual=True \(the Wan 2.2 VAE\)"):
        TheWorldEncoderConfig.from_vae_config({"is_residual": True})


@pytest.mark.parametrize(
    ("typo", "field"),
    [
        ("world_pooing", "world_pooling"),
        ("world_image_sise", "world_image_size"),
        ("freeze_cosmos", "freeze_cosmos_vae"),
        ("enable_wrld", "enable_world"),
        ("gemma_model_nam", "gemma_model_name"),
        ("world_token_ids", "world_token_id"),
    ],
)
def test_misspelt_field_names_the_closest_field(typo, field):
    with pytest.raises(ValueError, match=rf"unknown field '{typo}'; did you mean '{field}'\?"):
        _config(**{typo: 1})
    assert TheWorldConfig.closest_field(typo) == field


def test_standard_config_kwargs_and_aliases_are_not_misspellings():
    """Keyword arguments every config takes (special token ids near boi/eoi_token_index) and attribute_map aliases
    are accepted; unknown names close to no field are kept as extra attributes."""
    cfg = _config(bos_token_id=2, eos_token_id=[1, 106], pad_token_id=0, image_token_id=77, boi_token_id=75)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (2, [1, 106], 0)
    assert (cfg.image_token_index, cfg.boi_token_index) == (77, 75)
    for name in ("bos_token_id", "image_token_id", "world_pooling", "_private", "checkpoint_name", "my_notes"):
        assert TheWorldConfig.closest_field(name) is None, name


def test_misspelt_field_in_config_json_is_refused(tmp_path):
    _config(world_image_size=64).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["freeze_cosmos"] = True  # a typo of freeze_cosmos_vae must not be silently kept
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"unknown field 'freeze_cosmos'; did you mean 'freeze_cosmos_vae'\?"):
        TheWorldConfig.from_pretrained(tmp_path)


def test_validation_runs_when_loading_config_json(tmp_path):
    _config(world_image_size=64).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["world_projection_mode"] = "diagonal"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="world_projection_mode must be one of"):
        TheWorldConfig.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# provenance and trainable prefixes
# ----------------------------------------------------------------------------------------------------------------------
def test_provenance_lives_in_base_models():
    cfg = _config(gemma_model_name="org/gemma", cosmos_revision="abc", base_fingerprints={"gemma": {"m.st": "x"}})
    assert cfg.base_models["gemma"] == {"name": "org/gemma", "revision": None, "fingerprints": {"m.st": "x"}}
    assert (cfg.cosmos_model_name, cfg.cosmos_revision) == ("nvidia/Cosmos-Predict2-2B-Video2World", "abc")
    cfg.gemma_revision = "0" * 40
    assert cfg.base_models["gemma"]["revision"] == "0" * 40
    assert cfg.base_fingerprints == {"gemma": {"m.st": "x"}, "cosmos": {}}
    diff = cfg.to_diff_dict()  # provenance and format are always written
    assert diff["base_models"]["gemma"]["name"] == "org/gemma" and diff["checkpoint_format_version"] == 2
    for key in ("gemma_model_name", "gemma_revision", "cosmos_model_name", "cosmos_revision", "base_fingerprints"):
        assert key not in cfg.to_dict()


def test_trainable_prefixes_follow_freeze_flags():
    assert _config().trainable_prefixes() == ["model.world_projector.", "model.world_boundary_embeddings."]
    everything = _config(freeze_gemma_vision=False, freeze_gemma_language=False, freeze_cosmos_vae=False)
    assert set(everything.trainable_prefixes()) == {
        "model.world_projector.",
        "model.world_boundary_embeddings.",
        "model.world_encoder.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
        "model.language_model.",
        "lm_head.",
    }
    assert _config(enable_world=False, freeze_gemma_language=False).trainable_prefixes() == [
        "model.language_model.",
        "lm_head.",
    ]
    rollout = _config(num_world_steps=1).trainable_prefixes()
    assert "model.world_step_embeddings." in rollout and "model.world_rollout.prompt_embeds" in rollout


# ----------------------------------------------------------------------------------------------------------------------
# round trips
# ----------------------------------------------------------------------------------------------------------------------
def test_config_round_trip_of_a_built_model(tmp_path, world_model):
    """The full config of a built model (Gemma sub-configs, world encoder config, token ids, provenance) survives
    to_dict -> from_dict and save -> load (also through AutoConfig)."""
    cfg = world_model.config
    assert TheWorldConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    cfg.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "theworld"
    assert data["world_config"]["z_dim"] == 16 and data["world_config"]["model_type"] == "theworld_world_encoder"
    assert data["base_models"]["gemma"]["fingerprints"]
    loaded = TheWorldConfig.from_pretrained(tmp_path)
    auto = AutoConfig.from_pretrained(tmp_path)
    assert type(auto) is TheWorldConfig
    for other in (loaded, auto):
        assert _plain(other) == _plain(cfg)
        assert other.num_world_tokens == cfg.num_world_tokens == 64
        assert other.world_token_id == cfg.world_token_id
        assert other.text_config.hidden_size == cfg.text_config.hidden_size
        assert other.vision_config.image_size == cfg.vision_config.image_size
        assert other.gemma_model_name == cfg.gemma_model_name and other.base_fingerprints == cfg.base_fingerprints


def test_extra_attributes_survive_every_round_trip(tmp_path):
    cfg = _config(world_image_size=128, world_pooling=2, projection_architecture="linear", my_dataset="clevr-v2")
    assert cfg.my_dataset == "clevr-v2"
    assert TheWorldConfig.from_dict(cfg.to_dict()).my_dataset == "clevr-v2"
    assert json.loads(cfg.to_json_string())["my_dataset"] == "clevr-v2"
    assert json.loads(cfg.to_json_string(use_diff=False))["my_dataset"] == "clevr-v2"
    cfg.save_pretrained(tmp_path)
    loaded = TheWorldConfig.from_pretrained(tmp_path)
    assert loaded.my_dataset == "clevr-v2"
    assert _plain(loaded) == _plain(cfg)
    assert (loaded.num_world_tokens, loaded.world_token_dim) == (64, 16)


def test_config_round_trip_channel_pooling(tmp_path):
    cfg = _config(
        world_image_size=128,
        world_projection_mode="channel",
        world_pooling=2,
        projection_architecture="linear",
        freeze_gemma_language=False,
    )
    cfg.save_pretrained(tmp_path)
    loaded = TheWorldConfig.from_pretrained(tmp_path)
    assert _plain(loaded) == _plain(cfg)
    assert (loaded.num_world_tokens, loaded.world_token_dim) == (16, 64)


def test_format_1_config_is_upgraded(tmp_path):
    """A theworld 0.1.0 config.json: Gemma 3's fields flat, the Wan VAE as vae_config, the DiT and scheduler configs,
    flat provenance, and every value equal to a 0.1.0 default left out."""
    vae = {"_class_name": "AutoencoderKLWan", "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4],
           "num_res_blocks": 2, "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0,
           "latents_mean": WAN_LATENTS_MEAN, "latents_std": [1.5] * 16}  # fmt: skip
    old = {
        "model_type": "theworld",
        "architectures": ["TheWorld"],
        "text_config": {"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 900},
        "vision_config": {"model_type": "siglip_vision_model", "hidden_size": 32},
        "mm_tokens_per_image": 16,
        "image_token_index": 787,
        "world_image_size": 64,
        "vae_config": vae,
        "transformer_config": {"num_layers": 2},
        "scheduler_config": {"_class_name": "FlowMatchEulerDiscreteScheduler"},
        "gemma_model_name": "/data/gemma",
        "cosmos_model_name": "/data/cosmos",
        "cosmos_revision": "b" * 40,
        "base_fingerprints": {"gemma": {"model.safetensors": "g"}, "cosmos_vae": {"diffusion_pytorch_model.safetensors": "v"}},
        "start_of_world_token_id": 788,
        "end_of_world_token_id": 789,
        "world_token_id": 790,
        "theworld_version": "0.1.0",
    }  # fmt: skip
    upgraded = upgrade_config_dict(old)
    assert (
        upgraded["checkpoint_format_version"] == 2 and "vae_config" not in upgraded and "architectures" not in upgraded
    )
    (tmp_path / "config.json").write_text(json.dumps(old))
    for cfg in (TheWorldConfig.from_dict(old), TheWorldConfig.from_pretrained(tmp_path)):
        for key, value in FORMAT_1_DEFAULTS.items():
            if key != "world_image_size":
                assert getattr(cfg, key) == value, key
        assert cfg.world_image_size == 64 and cfg.num_world_tokens == 64  # 0.1.0: pooling 1
        assert (cfg.world_attention, cfg.world_placement, cfg.world_resize_mode) == (
            "causal",
            "after_bos",
            "center_crop",
        )
        assert cfg.world_config.latents_std == [1.5] * 16 and cfg.world_config.base_dim == 96
        assert cfg.rollout_transformer_config == {"num_layers": 2}
        assert cfg.rollout_scheduler_config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
        assert (cfg.gemma_model_name, cfg.cosmos_model_name, cfg.cosmos_revision) == (
            "/data/gemma",
            "/data/cosmos",
            "b" * 40,
        )
        assert cfg.base_fingerprints == {
            "gemma": {"model.safetensors": "g"},
            "cosmos": {"vae/diffusion_pytorch_model.safetensors": "v"},
        }
        assert cfg.world_token_ids == (788, 789, 790) and cfg.text_config.vocab_size == 900
    # today's configs pass through unchanged
    today = _config().to_dict()
    assert upgrade_config_dict(today) is today


def test_theworld_config_is_a_plain_pretrained_config():
    cfg = _config()
    assert isinstance(cfg, PreTrainedConfig) and cfg.model_type == "theworld"
    assert cfg.get_text_config() is cfg.text_config
    assert isinstance(cfg.world_config, PreTrainedConfig)
