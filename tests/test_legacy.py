"""Checkpoints of earlier versions keep loading (issue 8) and keep their behaviour (issue 9, point 10).

**theworld 0.1.0 (checkpoint format 1).** `write_format1` lays a model out exactly as 0.1.0's ``save_pretrained``
wrote it (read from its writer, ``git show 30d92f6:src/theworld/modeling_theworld.py``): a flat Gemma3Config-shaped
``config.json`` with ``model_type: "theworld"``, ``checkpoint_format_version: 1``, the Wan VAE config as
``vae_config``, the DiT/scheduler configs as ``transformer_config``/``scheduler_config``, the provenance as flat fields
with ``sha256t:`` fingerprints, ``architectures: ["TheWorld"]`` and a three-entry ``auto_map``; tensors under 0.1.0's
names (``world_projector.projection.{0,2}.*``, ``world_boundary_embeddings.weight``, ``world_step_embeddings.weight``,
``world_rollout.prompt_embeds`` of shape ``(1, 1, dim)``, ``cosmos_vae.encoder.*`` including the temporal
``time_conv`` tensors an image never reaches, ``model.language_model.*`` ...), each safetensors header with 0.1.0's
metadata and sha256; full checkpoints sharded with an index. The model it is made from is built today with 0.1.0's
settings (world block after ``<bos>``, causal world attention, centre crop, pooling 1, autoregressive rollout), so
loading must reproduce its world features and logits exactly.

**The earlier research code** (``model_type: "the_world"``, ORIGINAL.md "Its checkpoint format"): a Gemma3Config with
the world fields, no ``auto_map``, no processor files, only the trainable tensors. Its projectors were trained on
[0, 255] images squashed to 512 px and unnormalised latents: that input path (``legacy_preprocessing``) is in force
for them, and the load says so.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_checkpoint import assert_same_state, logits_and_tokens, model_inputs, perturb

from theworld import TheWorld
from theworld.checkpoint_theworld import tensors_digest

D_MODEL = 64  # the tiny Gemma's hidden size
Z_DIM = 16  # the tiny VAE's latent channels
#: theworld 0.1.0's settings where today's defaults differ.
FORMAT_1 = dict(world_pooling=1, world_attention="causal", world_placement="after_bos", world_resize_mode="center_crop",
                world_encoder_dtype=None, rollout_mode="autoregressive", rollout_guidance_scale=1.0)  # fmt: skip
#: 0.1.0's names of today's keys (see ``EARLIER_KEY_RENAMES`` in checkpoint_theworld.py).
TO_0_1_0 = (
    ("model.world_projector.linear_1.", "world_projector.projection.0."),
    ("model.world_projector.linear_2.", "world_projector.projection.2."),
    ("model.world_boundary_embeddings.", "world_boundary_embeddings."),
    ("model.world_step_embeddings.", "world_step_embeddings."),
    ("model.world_rollout.", "world_rollout."),
    ("model.world_encoder.", "cosmos_vae."),
)


def old_name(key: str) -> str:
    for new, old in TO_0_1_0:
        if key.startswith(new):
            return old + key[len(new) :]
    return key


def format1_tensors(model, full: bool, cosmos: str) -> dict[str, torch.Tensor]:
    """The tensors 0.1.0 saved for ``model``, under 0.1.0's names."""
    cfg = model.config
    if full:
        state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied: stored once
    else:
        prefixes = [p for p in cfg.trainable_prefixes() if p != "model.world_rollout.negative_prompt_embeds"]
        state = {k: v for k, v in model.state_dict().items() if k.startswith(tuple(prefixes)) and k != "lm_head.weight"}
    out = {}
    for key, value in state.items():
        if key == "model.world_rollout.negative_prompt_embeds":
            continue  # 0.1.0 had no negative prompt
        if key == "model.world_rollout.prompt_embeds":
            value = value[:, :1]  # 0.1.0 kept the empty prompt's one non-zero row
        out[old_name(key)] = value.detach().clone().contiguous()
    if full or not cfg.freeze_cosmos_vae:  # 0.1.0's 3-D VAE encoder also held the temporal convolutions
        vae = load_file(os.path.join(cosmos, "vae", "diffusion_pytorch_model.safetensors"))
        out.update({f"cosmos_vae.{k}": v for k, v in vae.items() if "time_conv" in k and k.startswith("encoder.")})
    return out


