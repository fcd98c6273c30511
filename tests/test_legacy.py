"""Checkpoints of the earlier research code load (issue 3, point 6), converted on the fly.

The checkpoints are built by hand from the format description in ORIGINAL.md ("Its checkpoint format"): a
Gemma3Config-shaped ``config.json`` with ``model_type: "the_world"``, ``architectures: ["Gemma3ForConditionalGeneration"]``,
the base names, ``enable_world``, ``world_projection_mode``, ``projection_architecture`` and the three freeze flags, no
``auto_map``, no tokenizer or processor files; and a ``model.safetensors`` holding only what had ``requires_grad``
(``world_projector.projection.{0,2}.{weight,bias}`` or ``world_projector.projection.{weight,bias}``, plus
``cosmos_vae.{encoder,decoder,quant_conv,post_quant_conv}.*`` when the VAE was unfrozen).

The earlier code squashed every image to 512 px and never recorded it: such configs default to
``world_image_size=512``, and may be given another size at load time (recorded configs may not). In spatial mode the
projector does not depend on the image size; in channel mode it does, and a wrong size is a strict shape error.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoint import logits_and_tokens, model_inputs

from theworld import TheWorld

D_MODEL = 64  # the tiny Gemma's hidden size
Z_DIM = 16  # the tiny VAE's latent channels


def write_legacy_checkpoint(folder, tiny_bases, tensors: dict, **fields) -> dict:
    """A checkpoint folder exactly as the earlier code wrote it."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(tiny_bases.gemma, "config.json")) as f:
        config = json.load(f)  # Gemma3Config-shaped: text_config, vision_config, image token fields ...
    config.update(
        model_type="the_world",
        architectures=["Gemma3ForConditionalGeneration"],
        gemma_model_name=tiny_bases.gemma,
        cosmos_model_name=tiny_bases.cosmos,
        enable_world=True,
        world_projection_mode="spatial",
        projection_architecture="mlp",
        freeze_gemma_vision=True,
        freeze_gemma_language=True,
        freeze_cosmos_vae=True,
        load_full_cosmos_pipeline=True,  # the earlier code loaded the whole pipeline (and never rolled out)
        num_world_steps=0,
    )
    config.update(fields)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"))
    return config


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def mlp_projector(in_dim: int, seed: int) -> dict:
    return {
        "world_projector.projection.0.weight": randn(D_MODEL, in_dim, seed=seed) * 0.2,
        "world_projector.projection.0.bias": randn(D_MODEL, seed=seed + 1) * 0.1,
        "world_projector.projection.2.weight": randn(D_MODEL, D_MODEL, seed=seed + 2) * 0.2,
        "world_projector.projection.2.bias": randn(D_MODEL, seed=seed + 3) * 0.1,
    }


def test_earlier_mlp_spatial_checkpoint_loads(tiny_bases, tmp_path, sample_images):
    folder = tmp_path / "legacy_mlp"
    tensors = mlp_projector(Z_DIM, seed=1)
    write_legacy_checkpoint(folder, tiny_bases, tensors)
    for loader in (TheWorld.from_pretrained, TheWorld.from_checkpoint):
        model = loader(str(folder), world_image_size=64)  # allowed: the earlier config never recorded a size
        state = model.state_dict()
        for key, value in tensors.items():
            assert torch.equal(state[key], value), key
        assert model.config.model_type == "theworld" and model.config.world_image_size == 64
        assert model.config.load_full_cosmos_pipeline is False  # no rollout: it never influenced outputs
        assert model.config.gemma_model_name == tiny_bases.gemma
        # the boundary rows were never saved by the earlier code: they start at Gemma's image markers
        boi = model.get_input_embeddings()(torch.tensor([model.config.boi_token_index])).float()
        assert torch.equal(model.world_boundary_embeddings.weight[:1], boi)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == set(tensors) | {"world_boundary_embeddings.weight"}
    inputs = model_inputs(model.processor, sample_images)  # processor built from the Gemma base + world tokens
    assert int((inputs["input_ids"] == model.config.world_token_id).sum()) == 2 * 64
    logits, tokens = logits_and_tokens(model, inputs, new_tokens=3)
    assert torch.isfinite(logits).all() and tokens.shape[1] == inputs["input_ids"].shape[1] + 3

    # Converted once, it is a normal checkpoint (the boundary rows are saved from now on) and reloads bit for bit.
    model.save_pretrained(tmp_path / "converted")
    with open(tmp_path / "converted" / "config.json") as f:
        converted = json.load(f)
    assert converted["model_type"] == "theworld" and "AutoModel" in converted["auto_map"]
    again = TheWorld.from_pretrained(str(tmp_path / "converted"))
    assert torch.equal(logits_and_tokens(again, inputs, new_tokens=3)[0], logits)


