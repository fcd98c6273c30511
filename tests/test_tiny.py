"""Tests for theworld.tiny: seeded tiny base models in hub layout (real objects, no mocks)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

try:
    import theworld.tiny  # noqa: F401
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from theworld.tiny import GEMMA_SPECIAL_TOKENS, SIZES, TinyBases, build_tiny_bases  # noqa: E402

#: The first nine special tokens take ids 0..8; <image_soft_token> is the tokenizer's last id (as 262144 is Gemma 3's).
EXPECTED_IDS = {tok: i for i, tok in enumerate(GEMMA_SPECIAL_TOKENS[:-1])}
IMAGE_SOFT_TOKEN = "<image_soft_token>"


def _safetensors_hashes(root: str | Path) -> dict[str, str]:
    root = Path(root)
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.safetensors"))
    }


def _images() -> list[Image.Image]:
    a = Image.new("RGB", (80, 64), (255, 255, 255))
    ImageDraw.Draw(a).ellipse((5, 20, 30, 45), fill=(220, 30, 30))
    b = Image.new("RGB", (64, 72), (255, 255, 255))
    ImageDraw.Draw(b).rectangle((35, 10, 60, 35), fill=(30, 30, 220))
    return [a, b]


@pytest.fixture(scope="session")
def timed_build(tmp_path_factory) -> tuple[TinyBases, float]:
    """A fresh tiny build (seed 0), separate from the shared ``tiny_bases``, and how long it took."""
    start = time.perf_counter()
    bases = build_tiny_bases(tmp_path_factory.mktemp("tiny_timed"), seed=0)
    return bases, time.perf_counter() - start


@pytest.fixture(scope="session")
def gemma_model(tiny_bases):
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration.from_pretrained(tiny_bases.gemma).eval()


@pytest.fixture(scope="session")
def gemma_processor(tiny_bases):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_bases.gemma)


# ----------------------------------------------------------------------------------------------------------------------
# Build, determinism, cache
# ----------------------------------------------------------------------------------------------------------------------


def test_build_returns_absolute_paths_and_is_fast(timed_build):
    bases, seconds = timed_build
    assert isinstance(bases, TinyBases)
    for path in (bases.gemma, bases.cosmos):
        assert Path(path).is_absolute() and Path(path).is_dir()
    assert Path(bases.gemma).name == "gemma" and Path(bases.cosmos).name == "cosmos"
    assert Path(bases.gemma).parent == Path(bases.cosmos).parent
    assert seconds < 60, f"tiny build took {seconds:.1f}s"
    with pytest.raises(dataclasses.FrozenInstanceError):
        bases.gemma = "elsewhere"  # type: ignore[misc]


def test_same_seed_is_byte_identical_other_seed_differs(tiny_bases, timed_build, tmp_path):
    reference = _safetensors_hashes(Path(tiny_bases.gemma).parent)
    assert set(reference) == {
        "gemma/model.safetensors",
        "cosmos/vae/diffusion_pytorch_model.safetensors",
        "cosmos/transformer/diffusion_pytorch_model.safetensors",
        "cosmos/text_encoder/model.safetensors",
    }
    assert _safetensors_hashes(Path(timed_build[0].gemma).parent) == reference
    other = _safetensors_hashes(Path(build_tiny_bases(tmp_path / "other", seed=1).gemma).parent)
    assert set(other) == set(reference)
    assert all(other[k] != reference[k] for k in reference)


def test_cached_folders_are_reused(tiny_bases):
    bases = tiny_bases
    out = Path(bases.gemma).parent
    marker = json.loads((out / ".tiny_bases.json").read_text())
    assert marker["seed"] == 0 and marker["size"] == "tiny"
    weights = out / "gemma" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    assert build_tiny_bases(out, seed=0) == bases
    assert time.perf_counter() - start < 1.0
    assert weights.stat().st_mtime_ns == mtime


def test_unknown_size_is_rejected(tmp_path):
    assert SIZES == ("tiny", "small", "base100m", "tiny-real")
    with pytest.raises(ValueError, match="size"):
        build_tiny_bases(tmp_path, size="huge")


# ----------------------------------------------------------------------------------------------------------------------
# Gemma 3
# ----------------------------------------------------------------------------------------------------------------------


def test_gemma_config(tiny_bases, gemma_model):
    from transformers import AutoTokenizer

    config = gemma_model.config
    raw = json.loads((Path(tiny_bases.gemma) / "config.json").read_text())
    assert raw["model_type"] == "gemma3" and raw["architectures"] == ["Gemma3ForConditionalGeneration"]
    text, vision = config.text_config, config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (64, 2, 4)
    assert (text.num_key_value_heads, text.head_dim, text.intermediate_size) == (2, 16, 128)
    assert text.query_pre_attn_scalar == text.head_dim
    assert text.layer_types == ["full_attention"] * text.num_hidden_layers
    assert text.sliding_window >= 512 and text.max_position_embeddings == 2048
    assert (vision.image_size, vision.patch_size, vision.hidden_size) == (64, 8, 32)
    assert config.mm_tokens_per_image == 16

    tokenizer = AutoTokenizer.from_pretrained(tiny_bases.gemma)
    assert len(tokenizer) + 3 <= text.vocab_size < len(tokenizer) + 3 + 64  # spare rows, padded to a multiple of 64
    assert config.image_token_index == tokenizer.image_token_id == len(tokenizer) - 1
    assert config.boi_token_index == tokenizer.boi_token_id == EXPECTED_IDS["<start_of_image>"]
    assert config.eoi_token_index == tokenizer.eoi_token_id == EXPECTED_IDS["<end_of_image>"]
    assert config.image_token_index < text.vocab_size

    generation = json.loads((Path(tiny_bases.gemma) / "generation_config.json").read_text())
    assert generation["bos_token_id"] == 2 and generation["pad_token_id"] == 0
    assert generation["eos_token_id"] == [1, EXPECTED_IDS["<end_of_turn>"]]


def test_gemma_every_tensor_is_nonzero(tiny_bases, gemma_model):
    from safetensors.torch import load_file

    on_disk = load_file(str(Path(tiny_bases.gemma) / "model.safetensors"))
    assert any("mm_input_projection_weight" in k for k in on_disk)
    assert any(k.endswith("input_layernorm.weight") for k in on_disk)
    for source in (on_disk, gemma_model.state_dict()):
        zeros = [k for k, v in source.items() if v.is_floating_point() and not bool(v.abs().sum() > 0)]
        assert not zeros, zeros


def test_gemma_image_features_differ(gemma_model, gemma_processor):
    pixels = gemma_processor.image_processor(_images(), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (2, 3, 64, 64)
    with torch.no_grad():
        features = gemma_model.get_image_features(pixel_values=pixels).pooler_output
        tokens = gemma_model.get_input_embeddings()(torch.arange(10, 200))
    assert features.shape == (2, 16, 64)
    assert torch.isfinite(features).all()
    assert (features[0] - features[1]).abs().max() > 1e-2
    # Image features live on the scale of the (sqrt(hidden)-scaled) token embeddings.
    ratio = features.pow(2).mean().sqrt() / tokens.pow(2).mean().sqrt()
    assert 0.2 < ratio < 5


def test_gemma_tokenizer_round_trip_and_special_ids(tiny_bases):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from theworld.tiny import _build_gemma_backend

    tokenizer = AutoTokenizer.from_pretrained(tiny_bases.gemma)
    assert type(tokenizer).__name__ == "GemmaTokenizer"
    assert {tok: tokenizer.convert_tokens_to_ids(tok) for tok in GEMMA_SPECIAL_TOKENS[:-1]} == EXPECTED_IDS
    assert tokenizer.convert_tokens_to_ids(IMAGE_SOFT_TOKEN) == len(tokenizer) - 1
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert (tokenizer.unk_token_id, tokenizer.mask_token_id) == (3, 4)
    assert (tokenizer.boi_token, tokenizer.eoi_token, tokenizer.image_token) == (
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    )

    built_backend = _build_gemma_backend()
    saved_backend = Tokenizer.from_file(str(Path(tiny_bases.gemma) / "tokenizer.json"))
    texts = [
        "Statement: The red circle is left of the blue square.",
        "Answer only digits 0-9: 42\n\nthe yellow triangle is far from a green circle",
        "<start_of_turn>user\nIs it above or below?<end_of_turn>\n",
        " two  spaces, unicode é ✓ and 漢字",
        "",
    ]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert ids[0] == tokenizer.bos_token_id
        assert ids == built_backend.encode(text).ids == saved_backend.encode(text).ids
    plain = "Statement: the blue square is near the red circle.\nAnswer: yes"
    ids = tokenizer(plain)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == plain
    assert tokenizer.unk_token_id not in tokenizer(texts[3])["input_ids"]  # byte fallback, no <unk>
    for word in ("▁red", "▁circle", "▁left", "▁above", "▁below", "Statement:", "Answer", "▁only"):
        assert word in tokenizer.get_vocab(), word


def test_chat_template(tiny_bases):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bases.gemma)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Where?"}]},
        {"role": "assistant", "content": "Left."},
        {"role": "user", "content": "Sure?"},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\n<start_of_image>Where?<end_of_turn>\n"
        "<start_of_turn>model\nLeft.<end_of_turn>\n<start_of_turn>user\nSure?<end_of_turn>\n"
    )
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    assert ids[:2] == [2, EXPECTED_IDS["<start_of_turn>"]] and ids.count(2) == 1


def test_processor_apply_chat_template_with_images(tiny_bases, gemma_model, gemma_processor):
    assert type(gemma_processor).__name__ == "Gemma3Processor"
    assert gemma_processor.image_seq_length == 16
    conversations = [
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
        for image, text in zip(_images(), ["Is the red circle left of the blue square?", "Describe."])
    ]
    inputs = gemma_processor.apply_chat_template(
        conversations,
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
    )
    assert inputs["pixel_values"].shape == (2, 3, 64, 64)
    assert inputs["token_type_ids"].shape == inputs["input_ids"].shape
    image_id = gemma_processor.tokenizer.convert_tokens_to_ids(IMAGE_SOFT_TOKEN)
    assert (inputs["input_ids"] == image_id).sum(dim=1).tolist() == [16, 16]
    assert (inputs["token_type_ids"] == 1).sum().item() == 32
    with torch.no_grad():
        logits = gemma_model(**inputs).logits
    assert logits.shape == (*inputs["input_ids"].shape, gemma_model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


# ----------------------------------------------------------------------------------------------------------------------
# tiny-real: Gemma 3 4B's structure at tiny size
# ----------------------------------------------------------------------------------------------------------------------
_HUB_TO_TRANSFORMERS = (
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)


def _renamed(key: str) -> str:
    for old, new in _HUB_TO_TRANSFORMERS:
        if key.startswith(old):
            return new + key[len(old) :]
    raise AssertionError(f"{key} is not in the hub checkpoint's key layout")


@pytest.fixture(scope="module")
def tiny_real_theworld(real_world_model_factory):
    """A fresh TheWorld around the tiny-real bases (64 world tokens)."""
    return real_world_model_factory()


def test_tiny_real_mirrors_gemma_3_4b_layer_pattern_and_window(tiny_real_bases):
    from transformers import AutoConfig, AutoProcessor, Gemma3Config

    from theworld import real_configs

    text = AutoConfig.from_pretrained(tiny_real_bases.gemma).text_config
    real = Gemma3Config.from_dict(real_configs.load_real_config("google/gemma-3-4b-it")).text_config
    # 5 sliding-window layers per global layer, in Gemma 3 4B's order: its 34 layers repeat the tiny pattern.
    assert text.layer_types == ["sliding_attention"] * 5 + ["full_attention"]
    assert real.layer_types == (text.layer_types * 6)[: real.num_hidden_layers]
    assert text.query_pre_attn_scalar == text.head_dim
    # The window is shorter than the test prompts, as Gemma 3 4B's 1,024 is shorter than a 4,096-token world block.
    processor = AutoProcessor.from_pretrained(tiny_real_bases.gemma)
    for text_prompt in ("Describe.", "Is the red circle left of the blue square?"):
        conversation = [{"role": "user", "content": [{"type": "image", "image": _images()[0]},
                                                      {"type": "text", "text": text_prompt}]}]  # fmt: skip
        ids = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert len(ids["input_ids"][0]) > text.sliding_window == 32


def test_image_soft_token_is_last_with_spare_rows_in_every_preset(tiny_bases, tiny_real_bases, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from theworld import real_configs
    from theworld.tiny import _PRESETS, SPARE_EMBEDDING_ROWS, _build_gemma

    folders = {"tiny": Path(tiny_bases.gemma), "tiny-real": Path(tiny_real_bases.gemma)}
    for size in SIZES:
        if size not in folders:
            folders[size] = tmp_path / size
            _build_gemma(folders[size], _PRESETS[size], 0)
    assert set(folders) == set(SIZES)
    for size, folder in folders.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        config = AutoConfig.from_pretrained(folder)
        last = len(tokenizer) - 1
        assert tokenizer.convert_ids_to_tokens(last) == IMAGE_SOFT_TOKEN, size
        assert config.image_token_index == last, size
        assert config.text_config.vocab_size - len(tokenizer) >= SPARE_EMBEDDING_ROWS >= 3, size
    # ... as in Gemma 3 4B: <image_soft_token> is its last id and 63 rows follow it.
    facts = real_configs.gemma_processor_facts()
    assert facts["image_token_id"] == facts["tokenizer_length"] - 1
    assert facts["embedding_rows"] - facts["tokenizer_length"] == 63


def test_tiny_real_hub_key_layout_loads_every_tensor(tiny_real_bases, tiny_real_theworld):
    from safetensors import safe_open
    from transformers import Gemma3ForConditionalGeneration

    with safe_open(str(Path(tiny_real_bases.gemma) / "model.safetensors"), framework="pt") as f:
        disk = {key: f.get_tensor(key) for key in f.keys()}
    assert any(key.startswith("language_model.model.layers.5.") for key in disk)
    gemma, info = Gemma3ForConditionalGeneration.from_pretrained(tiny_real_bases.gemma, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    renamed = {_renamed(key): tensor for key, tensor in disk.items()}
    state = gemma.state_dict()
    assert set(state) - set(renamed) == {"lm_head.weight"}  # tied to the embeddings
    assert set(renamed) <= set(state)
    for key, tensor in renamed.items():
        assert torch.equal(state[key], tensor), key
    # TheWorld's fresh build around the same folder receives every tensor as well.
    theworld = tiny_real_theworld.state_dict()
    for key, tensor in renamed.items():
        assert torch.equal(theworld[key], tensor), key


def test_tiny_real_theworld_world_ids_have_embedding_rows(tiny_real_bases, tiny_real_theworld):
    from transformers import AutoTokenizer

    config = tiny_real_theworld.config
    n_tokens = len(AutoTokenizer.from_pretrained(tiny_real_bases.gemma))
    # The three world tokens follow <image_soft_token>, in the spare rows of the embedding matrix.
    assert list(config.world_token_ids) == [n_tokens, n_tokens + 1, n_tokens + 2]
    assert max(config.world_token_ids) < config.text_config.vocab_size
    assert tiny_real_theworld.get_input_embeddings().weight.shape[0] == config.text_config.vocab_size
    processor = tiny_real_theworld.processor
    ids = (processor.start_of_world_token_id, processor.end_of_world_token_id, processor.world_token_id)
    assert ids == config.world_token_ids


# ----------------------------------------------------------------------------------------------------------------------
# Cosmos-Predict2
# ----------------------------------------------------------------------------------------------------------------------


def test_cosmos_model_index(tiny_bases):
    index = json.loads((Path(tiny_bases.cosmos) / "model_index.json").read_text())
    assert index["_class_name"] == "Cosmos2VideoToWorldPipeline"
    assert "_diffusers_version" in index
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["transformer"] == ["diffusers", "CosmosTransformer3DModel"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder"] == ["transformers", "T5EncoderModel"]
    assert index["tokenizer"] == ["transformers", "T5TokenizerFast"]
    assert index["safety_checker"] == [None, None]
    for sub in ("vae", "transformer", "scheduler", "text_encoder", "tokenizer"):
        assert (Path(tiny_bases.cosmos) / sub).is_dir()


def test_cosmos_every_tensor_is_nonzero(tiny_bases):
    from safetensors.torch import load_file

    for path in Path(tiny_bases.cosmos).rglob("*.safetensors"):
        tensors = load_file(str(path))
        zeros = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.abs().sum() > 0)]
        assert not zeros, (path, zeros)


def test_vae_encode_shape(tiny_bases):
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(tiny_bases.cosmos, subfolder="vae").eval()
    assert vae.config.z_dim == 16 and len(vae.config.latents_mean) == len(vae.config.latents_std) == 16
    assert list(vae.config.temperal_downsample) == [False, True, True]
    video = torch.rand(1, 3, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
    assert latents.shape == (1, 16, 1, 8, 8)
    assert torch.isfinite(latents).all() and latents.std() > 0


def test_text_encoder_and_tokenizer(tiny_bases):
    from transformers import AutoTokenizer, T5EncoderModel, T5TokenizerFast

    from theworld.tiny import _build_t5_backend

    tokenizer = T5TokenizerFast.from_pretrained(tiny_bases.cosmos, subfolder="tokenizer")
    assert type(AutoTokenizer.from_pretrained(tiny_bases.cosmos, subfolder="tokenizer")) is type(tokenizer)
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == len(tokenizer) - 1
    backend, _ = _build_t5_backend()
    for text in ("A red cube is above the green ball!", "far from the circle, near 42"):
        ids = tokenizer(text)["input_ids"]
        assert ids == backend.encode(text).ids and ids[-1] == 1
        assert tokenizer.unk_token_id not in ids

    encoder = T5EncoderModel.from_pretrained(tiny_bases.cosmos, subfolder="text_encoder").eval()
    assert encoder.config.vocab_size >= len(tokenizer)
    batch = tokenizer(["the red circle"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(**batch).last_hidden_state
    assert hidden.shape == (1, 16, encoder.config.d_model)


def test_transformer_loads(tiny_bases):
    from diffusers import CosmosTransformer3DModel
    from transformers import T5Config

    transformer = CosmosTransformer3DModel.from_pretrained(tiny_bases.cosmos, subfolder="transformer")
    config = transformer.config
    t5 = T5Config.from_pretrained(tiny_bases.cosmos, subfolder="text_encoder")
    assert (config.in_channels, config.out_channels) == (17, 16)
    assert tuple(config.patch_size) == (1, 2, 2) and tuple(config.rope_scale) == (1.0, 3.0, 3.0)
    assert config.concat_padding_mask is True and config.extra_pos_embed_type is None
    assert config.text_embed_dim == t5.d_model
    # 16 latent channels + condition mask + padding mask, times the 1x2x2 patch.
    assert transformer.patch_embed.proj.in_features == (16 + 1 + 1) * 4


def test_transformer_forward_like_the_pipeline(tiny_bases):
    """The DiT runs a Video2World-style step. diffusers resizes the all-zero padding mask with torchvision (absent
    here), so, as TheWorld's rollout does, the zero padding channel is appended to the condition mask instead."""
    from diffusers import CosmosTransformer3DModel

    transformer = CosmosTransformer3DModel.from_pretrained(tiny_bases.cosmos, subfolder="transformer").eval()
    transformer.register_to_config(concat_padding_mask=False)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 16, 2, 8, 8, generator=gen)
    cond_indicator = torch.zeros(1, 1, 2, 1, 1)
    cond_indicator[:, :, :1] = 1.0
    condition_mask = torch.cat([cond_indicator * torch.ones(1, 1, 2, 8, 8), torch.zeros(1, 1, 2, 8, 8)], dim=1)
    t_cond = torch.tensor(0.0001 / 1.0001)
    timestep = cond_indicator * t_cond + (1 - cond_indicator) * torch.full((1, 1, 2, 1, 1), 0.5)
    text = torch.randn(1, 16, transformer.config.text_embed_dim, generator=gen)
    with torch.no_grad():
        out = transformer(
            hidden_states=latents,
            timestep=timestep,
            encoder_hidden_states=text,
            fps=16,
            condition_mask=condition_mask,
            return_dict=False,
        )[0]
    assert out.shape == (1, 16, 2, 8, 8) and torch.isfinite(out).all()
    assert out.abs().sum() > 0


def test_scheduler_loads(tiny_bases):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tiny_bases.cosmos, subfolder="scheduler")
    config = scheduler.config
    assert config.use_karras_sigmas is True and config.shift == 1.0
    assert (config.sigma_max, config.sigma_min, config.sigma_data) == (80.0, 0.002, 1.0)
    assert config.final_sigmas_type == "sigma_min"
    scheduler.set_timesteps(sigmas=torch.linspace(0, 1, 4, dtype=torch.float64).numpy())
    assert scheduler.sigmas[0] == pytest.approx(80.0, rel=1e-4)


def test_tiny_cli_builds_loadable_bases(tmp_path, capsys):
    import os

    from theworld.cli import main

    assert main(["tiny", str(tmp_path / "b"), "--seed", "0"]) == 0
    assert capsys.readouterr().out == f"gemma:  {tmp_path / 'b' / 'gemma'}\ncosmos: {tmp_path / 'b' / 'cosmos'}\n"
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(str(tmp_path / "b" / "gemma")).model_type == "gemma3"
    assert os.path.exists(tmp_path / "b" / "cosmos" / "model_index.json")