def write_format1(model, folder, full: bool, cosmos: str, omit_defaults: bool = False) -> dict:
    """``model`` saved as theworld 0.1.0 saved it; returns the config dict written."""
    os.makedirs(folder, exist_ok=True)
    cfg = model.config
    kind = "full" if full else "partial"
    fingerprints = {"gemma": {"model.safetensors": "sha256t:" + "0" * 64},
                    "cosmos_vae": {"diffusion_pytorch_model.safetensors": "sha256t:" + "1" * 64}}  # fmt: skip
    with open(os.path.join(cosmos, "vae", "config.json")) as f:
        vae_config = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    config = {
        "architectures": ["TheWorld"],
        "auto_map": {"AutoConfig": "configuration_theworld.TheWorldConfig", "AutoModel": "modeling_theworld.TheWorld",
                     "AutoModelForImageTextToText": "modeling_theworld.TheWorld"},  # fmt: skip
        "base_fingerprints": fingerprints,
        "boi_token_index": cfg.boi_token_index,
        "checkpoint_format_version": 1,
        "checkpoint_kind": kind,
        "cosmos_model_name": cfg.cosmos_model_name,
        "cosmos_revision": cfg.cosmos_revision,
        "enable_world": cfg.enable_world,
        "end_of_world_token": cfg.end_of_world_token,
        "end_of_world_token_id": cfg.end_of_world_token_id,
        "eoi_token_index": cfg.eoi_token_index,
        "freeze_cosmos_vae": cfg.freeze_cosmos_vae,
        "freeze_gemma_language": cfg.freeze_gemma_language,
        "freeze_gemma_vision": cfg.freeze_gemma_vision,
        "gemma_model_name": cfg.gemma_model_name,
        "gemma_revision": cfg.gemma_revision,
        "image_token_index": cfg.image_token_index,
        "initializer_range": cfg.initializer_range,
        "load_full_cosmos_pipeline": cfg.load_full_cosmos_pipeline,
        "max_world_steps": cfg.max_world_steps,
        "mm_tokens_per_image": cfg.mm_tokens_per_image,
        "model_type": "theworld",
        "num_world_steps": cfg.num_world_steps,
        "projection_architecture": cfg.projection_architecture,
        "random_projection_init": cfg.random_projection_init,
        "rollout_num_inference_steps": cfg.rollout_num_inference_steps,
        "rollout_seed": cfg.rollout_seed,
        "scheduler_config": cfg.rollout_scheduler_config,
        "start_of_world_token": cfg.start_of_world_token,
        "start_of_world_token_id": cfg.start_of_world_token_id,
        "text_config": cfg.text_config.to_dict(),
        "theworld_version": "0.1.0",
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "transformer_config": cfg.rollout_transformer_config,
        "transformers_version": "5.24.0",
        "vae_config": vae_config,
        "vision_config": cfg.vision_config.to_dict(),
        "world_image_size": cfg.world_image_size,
        "world_pooling": cfg.world_pooling,
        "world_projection_mode": cfg.world_projection_mode,
        "world_token": cfg.world_token,
        "world_token_id": cfg.world_token_id,
    }
    if omit_defaults:  # a diff-dict style config: values equal to 0.1.0's defaults left out
        for key, default in (("world_pooling", 1), ("rollout_num_inference_steps", 4), ("checkpoint_format_version", 1),
                             ("world_projection_mode", "spatial"), ("transformer_config", None)):  # fmt: skip
            if config.get(key) == default:
                del config[key]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    metadata = {"format": "pt", "checkpoint_kind": kind, "theworld_version": "0.1.0",
                "base_fingerprints": json.dumps(fingerprints, sort_keys=True),
                "gemma_model_name": str(cfg.gemma_model_name), "cosmos_model_name": str(cfg.cosmos_model_name)}  # fmt: skip
    tensors = format1_tensors(model, full, cosmos)
    shards, size = [{}], 0
    for key, value in tensors.items():  # 0.1.0's sharding: a new shard when the next tensor would pass 1 MB
        nbytes = value.numel() * value.element_size()
        if full and shards[-1] and size + nbytes > 1_000_000:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], os.path.join(folder, "model.safetensors"),
                  metadata={**metadata, "theworld_tensors_sha256": tensors_digest(shards[0])})  # fmt: skip
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, os.path.join(folder, name), metadata={**metadata, "theworld_tensors_sha256": tensors_digest(shard)})
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}, f, indent=2)
    processor = {"end_of_world_token": cfg.end_of_world_token, "image_seq_length": cfg.mm_tokens_per_image,
                 "num_world_tokens": cfg.num_world_tokens, "processor_class": "TheWorldProcessor",
                 "start_of_world_token": cfg.start_of_world_token, "world_image_size": cfg.world_image_size,
                 "world_token": cfg.world_token, "auto_map": {"AutoProcessor": "processing_theworld.TheWorldProcessor"},
                 "image_processor": model.processor.image_processor.to_dict()}  # fmt: skip
    model.processor.tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, "processor_config.json"), "w") as f:
        json.dump(processor, f, indent=2, sort_keys=True)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 2, "eos_token_id": [1, 6], "pad_token_id": 0}, f)
    return config