def test_earlier_default_image_size_is_512(tiny_bases, tmp_path):
    folder = tmp_path / "legacy_512"
    write_legacy_checkpoint(folder, tiny_bases, mlp_projector(Z_DIM, seed=2))
    model = TheWorld.from_checkpoint(str(folder))
    assert model.config.world_image_size == 512
    assert model.config.num_world_tokens == (512 // 8) ** 2
    assert model.processor.world_image_size == 512


def test_earlier_linear_channel_checkpoint_with_unfrozen_vae(tiny_bases, tmp_path):
    vae = load_file(os.path.join(tiny_bases.cosmos, "vae", "diffusion_pytorch_model.safetensors"))
    encoder = {f"cosmos_vae.{k}": v + 0.01 for k, v in vae.items() if k.startswith(("encoder.", "quant_conv."))}
    decoder = {f"cosmos_vae.{k}": v for k, v in vae.items() if k.startswith(("decoder.", "post_quant_conv."))}
    assert encoder and decoder
    in_dim = (512 // 8) ** 2  # channel mode: one token per latent channel, h*w dims, at the earlier 512 px
    projector = {
        "world_projector.projection.weight": randn(D_MODEL, in_dim, seed=3) * 0.01,
        "world_projector.projection.bias": randn(D_MODEL, seed=4) * 0.1,
    }
    folder = tmp_path / "legacy_linear"
    write_legacy_checkpoint(
        folder,
        tiny_bases,
        {**projector, **encoder, **decoder},
        world_projection_mode="channel",
        projection_architecture="linear",
        freeze_cosmos_vae=False,
    )
    model = TheWorld.from_pretrained(str(folder))
    state = model.state_dict()
    for key, value in {**projector, **encoder}.items():
        assert torch.equal(state[key], value), key
    assert not any(k.startswith(("cosmos_vae.decoder.", "cosmos_vae.post_quant_conv.")) for k in state)
    assert model.config.num_world_tokens == Z_DIM
    assert all(p.requires_grad for p in model.cosmos_vae.encoder.parameters())
    # the world path runs on cached latents (B, z, T, h, w), without encoding a 512 px image
    latents = randn(1, Z_DIM, 1, 64, 64, seed=5)
    with torch.no_grad():
        feats = model.world_features(latents)
    expected = torch.nn.functional.linear(latents[:, :, 0].flatten(2), projector["world_projector.projection.weight"],
                                          projector["world_projector.projection.bias"])
    torch.testing.assert_close(feats, expected)
    # In channel mode the image size fixes the projector's input width: another size is a strict shape error.
    with pytest.raises(ValueError, match=r"shape mismatches world_projector.projection.weight: checkpoint \(64, 4096\)"):
        TheWorld.from_pretrained(str(folder), world_image_size=64)


def test_earlier_checkpoint_with_wrong_projector_names_is_refused(tiny_bases, tmp_path):
    """The earlier loader forced strict=False and silently kept a random projector; here it is an error."""
    folder = tmp_path / "legacy_bad"
    tensors = {k.replace("projection.", "proj."): v for k, v in mlp_projector(Z_DIM, seed=6).items()}
    write_legacy_checkpoint(folder, tiny_bases, tensors)
    with pytest.raises(ValueError, match=r"unknown keys \['world_projector.proj.0.bias'.*missing keys"):
        TheWorld.from_pretrained(str(folder), world_image_size=64)
