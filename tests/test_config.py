"""TheWorldConfig: derived geometry, validation with field-naming errors, and a save/load round trip (issue 2, point 3)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig

from theworld import TheWorldConfig
from theworld.modeling_theworld import TheWorldProjector

# The Cosmos-Predict2 Wan VAE geometry: z_dim 16, 8x spatial compression (three temporal-downsample stages).
WAN_VAE = {"z_dim": 16, "temperal_downsample": [False, True, True]}


def _plain(cfg: TheWorldConfig) -> dict:
    """``to_dict()`` without the load path, which differs between a built and a loaded config by design."""
    data = cfg.to_dict()
    data.pop("_name_or_path", None)
    return data


def _config(**kw) -> TheWorldConfig:
    kw.setdefault("vae_config", WAN_VAE)
    return TheWorldConfig(**kw)


# ----------------------------------------------------------------------------------------------------------------------
# num_world_tokens and projector input size
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "tokens", "dim"),
    [
        # the earlier code's numbers at 512 px: 64x64 = 4096 spatial tokens of 16 dims, or 16 channel tokens of 4096
        ({"world_image_size": 512}, 4096, 16),
        ({"world_image_size": 512, "world_projection_mode": "channel"}, 16, 4096),
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


def test_geometry_follows_vae_config():
    """A VAE with other z / compression changes the token count and width: nothing is hard-coded."""
    cfg = _config(vae_config={"z_dim": 8, "temperal_downsample": [False, True]}, world_image_size=64)  # 4x, z=8
    assert cfg.latent_channels == 8
    assert cfg.latent_grid_size == 16
    assert cfg.num_world_tokens == 256
    assert cfg.world_token_dim == 8
    channel = _config(
        vae_config={"z_dim": 8, "temperal_downsample": [False, True]},
        world_image_size=64,
        world_projection_mode="channel",
    )
    assert (channel.num_world_tokens, channel.world_token_dim) == (8, 256)


@pytest.mark.parametrize(
    ("mode", "arch", "params"),
    [
        ("spatial", "mlp", 6_599_680),  # the earlier code's counts with d = 2560 at 512 px
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
        projector = TheWorldProjector(cfg.world_token_dim, cfg.text_config.hidden_size, arch)
    assert sum(p.numel() for p in projector.parameters()) == params
    gelus = [m for m in projector.modules() if isinstance(m, torch.nn.GELU)]
    assert len(gelus) == {"mlp": 2, "mlp_no_final_gelu": 1, "linear": 0}[arch]


def test_channel_projector_input_size_comes_from_config(world_model_factory):
    """Channel mode at 32 px: 4x4 latent grid, so the projector reads 16 features (the earlier code hard-coded 64*64)."""
    model = world_model_factory(world_projection_mode="channel", world_image_size=32)
    first = model.world_projector.projection[0]
    assert first.in_features == model.config.world_token_dim == 16
    assert model.processor.num_world_tokens == model.config.num_world_tokens == 16
    latents = torch.randn(1, 16, 1, 4, 4)
    assert model.world_features(latents).shape == (1, 16, model.config.text_config.hidden_size)


# ----------------------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"world_projection_mode": "pixel"}, r"world_projection_mode must be one of .*'pixel'"),
        ({"projection_architecture": "conv"}, r"projection_architecture must be one of .*'conv'"),
        ({"checkpoint_kind": "half"}, r"checkpoint_kind must be one of"),
        (
            {"enable_world": False, "freeze_cosmos_vae": False},
            r"freeze_cosmos_vae=False contradicts enable_world=False",
        ),
        ({"max_world_steps": -1}, r"max_world_steps must be a non-negative int"),
        ({"num_world_steps": 5, "max_world_steps": 4}, r"num_world_steps must be an int in \[0, max_world_steps=4\]"),
        ({"num_world_steps": -1}, r"num_world_steps must be an int"),
        ({"world_pooling": 0}, r"world_pooling must be an int >= 1"),
        ({"rollout_num_inference_steps": 0}, r"rollout_num_inference_steps must be an int >= 1"),
        ({"world_image_size": 8}, r"world_image_size must be an int >= 16"),
        ({"world_image_size": 100}, r"world_image_size=100 must be divisible by the VAE's spatial compression \(8\)"),
        ({"world_image_size": 64, "world_pooling": 3}, r"world_image_size=64 .*world_pooling \(3\)"),
        ({"world_token": "<start_of_world>"}, r"start_of_world_token, end_of_world_token and world_token"),
        ({"checkpoint_format_version": 99}, r"checkpoint_format_version=99 was written by a newer"),
    ],
)
def test_invalid_values_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        _config(**kw)


def test_unknown_field_is_refused():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['world_size_typo'\]"):
        _config(world_size_typo=3)


def test_unknown_field_in_config_json_is_refused(tmp_path):
    _config(world_image_size=64).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["freeze_cosmos"] = True  # a typo of freeze_cosmos_vae must not be silently dropped
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['freeze_cosmos'\]"):
        TheWorldConfig.from_pretrained(tmp_path)


def test_validation_runs_when_loading_config_json(tmp_path):
    _config(world_image_size=64).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data["world_projection_mode"] = "diagonal"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="world_projection_mode must be one of"):
        TheWorldConfig.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# trainable prefixes and round trip
# ----------------------------------------------------------------------------------------------------------------------
def test_trainable_prefixes_follow_freeze_flags():
    assert _config().trainable_prefixes() == ["world_projector.", "world_boundary_embeddings."]
    everything = _config(freeze_gemma_vision=False, freeze_gemma_language=False, freeze_cosmos_vae=False)
    assert set(everything.trainable_prefixes()) == {
        "world_projector.",
        "world_boundary_embeddings.",
        "cosmos_vae.encoder.",
        "cosmos_vae.quant_conv.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
        "model.language_model.",
        "lm_head.",
    }
    assert _config(enable_world=False, freeze_gemma_language=False).trainable_prefixes() == [
        "model.language_model.",
        "lm_head.",
    ]
    assert "world_step_embeddings." in _config(num_world_steps=1).trainable_prefixes()


def test_config_round_trip(tmp_path, world_model):
    """The full config of a built model (Gemma sub-configs, VAE config, token ids) survives save -> load."""
    cfg = world_model.config
    cfg.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["model_type"] == "theworld"
    assert data["vae_config"]["z_dim"] == 16
    loaded = TheWorldConfig.from_pretrained(tmp_path)
    auto = AutoConfig.from_pretrained(tmp_path)
    assert type(auto) is TheWorldConfig
    for other in (loaded, auto):
        assert _plain(other) == _plain(cfg)
        assert other.num_world_tokens == cfg.num_world_tokens == 64
        assert other.world_token_id == cfg.world_token_id
        assert other.text_config.hidden_size == cfg.text_config.hidden_size
        assert other.vision_config.image_size == cfg.vision_config.image_size


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