@pytest.fixture(scope="module")
def format1_source(world_model_factory):
    """A model built today with 0.1.0's settings; the language model and the encoder unfrozen (both saved)."""
    return perturb(world_model_factory(seed=21, freeze_gemma_language=False, freeze_cosmos_vae=False, **FORMAT_1), 22)


def assert_reproduces(loaded, source, sample_images):
    inputs = model_inputs(source.processor, sample_images)
    first = inputs["attention_mask"].argmax(-1)  # left padding: each row's <bos>
    after_bos = inputs["input_ids"][torch.arange(len(first)), first + 1]
    assert (after_bos == source.config.start_of_world_token_id).all()  # 0.1.0's placement: world block after <bos>
    got = model_inputs(loaded.processor, sample_images)
    for key in inputs:
        assert torch.equal(got[key], inputs[key]), key
    with torch.no_grad():
        rest = dict(inputs)
        pixels = rest.pop("world_pixel_values")
        latents = loaded.model.encode_world(pixels)
        assert torch.equal(latents, source.model.encode_world(pixels))  # the same world features ...
        assert torch.equal(loaded(**rest, world_latents=latents).logits, source(**rest, world_latents=latents).logits)


@pytest.mark.parametrize("full", [False, True], ids=["partial", "full"])
def test_format1_checkpoints_load_and_reproduce(format1_source, tiny_bases, sample_images, tmp_path, full, caplog):
    folder = tmp_path / "format1"
    write_format1(format1_source, folder, full, tiny_bases.cosmos)
    with caplog.at_level(logging.WARNING, logger="theworld.checkpoint_theworld"):
        loaded = TheWorld.from_pretrained(str(folder))
    assert "checkpoint written by theworld 0.1.0: today's input path is in force (legacy_preprocessing=False" in caplog.text
    assert "after_bos placement, causal world attention" in caplog.text
    cfg = loaded.config
    assert (cfg.world_attention, cfg.world_placement, cfg.world_resize_mode) == ("causal", "after_bos", "center_crop")
    assert (cfg.rollout_mode, cfg.world_encoder_dtype, cfg.checkpoint_format_version) == ("autoregressive", None, 2)
    assert cfg.checkpoint_kind == ("full" if full else "partial")
    assert_same_state(loaded, format1_source)
    assert_reproduces(loaded, format1_source, sample_images)
    # converted once, it is a today's checkpoint that reloads bit for bit
    loaded.save_pretrained(tmp_path / "converted", save_full_model=full)
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["checkpoint_format_version"] == 2
    assert_same_state(TheWorld.from_pretrained(str(tmp_path / "converted")), format1_source)


def test_format1_diff_dict_config_and_tampering(format1_source, tiny_bases, tmp_path):
    """A config that leaves out the values equal to 0.1.0's defaults gets 0.1.0's defaults (not today's); 0.1.0's
    sha256 in the header is checked."""
    folder = tmp_path / "format1"
    config = write_format1(format1_source, folder, False, tiny_bases.cosmos, omit_defaults=True)
    assert "world_pooling" not in config and "checkpoint_format_version" not in config
    loaded = TheWorld.from_pretrained(str(folder))
    assert loaded.config.world_pooling == 1 and loaded.config.num_world_tokens == 64  # today's default would be 4
    assert_same_state(loaded, format1_source)
    path = folder / "model.safetensors"
    state = load_file(path)
    state["world_projector.projection.2.bias"] = state["world_projector.projection.2.bias"] + 1
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    save_file(state, path, metadata=metadata)  # the old sha256 kept: tampering is detected
    with pytest.raises(ValueError, match="model.safetensors is corrupt"):
        TheWorld.from_pretrained(str(folder))


