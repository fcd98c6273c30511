"""TheWorld around real (tiny) base folders: the fresh build from a Gemma 3 folder and a Cosmos pipeline folder, every
base tensor arriving, world encoding, the forward pass, precision, bad world inputs and training semantics. Tiny real
models from ``theworld.tiny``; no mocks."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys

import pytest
import torch
from conftest import conversations
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from theworld import TheWorld, TheWorldConfig
from theworld.checkpoint_theworld import apply_freeze_flags, parameter_counts
from theworld.modeling_theworld import latents_to_world_tokens
from theworld.processing_theworld import TheWorldProcessor
from theworld.world_encoder_theworld import TheWorldWanEncoder, is_unused_diffusers_key

# Disk names of the hub's Gemma 3 checkpoint -> module names in transformers 5 (and in TheWorld).
GEMMA_DISK_PREFIXES = {
    "language_model.model.": "model.language_model.",
    "vision_tower.": "model.vision_tower.",
    "multi_modal_projector.": "model.multi_modal_projector.",
    "model.": "model.",
}


def _disk_to_model(key: str) -> str:
    for disk, model in GEMMA_DISK_PREFIXES.items():
        if key.startswith(disk):
            return model + key[len(disk) :]
    raise AssertionError(f"unexpected Gemma checkpoint key {key}")


def _projector_and_boundary_count(model: TheWorld) -> int:
    d = model.config.text_config.hidden_size
    k = model.config.world_token_dim
    arch = model.config.projection_architecture
    projector = k * d + d if arch == "linear" else (k * d + d) + (d * d + d)
    return projector + 2 * d


def _trainable_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _labels(inputs) -> torch.Tensor:
    return inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)


# ----------------------------------------------------------------------------------------------------------------------
# A fresh build around a Gemma 3 folder and a Cosmos pipeline folder
# ----------------------------------------------------------------------------------------------------------------------
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _image(color=(200, 40, 40)):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), (250, 250, 250))
    ImageDraw.Draw(im).ellipse((8, 8, 40, 40), fill=color)
    return im


def test_fresh_build_reads_only_the_vae_from_cosmos(tiny_bases, tmp_path):
    """``TheWorld.from_pretrained(gemma, cosmos_model_name=...)``: a Cosmos copy whose DiT weights are garbage and whose
    text encoder is gone still builds; no DiT module exists and no file outside ``vae/`` is opened."""
    global _OPENED
    cosmos = tmp_path / "cosmos"
    shutil.copytree(tiny_bases.cosmos, cosmos)
    (cosmos / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    shutil.rmtree(cosmos / "text_encoder")
    shutil.rmtree(cosmos / "tokenizer")
    _OPENED = []
    try:
        model = TheWorld.from_pretrained(
            tiny_bases.gemma, cosmos_model_name=str(cosmos), world_image_size=64, world_pooling=1
        )
    finally:
        opened, _OPENED = _OPENED, None
    # Python-level opens (safetensors files are opened by safe_open in Rust, unaudited; the garbage DiT file would
    # fail to parse if it were opened, and test_world_encoder_tensors_equal_disk shows the VAE weights arrive)
    cosmos_files = sorted({os.path.relpath(p, cosmos) for p in opened if p.startswith(str(cosmos))})
    assert cosmos_files == ["vae/config.json"], cosmos_files
    names = {type(m).__name__ for m in model.modules()}
    assert "TheWorldWanEncoder" in names
    assert not names & {"AutoencoderKLWan", "CosmosTransformer3DModel", "T5EncoderModel", "TheWorldRollout"}, names
    assert getattr(model.model, "world_rollout", None) is None
    assert isinstance(model.processor, TheWorldProcessor)
    assert model.config.cosmos_model_name == str(cosmos)
    assert model.config.num_world_tokens == model.processor.num_world_tokens == 64
    assert not model.training
    # world ids are never sampled by default
    assert set(model.config.world_token_ids) <= set(model.generation_config.suppress_tokens)
    # it is usable right away
    with torch.no_grad():
        ids = model.processor(text=["<start_of_image> hi"], images=[[_image()]], return_tensors="pt")
        assert torch.isfinite(model(**ids).logits).all()


def test_trainable_parameters_are_exactly_projector_and_boundaries(world_model):
    trainable, total = parameter_counts(world_model)
    expected = _projector_and_boundary_count(world_model)
    assert trainable == expected == 16 * 64 + 64 + 64 * 64 + 64 + 2 * 64
    assert total == sum({id(p): p.numel() for p in world_model.parameters()}.values())
    assert world_model.num_parameters(only_trainable=True) == expected
    names = _trainable_names(world_model)
    assert names and all(n.startswith(("model.world_projector.", "model.world_boundary_embeddings.")) for n in names)


def test_every_gemma_tensor_arrived(world_model, tiny_bases):
    """The DESIGN trap: a Gemma 3 composite may silently get a randomly initialised language model."""
    disk = load_file(os.path.join(tiny_bases.gemma, "model.safetensors"))
    state = world_model.state_dict()
    gemma_keys = {k for k in state if not k.startswith("model.world_")}
    mapped = {_disk_to_model(k): v for k, v in disk.items()}
    assert set(mapped) == gemma_keys - {"lm_head.weight"}
    assert any(k.startswith("model.language_model.layers.") for k in mapped)
    for key, tensor in mapped.items():
        assert torch.equal(state[key], tensor), key
    # lm_head is tied to the input embeddings, as in Gemma 3
    assert world_model.lm_head.weight is world_model.get_input_embeddings().weight
    embed_key = next(k for k in disk if k.endswith("embed_tokens.weight"))
    assert torch.equal(state["lm_head.weight"], disk[embed_key])
    # the boundary embeddings start at Gemma's <start_of_image>/<end_of_image> embeddings
    cfg = world_model.config
    rows = world_model.get_input_embeddings()(torch.tensor([cfg.boi_token_index, cfg.eoi_token_index]))
    torch.testing.assert_close(world_model.model.world_boundary_embeddings.weight, rows)


def test_world_encoder_tensors_equal_disk(world_model, tiny_bases):
    disk = load_file(os.path.join(tiny_bases.cosmos, "vae", "diffusion_pytorch_model.safetensors"))
    encoder = {
        k: v for k, v in disk.items() if k.startswith(("encoder.", "quant_conv.")) and not is_unused_diffusers_key(k)
    }
    skipped = [k for k in disk if k.startswith("encoder.") and is_unused_diffusers_key(k)]
    assert skipped and all(".time_conv." in k for k in skipped)  # a single image never reaches them
    assert any(k.startswith("decoder.") for k in disk), "the tiny VAE has a decoder that TheWorld must skip"
    state = world_model.model.world_encoder.state_dict()
    assert set(state) == set(encoder)
    for key, tensor in encoder.items():
        assert torch.equal(state[key], tensor), key


def test_skeleton_builds_from_config_alone(world_model):
    """No from_pretrained inside __init__: the whole module tree comes from config.json, on the meta device, even when
    the base sources it names do not exist."""
    data = world_model.config.to_dict()
    data["base_models"]["gemma"]["name"] = "/nonexistent/gemma"
    data["base_models"]["cosmos"]["name"] = "/nonexistent/cosmos"
    config = TheWorldConfig.from_dict(data)
    with torch.device("meta"):
        skeleton = TheWorld(config)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in world_model.state_dict().items()}
    assert all(p.device.type == "meta" for p in skeleton.parameters())


# ----------------------------------------------------------------------------------------------------------------------
# Precision: the world encoder in float32 whatever Gemma's dtype, the latents cast once, to the projector's dtype
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bf16_model(world_model_factory):
    return world_model_factory(dtype=torch.bfloat16)


def test_bf16_build_keeps_the_world_encoder_in_fp32(bf16_model, world_model_factory, batch_inputs):
    model = bf16_model
    assert model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.vision_tower.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert model.config.world_encoder_dtype == "float32"
    assert {p.dtype for p in model.model.world_encoder.parameters()} == {torch.float32}
    with torch.no_grad():
        latents = model.encode_world(batch_inputs["world_pixel_values"].to(torch.bfloat16))
        features = model.get_world_features(world_latents=latents)
    assert latents.dtype == torch.float32
    assert features.dtype == model.model.world_projector.linear_1.weight.dtype
    # world_encoder_dtype=None: the encoder follows the model
    following = world_model_factory(dtype=torch.bfloat16, world_encoder_dtype=None)
    assert {p.dtype for p in following.model.world_encoder.parameters()} == {torch.bfloat16}
    # and both train: bf16 inputs, finite loss, a gradient on the projector
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch_inputs.items()}
    for m in (model, following):
        out = m(**inputs, labels=_labels(batch_inputs))
        assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
        out.loss.backward()
        grad = m.model.world_projector.linear_1.weight.grad
        assert grad is not None and grad.abs().sum() > 0
        m.zero_grad(set_to_none=True)


def test_bf16_fresh_build_keeps_world_projector_and_boundaries_in_fp32(bf16_model):
    for name, param in itertools.chain(
        bf16_model.model.world_projector.named_parameters(),
        bf16_model.model.world_boundary_embeddings.named_parameters(),
    ):
        assert param.dtype == torch.float32, name


# ----------------------------------------------------------------------------------------------------------------------
# World encoding
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers_vae(tiny_bases):
    return AutoencoderKLWan.from_pretrained(tiny_bases.cosmos, subfolder="vae").eval()


def test_encode_world_matches_diffusers_mode_and_normalisation(world_model, batch_inputs, diffusers_vae):
    wpv = batch_inputs["world_pixel_values"]
    with torch.no_grad():
        latents = world_model.encode_world(wpv)
        mu = diffusers_vae.encode(wpv.unsqueeze(2)).latent_dist.mode()
    cfg = diffusers_vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1)
    assert not torch.allclose(mean, torch.zeros_like(mean)) and not torch.allclose(std, torch.ones_like(std))
    assert latents.shape == (2, 16, 1, 8, 8)
    torch.testing.assert_close(latents, (mu - mean) / std, rtol=1e-5, atol=1e-5)
    # mode(), not a sample: encoding is deterministic
    with torch.no_grad():
        assert torch.equal(world_model.encode_world(wpv), latents)
    assert isinstance(world_model.model.world_encoder, TheWorldWanEncoder)


def test_world_reduction_spatial_channel_pooling():
    latents = torch.randn(2, 16, 2, 8, 8)  # two frames
    spatial = latents_to_world_tokens(latents, "spatial")
    assert spatial.shape == (2, 2 * 64, 16)
    assert torch.equal(spatial[1, 64 + 3 * 8 + 5], latents[1, :, 1, 3, 5])  # frame 1, row 3, column 5
    channel = latents_to_world_tokens(latents, "channel")
    assert channel.shape == (2, 2 * 16, 64)
    assert torch.equal(channel[0, 16 + 7], latents[0, 7, 1].flatten())
    pooled = latents_to_world_tokens(latents, "spatial", pooling=2)
    assert pooled.shape == (2, 2 * 16, 16)
    manual = latents[0, :, 0, 2:4, 4:6].mean(dim=(-1, -2))  # pooled cell (1, 2) of frame 0
    torch.testing.assert_close(pooled[0, 1 * 4 + 2], manual)
    pooled_channel = latents_to_world_tokens(latents, "channel", pooling=4)
    assert pooled_channel.shape == (2, 2 * 16, 4)
    with pytest.raises(ValueError, match="world_projection_mode must be 'spatial' or 'channel', got 'diagonal'"):
        latents_to_world_tokens(latents, "diagonal")


@pytest.mark.parametrize(
    ("overrides", "tokens"),
    [
        ({"world_projection_mode": "channel"}, 16),
        ({"world_pooling": 2}, 16),
        ({"projection_architecture": "linear", "world_projection_mode": "channel", "world_pooling": 2}, 16),
    ],
)
def test_modes_run_end_to_end(world_model_factory, sample_images, overrides, tokens):
    model = world_model_factory(**overrides)
    assert model.config.num_world_tokens == tokens
    inputs = model.processor.apply_chat_template(
        conversations(sample_images, ["Where?", "What is it?"]),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
        padding=True,
    )
    assert int((inputs["input_ids"][0] == model.config.world_token_id).sum()) == tokens
    with torch.no_grad():
        latents = model.encode_world(inputs["world_pixel_values"])
        features = model.get_world_features(world_latents=latents)
        manual = model.model.world_projector(
            latents_to_world_tokens(latents, model.config.world_projection_mode, model.config.world_pooling)
        )
        out = model(**inputs)
    assert features.shape == (2, tokens, model.config.text_config.hidden_size)
    torch.testing.assert_close(features, manual)
    torch.testing.assert_close(out.world_hidden_states, features)
    assert torch.isfinite(out.logits).all()
    assert parameter_counts(model)[0] == _projector_and_boundary_count(model)


# ----------------------------------------------------------------------------------------------------------------------
# Forward: features scattered at the right places, and they matter
# ----------------------------------------------------------------------------------------------------------------------
def test_world_features_are_scattered_into_the_placeholders(world_model, batch_inputs):
    cfg = world_model.config
    ids = batch_inputs["input_ids"]
    with torch.no_grad():
        out = world_model(**batch_inputs, output_hidden_states=True)
        features = world_model.get_world_features(batch_inputs["world_pixel_values"])
    embeds = out.hidden_states[0]  # what the language model received
    boundary = world_model.model.world_boundary_embeddings.weight
    torch.testing.assert_close(out.world_hidden_states, features)
    for row in range(2):
        torch.testing.assert_close(embeds[row][ids[row] == cfg.world_token_id], features[row])
        torch.testing.assert_close(embeds[row][ids[row] == cfg.start_of_world_token_id][0], boundary[0])
        torch.testing.assert_close(embeds[row][ids[row] == cfg.end_of_world_token_id][0], boundary[1])
        text = (ids[row] < cfg.image_token_id) & (batch_inputs["attention_mask"][row] == 1)
        torch.testing.assert_close(embeds[row][text], world_model.get_input_embeddings()(ids[row][text]))


def test_world_changes_logits_and_cached_latents_skip_the_encoder(world_model, batch_inputs):
    ids = batch_inputs["input_ids"]
    without_pixels = {k: v for k, v in batch_inputs.items() if k != "world_pixel_values"}
    with torch.no_grad():
        base = world_model(**batch_inputs).logits
        swapped = world_model(
            **{**batch_inputs, "world_pixel_values": batch_inputs["world_pixel_values"].flip(0)}
        ).logits
        latents = world_model.encode_world(batch_inputs["world_pixel_values"])
        calls = []
        hook = world_model.model.world_encoder.register_forward_hook(lambda *a: calls.append(1))
        try:
            cached = world_model(**without_pixels, world_latents=latents).logits
        finally:
            hook.remove()
        zeros = torch.zeros(2, 64, world_model.config.text_config.hidden_size)
        override = world_model(**without_pixels, world_embeds_override=zeros).logits
    assert calls == [], "cached latents must not run the world encoder"
    assert torch.equal(cached, base)
    for row in range(2):
        start = int((ids[row] == world_model.config.start_of_world_token_id).nonzero()[0, 0])
        end = int((ids[row] == world_model.config.end_of_world_token_id).nonzero()[0, 0])
        first = int(batch_inputs["attention_mask"][row].argmax())
        # positions up to the start marker cannot see the world (causal); everything after it does
        torch.testing.assert_close(swapped[row, first : start + 1], base[row, first : start + 1], rtol=0, atol=0)
        diff = (swapped[row, end:] - base[row, end:]).abs().amax(-1)
        assert (diff > 1e-4).all(), f"row {row}: world features did not reach every later position"
        assert (override[row, -1] - base[row, -1]).abs().max() > 1e-4


def test_right_padding_gives_the_same_logits(world_model, sample_images):
    convs = conversations(sample_images, ["Is the red circle left of the blue square?", "Describe."])
    kw = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True)
    tok = world_model.processor.tokenizer
    left = world_model.processor.apply_chat_template(convs, **kw)
    tok.padding_side = "right"
    try:
        right = world_model.processor.apply_chat_template(convs, **kw)
    finally:
        tok.padding_side = "left"
    assert right["attention_mask"][1, -1] == 0 and left["attention_mask"][1, 0] == 0
    with torch.no_grad():
        left_logits, right_logits = world_model(**left).logits, world_model(**right).logits
    for row in range(2):
        lm, rm = left["attention_mask"][row].bool(), right["attention_mask"][row].bool()
        assert torch.equal(left["input_ids"][row][lm], right["input_ids"][row][rm])
        torch.testing.assert_close(left_logits[row][lm], right_logits[row][rm], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# Bad world inputs get a clear error
# ----------------------------------------------------------------------------------------------------------------------
def test_bad_world_inputs_are_refused_with_expected_and_got(world_model, batch_inputs):
    without = {k: v for k, v in batch_inputs.items() if k != "world_pixel_values"}
    wpv = batch_inputs["world_pixel_values"]
    hidden = world_model.config.text_config.hidden_size
    with pytest.raises(ValueError, match=r"world_pixel_values must have shape \(B, 3, 64, 64\), got \(2, 3, 32, 32\)"):
        world_model(**without, world_pixel_values=wpv[:, :, :32, :32])
    with pytest.raises(ValueError, match=r"world_latents must have shape \(B, 16, 1, 8, 8\) .* got \(2, 16, 1, 4, 4\)"):
        world_model(**without, world_latents=torch.zeros(2, 16, 1, 4, 4))
    with pytest.raises(
        ValueError,
        match=rf"world_embeds_override must have shape \(num_world_blocks, 64, {hidden}\) .* got \(2, 63, {hidden}\)",
    ):
        world_model(**without, world_embeds_override=torch.zeros(2, 63, hidden))
    with pytest.raises(ValueError, match=r"input_ids hold 2 world block\(s\) but no world_pixel_values, world_latents"):
        world_model(**without)
    with pytest.raises(ValueError, match=r"input_ids hold 2 world block\(s\) but 1 world input\(s\)"):
        world_model(**without, world_pixel_values=wpv[:1])
    with pytest.raises(
        ValueError, match=r"Pass only one of world_pixel_values, world_latents or world_embeds_override"
    ):
        world_model(**batch_inputs, world_latents=torch.zeros(2, 16, 1, 8, 8))
    # a truncated block (one placeholder short) names the rows and the counts
    ids = batch_inputs["input_ids"]
    n = world_model.config.num_world_tokens
    drop = int((ids[0] == world_model.config.world_token_id).nonzero()[0, 0])
    truncated = {k: torch.stack([torch.cat([v[0, :drop], v[0, drop + 1 :]]), v[1, 1:]]) for k, v in without.items()
                 if k in ("input_ids", "attention_mask", "token_type_ids")}  # fmt: skip
    assert truncated["attention_mask"][1, 0] == 0  # row 1 only lost a pad column
    with pytest.raises(
        ValueError, match=rf"Rows \[0\] hold \[{n - 1}\] <world_soft_token> placeholders .* exactly {n}"
    ):
        world_model(**truncated, pixel_values=batch_inputs["pixel_values"], world_pixel_values=wpv)


def test_world_inputs_on_a_gemma_only_model_are_refused(world_model_factory, batch_inputs):
    gemma_only = world_model_factory(enable_world=False)
    without = {k: v for k, v in batch_inputs.items() if k != "world_pixel_values"}
    with pytest.raises(ValueError, match="built with enable_world=False; it takes no world inputs"):
        gemma_only(**without, world_pixel_values=batch_inputs["world_pixel_values"])
    with pytest.raises(ValueError, match="built with enable_world=False; it has no world encoder"):
        gemma_only.encode_world(batch_inputs["world_pixel_values"])


# ----------------------------------------------------------------------------------------------------------------------
# Training semantics
# ----------------------------------------------------------------------------------------------------------------------
def _world_positions(model: TheWorld, ids: torch.Tensor) -> torch.Tensor:
    return torch.isin(ids, torch.tensor(model.config.world_token_ids))


def test_labels_at_world_positions_are_ignored_and_loss_is_manual_ce(world_model, batch_inputs):
    ids = batch_inputs["input_ids"]
    labels = _labels(batch_inputs)  # naive labels that include the world block
    world = _world_positions(world_model, ids)
    assert world.sum() == 2 * (world_model.config.num_world_tokens + 2)
    masked = labels.masked_fill(world, -100)
    with torch.no_grad():
        out = world_model(**batch_inputs, labels=labels)
    logits = out.logits.float()
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), masked[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, manual)
    unmasked = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    assert (unmasked - out.loss).abs() > 1e-3
    assert torch.equal(labels, _labels(batch_inputs)), "the caller's labels are not modified"


def test_loss_only_where_caller_labels_say(world_model, batch_inputs):
    """Answer-only labels: the loss is the mean CE over those few positions."""
    ids = batch_inputs["input_ids"]
    labels = torch.full_like(ids, -100)
    labels[:, -3:] = ids[:, -3:]
    with torch.no_grad():
        out = world_model(**batch_inputs, labels=labels)
    logits = out.logits.float()
    terms = [
        torch.nn.functional.cross_entropy(logits[r, p - 1 : p], ids[r, p : p + 1])
        for r in range(2)
        for p in range(ids.shape[1] - 3, ids.shape[1])
    ]
    torch.testing.assert_close(out.loss, torch.stack(terms).mean())


def _groups(model: TheWorld) -> dict[str, list[torch.nn.Parameter]]:
    base = model.model
    return {
        "vision": list(base.vision_tower.parameters()) + list(base.multi_modal_projector.parameters()),
        "language": list(base.language_model.parameters()) + [model.lm_head.weight],
        "world_encoder": list(base.world_encoder.parameters()),
        "world": list(base.world_projector.parameters()) + list(base.world_boundary_embeddings.parameters()),
    }


@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=3)))
def test_freeze_flags_freeze_exactly_the_original_sets(world_model_factory, flags):
    vision, language, encoder = flags
    model = world_model_factory(freeze_gemma_vision=vision, freeze_gemma_language=language, freeze_cosmos_vae=encoder)
    groups = _groups(model)
    expected = {"vision": not vision, "language": not language, "world_encoder": not encoder, "world": True}
    for group, params in groups.items():
        assert params, group
        assert {p.requires_grad for p in params} == {expected[group]}, group
    counted = sum({id(p): p.numel() for ps in groups.values() for p in ps}.values())
    assert counted == parameter_counts(model)[1], "the four groups must cover every parameter"
    # apply_freeze_flags reads the flags of the config: changing them there changes what trains
    model.config.freeze_gemma_vision = not vision
    apply_freeze_flags(model)
    assert {p.requires_grad for p in groups["vision"]} == {vision}


def test_gradients_reach_projector_and_boundaries_only(world_model_factory, batch_inputs):
    model = world_model_factory()
    model.train()
    model(**batch_inputs, labels=_labels(batch_inputs)).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(("model.world_projector.", "model.world_boundary_embeddings.")):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    # both boundary rows receive a gradient (start and end markers)
    assert (model.model.world_boundary_embeddings.weight.grad.abs().sum(-1) > 0).all()


def test_gradients_reach_unfrozen_language_model(world_model_factory, batch_inputs):
    model = world_model_factory(freeze_gemma_language=False)
    model(**batch_inputs, labels=_labels(batch_inputs)).loss.backward()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None
    assert model.model.world_projector.linear_1.weight.grad is not None
    assert all(p.grad is None for p in model.model.vision_tower.parameters())
    assert all(p.grad is None for p in model.model.world_encoder.parameters())


def test_gradients_reach_unfrozen_world_encoder(world_model_factory, batch_inputs):
    model = world_model_factory(freeze_cosmos_vae=False)
    model(**batch_inputs, labels=_labels(batch_inputs)).loss.backward()
    missing = [n for n, p in model.model.world_encoder.named_parameters() if p.grad is None]
    assert missing == []  # the 2-D encoder holds no module an image skips
    assert sum(float(p.grad.abs().sum()) for p in model.model.world_encoder.parameters()) > 0
    assert model.model.world_encoder.quant_conv.weight.grad is not None


def test_freeze_flags_are_saved_in_config(world_model_factory, tmp_path):
    model = world_model_factory(freeze_gemma_language=False)
    assert model.config.freeze_gemma_language is False
    model.config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["freeze_gemma_language"] is False


def test_forward_bench_smoke(tiny_bases, capsys):
    """benchmarks/forward_bench.py runs end to end (one repeat on the session's tiny bases) and prints every ratio."""
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "forward_bench.py")
    spec = importlib.util.spec_from_file_location("forward_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bases_dir = os.path.dirname(tiny_bases.gemma)
    argv = "--size tiny --repeats 1 --warmup 0 --batch 1 --prompt-words 9".split() + ["--bases-dir", bases_dir]
    assert bench.main(argv) == 0
    out = capsys.readouterr().out
    for label in ("0. noise floor", "1. enable_world=False forward", "2. fused forward", "3. decode step"):
        assert label in out, out
    assert "logits identical: True" in out