def test_format1_rollout_checkpoint(world_model_factory, tiny_bases, tmp_path):
    """0.1.0 stored the rollout prompt as its one non-zero row (1, 1, dim) and no negative prompt."""
    source = perturb(world_model_factory(seed=23, world_image_size=32, num_world_steps=1,
                                         rollout_num_inference_steps=2, **FORMAT_1), 24)  # fmt: skip
    rollout = source.model.world_rollout
    assert rollout.prompt_embeds[:, 1:].abs().max() == 0  # the empty prompt: one row, the rest padding
    folder = tmp_path / "format1"
    write_format1(source, folder, False, tiny_bases.cosmos)
    text_dim = rollout.prompt_embeds.shape[-1]
    assert load_file(folder / "model.safetensors")["world_rollout.prompt_embeds"].shape == (1, 1, text_dim)
    loaded = TheWorld.from_pretrained(str(folder))
    state, expected = loaded.state_dict(), source.state_dict()
    assert torch.equal(state["model.world_rollout.negative_prompt_embeds"], torch.zeros_like(rollout.prompt_embeds))
    for key, value in expected.items():
        if key != "model.world_rollout.negative_prompt_embeds":
            assert torch.equal(state[key], value), key
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():  # guidance 1.0 never uses the negative prompt: the rollout is the same
        assert torch.equal(loaded.model.encode_world(pixels), source.model.encode_world(pixels))


# ----------------------------------------------------------------------------------------------------------------------
# The earlier research code's format
# ----------------------------------------------------------------------------------------------------------------------
def write_research_checkpoint(folder, tiny_bases, tensors: dict, **fields) -> dict:
    """A checkpoint folder exactly as the earlier research code wrote it."""
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


#: The earlier name of `write_research_checkpoint` (other test files import it).
write_legacy_checkpoint = write_research_checkpoint


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def mlp_projector(in_dim: int, seed: int) -> dict:
    return {
        "world_projector.projection.0.weight": randn(D_MODEL, in_dim, seed=seed) * 0.2,
        "world_projector.projection.0.bias": randn(D_MODEL, seed=seed + 1) * 0.1,
        "world_projector.projection.2.weight": randn(D_MODEL, D_MODEL, seed=seed + 2) * 0.2,
        "world_projector.projection.2.bias": randn(D_MODEL, seed=seed + 3) * 0.1,
    }


def test_research_checkpoint_loads_with_its_input_path(tiny_bases, tmp_path, sample_images, caplog):
    folder = tmp_path / "research_mlp"
    tensors = mlp_projector(Z_DIM, seed=1)
    write_research_checkpoint(folder, tiny_bases, tensors)
    with caplog.at_level(logging.WARNING, logger="theworld.checkpoint_theworld"):
        model = TheWorld.from_checkpoint(str(folder), world_image_size=64)  # allowed: the size was never recorded
    assert "written by the earlier research code: the earlier input path is in force (legacy_preprocessing=True: " \
           "images squashed to 64 px, pixels in [0, 255], unnormalised latents)" in caplog.text  # fmt: skip
    state = model.state_dict()
    for key, value in tensors.items():
        today = key.replace("world_projector.projection.0.", "model.world_projector.linear_1.")
        assert torch.equal(state[today.replace("world_projector.projection.2.", "model.world_projector.linear_2.")], value)
    cfg = model.config
    assert (cfg.model_type, cfg.world_image_size, cfg.legacy_preprocessing) == ("theworld", 64, True)
    assert (cfg.world_resize_mode, cfg.world_placement, cfg.world_attention) == ("squash", "after_bos", "causal")
    assert cfg.load_full_cosmos_pipeline is False and cfg.gemma_model_name == tiny_bases.gemma
    # the boundary rows were never saved by the earlier code: they start at Gemma's image markers
    boi = model.get_input_embeddings()(torch.tensor([cfg.boi_token_index])).float()
    assert torch.equal(model.model.world_boundary_embeddings.weight[:1], boi)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"model.world_projector.linear_1.weight", "model.world_projector.linear_1.bias",
                         "model.world_projector.linear_2.weight", "model.world_projector.linear_2.bias",
                         "model.world_boundary_embeddings.weight"}  # fmt: skip
    # The earlier input path: the processor squashes to the world size and keeps [0, 255]; latents are not normalised.
    processor = model.processor
    assert processor.legacy_preprocessing is True and processor.world_resize_mode == "squash"
    inputs = model_inputs(processor, sample_images)
    pixels = inputs["world_pixel_values"]
    assert pixels.min() >= 0 and pixels.max() > 1.5 and pixels.max() <= 255  # [0, 255], not [-1, 1]
    with torch.no_grad():
        mu = model.model.world_encoder(pixels)
        assert torch.equal(model.model.encode_world(pixels)[:, :, 0], mu)  # unnormalised
        assert not torch.allclose(model.model.world_encoder.normalize(mu), mu)
    assert int((inputs["input_ids"] == cfg.world_token_id).sum()) == 2 * 64
    logits, tokens = logits_and_tokens(model, inputs, new_tokens=3)
    assert torch.isfinite(logits).all() and tokens.shape[1] == inputs["input_ids"].shape[1] + 3
    # Converted once, it is a today's checkpoint (boundary rows saved, legacy path recorded) that reloads bit for bit.
    model.save_pretrained(tmp_path / "converted")
    converted = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert converted["model_type"] == "theworld" and converted["legacy_preprocessing"] is True
    again = TheWorld.from_pretrained(str(tmp_path / "converted"))
    assert torch.equal(logits_and_tokens(again, inputs, 0)[0], logits)


def test_research_default_image_size_is_512(tiny_bases, tmp_path):
    folder = tmp_path / "research_512"
    write_research_checkpoint(folder, tiny_bases, mlp_projector(Z_DIM, seed=2))
    model = TheWorld.from_checkpoint(str(folder))
    assert model.config.world_image_size == 512
    assert model.config.num_world_tokens == (512 // 8) ** 2
    assert model.processor.world_image_size == 512


def test_research_linear_channel_checkpoint_with_unfrozen_vae(tiny_bases, tmp_path):
    vae = load_file(os.path.join(tiny_bases.cosmos, "vae", "diffusion_pytorch_model.safetensors"))
    encoder = {f"cosmos_vae.{k}": v + 0.01 for k, v in vae.items() if k.startswith(("encoder.", "quant_conv."))}
    decoder = {f"cosmos_vae.{k}": v for k, v in vae.items() if k.startswith(("decoder.", "post_quant_conv."))}
    assert encoder and decoder
    in_dim = (512 // 8) ** 2  # channel mode: one token per latent channel, h*w dims, at the earlier 512 px
    projector = {
        "world_projector.projection.weight": randn(D_MODEL, in_dim, seed=3) * 0.01,
        "world_projector.projection.bias": randn(D_MODEL, seed=4) * 0.1,
    }
    folder = tmp_path / "research_linear"
    write_research_checkpoint(folder, tiny_bases, {**projector, **encoder, **decoder}, world_projection_mode="channel",
                              projection_architecture="linear", freeze_cosmos_vae=False)  # fmt: skip
    model = TheWorld.from_pretrained(str(folder))
    state = model.state_dict()
    assert torch.equal(state["model.world_projector.linear_1.weight"], projector["world_projector.projection.weight"])
    for key, value in encoder.items():
        if "time_conv" not in key:  # the temporal convolutions never see one image: the 2-D encoder has none
            assert torch.equal(state[key.replace("cosmos_vae.", "model.world_encoder.")], value), key
    assert not any("decoder" in k or "time_conv" in k for k in state)
    assert model.config.num_world_tokens == Z_DIM
    assert all(p.requires_grad for p in model.model.world_encoder.parameters())
    # In channel mode the image size fixes the projector's input width: another size is a strict shape error.
    with pytest.raises(ValueError, match=r"shape mismatches \['model.world_projector.linear_1.weight: checkpoint "
                                         r"\(64, 4096\) vs model \(64, 64\)'\]"):  # fmt: skip
        TheWorld.from_pretrained(str(folder), world_image_size=64)


def test_research_checkpoint_with_wrong_projector_names_is_refused(tiny_bases, tmp_path):
    """The earlier loader forced strict=False and silently kept a random projector; here it is an error."""
    folder = tmp_path / "research_bad"
    tensors = {k.replace("projection.", "proj."): v for k, v in mlp_projector(Z_DIM, seed=6).items()}
    write_research_checkpoint(folder, tiny_bases, tensors)
    with pytest.raises(ValueError, match=r"unexpected keys \['world_projector.proj.0.bias'.*missing keys"):
        TheWorld.from_pretrained(str(folder), world_image_size=64)
