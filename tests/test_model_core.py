"""TheWorld itself: Case A build, every base tensor arriving, world encoding, the forward pass and training semantics
(issue 2, points 4, 5, 6 and 7). Tiny real models from ``theworld.tiny``; no mocks."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys

import pytest
import torch
from diffusers import AutoencoderKLWan
from safetensors.torch import load_file

from theworld import TheWorld
from theworld.modeling_theworld import latents_to_world_tokens
from theworld.processing_theworld import TheWorldProcessor

# Disk names of the hub's Gemma 3 checkpoint -> module names in transformers 5 (and in TheWorld).
GEMMA_DISK_PREFIXES = {
    "language_model.model.": "model.language_model.",
    "vision_tower.": "model.vision_tower.",
    "multi_modal_projector.": "model.multi_modal_projector.",
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


# ----------------------------------------------------------------------------------------------------------------------
# Case A: building around a Gemma 3 folder and a Cosmos pipeline folder
# ----------------------------------------------------------------------------------------------------------------------
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def test_case_a_reads_only_the_vae_from_cosmos(tiny_bases, tmp_path):
    """A Cosmos copy whose DiT weights are garbage and whose text encoder is gone still builds; no DiT module exists
    and no file outside ``vae/`` is opened."""
    global _OPENED
    cosmos = tmp_path / "cosmos"
    shutil.copytree(tiny_bases.cosmos, cosmos)
    (cosmos / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    shutil.rmtree(cosmos / "text_encoder")
    shutil.rmtree(cosmos / "tokenizer")
    _OPENED = []
    try:
        model = TheWorld.from_pretrained(tiny_bases.gemma, cosmos_model_name=str(cosmos), world_image_size=64)
    finally:
        opened, _OPENED = _OPENED, None
    cosmos_files = sorted({os.path.relpath(p, cosmos) for p in opened if p.startswith(str(cosmos))})
    assert cosmos_files == ["vae/config.json", "vae/diffusion_pytorch_model.safetensors"], cosmos_files
    names = {type(m).__name__ for m in model.modules()}
    assert "AutoencoderKLWan" in names
    assert not names & {"CosmosTransformer3DModel", "T5EncoderModel", "WanDecoder3d"}, names
    assert model.cosmos_vae.decoder is None
    assert getattr(model, "world_rollout", None) is None
    assert isinstance(model.processor, TheWorldProcessor)
    assert model.config.cosmos_model_name == str(cosmos)
    assert model.config.num_world_tokens == model.processor.num_world_tokens == 64
    # it is usable right away
    with torch.no_grad():
        ids = model.processor(text=["<start_of_image> hi"], images=[[_image()]], return_tensors="pt")
        assert torch.isfinite(model(**ids).logits).all()


def _image(color=(200, 40, 40)):
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64), (250, 250, 250))
    ImageDraw.Draw(im).ellipse((8, 8, 40, 40), fill=color)
    return im


def test_trainable_parameters_are_exactly_projector_and_boundaries(world_model):
    trainable, total, pct = world_model.get_trainable_parameters()
    expected = _projector_and_boundary_count(world_model)
    assert trainable == expected == 16 * 64 + 64 + 64 * 64 + 64 + 2 * 64
    unique = {id(p): p.numel() for p in world_model.parameters()}
    assert total == sum(unique.values())
    assert pct == pytest.approx(100.0 * expected / total)
    names = [n for n, p in world_model.named_parameters() if p.requires_grad]
    assert all(n.startswith(("world_projector.", "world_boundary_embeddings.")) for n in names), names


def test_every_gemma_tensor_arrived(world_model, tiny_bases):
    """The DESIGN trap: a Gemma 3 subclass may silently get a randomly initialised language model."""
    disk = load_file(os.path.join(tiny_bases.gemma, "model.safetensors"))
    state = world_model.state_dict()
    gemma_keys = {k for k in state if k.startswith(("model.", "lm_head."))}
    mapped = {_disk_to_model(k): v for k, v in disk.items()}
    assert set(mapped) == gemma_keys - {"lm_head.weight"}
    assert any(k.startswith("model.language_model.layers.") for k in mapped)
    for key, tensor in mapped.items():
        assert torch.equal(state[key], tensor), key
    # lm_head is tied to the input embeddings, as in Gemma 3
    assert torch.equal(state["lm_head.weight"], disk["language_model.model.embed_tokens.weight"])


def test_vae_encoder_tensors_equal_disk(world_model, tiny_bases):
    disk = load_file(os.path.join(tiny_bases.cosmos, "vae", "diffusion_pytorch_model.safetensors"))
    encoder = {k: v for k, v in disk.items() if k.startswith(("encoder.", "quant_conv."))}
    state = world_model.cosmos_vae.state_dict()
    assert set(state) == set(encoder)
    for key, tensor in encoder.items():
        assert torch.equal(state[key], tensor), key
    assert any(k.startswith("decoder.") for k in disk), "the tiny VAE has a decoder that TheWorld must skip"


def test_bf16_keeps_world_projector_in_fp32(world_model_factory, batch_inputs):
    model = world_model_factory(dtype=torch.bfloat16)
    assert model.model.language_model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.vision_tower.embeddings.patch_embedding.weight.dtype == torch.bfloat16
    assert next(model.cosmos_vae.parameters()).dtype == torch.bfloat16
    for name, param in itertools.chain(
        model.world_projector.named_parameters(), model.world_boundary_embeddings.named_parameters()
    ):
        assert param.dtype == torch.float32, name
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in batch_inputs.items()}
    labels = batch_inputs["input_ids"].masked_fill(batch_inputs["attention_mask"] == 0, -100)
    out = model(**inputs, labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grad = model.world_projector.projection[0].weight.grad
    assert grad is not None and grad.dtype == torch.float32 and grad.abs().sum() > 0


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


@pytest.mark.parametrize(
    ("overrides", "tokens"),
    [
        ({"world_projection_mode": "channel"}, 16),
        ({"world_pooling": 2}, 16),
        ({"projection_architecture": "linear", "world_projection_mode": "channel", "world_pooling": 2}, 16),
    ],
)
def test_modes_run_end_to_end(world_model_factory, sample_images, overrides, tokens):
    from conftest import conversations

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
        features = model.world_features(latents)
        manual = model.world_projector(
            latents_to_world_tokens(latents, model.config.world_projection_mode, model.config.world_pooling)
        )
        out = model(**inputs)
    assert features.shape == (2, tokens, model.config.text_config.hidden_size)
    torch.testing.assert_close(features, manual)
    assert torch.isfinite(out.logits).all()
    trainable, _, _ = model.get_trainable_parameters()
    assert trainable == _projector_and_boundary_count(model)


# ----------------------------------------------------------------------------------------------------------------------
# Forward: features scattered at the right places, and they matter
# ----------------------------------------------------------------------------------------------------------------------
def test_world_features_are_scattered_into_the_placeholders(world_model, batch_inputs):
    cfg = world_model.config
    ids = batch_inputs["input_ids"]
    with torch.no_grad():
        embeds = world_model.build_inputs_embeds(ids, batch_inputs["pixel_values"], batch_inputs["world_pixel_values"])
        features = world_model.world_features(world_model.encode_world(batch_inputs["world_pixel_values"]))
    for row in range(2):
        torch.testing.assert_close(embeds[row][ids[row] == cfg.world_token_id], features[row])
        torch.testing.assert_close(
            embeds[row][ids[row] == cfg.start_of_world_token_id][0], world_model.world_boundary_embeddings.weight[0]
        )
        torch.testing.assert_close(
            embeds[row][ids[row] == cfg.end_of_world_token_id][0], world_model.world_boundary_embeddings.weight[1]
        )


def test_world_changes_logits_and_cached_latents_match(world_model, batch_inputs):
    ids = batch_inputs["input_ids"]
    mask = batch_inputs["attention_mask"]
    with torch.no_grad():
        base = world_model(**batch_inputs).logits
        swapped = world_model(
            **{**batch_inputs, "world_pixel_values": batch_inputs["world_pixel_values"].flip(0)}
        ).logits
        latents = world_model.encode_world(batch_inputs["world_pixel_values"])
        cached = world_model(
            **{k: v for k, v in batch_inputs.items() if k != "world_pixel_values"}, world_latents=latents
        ).logits
        zeros = torch.zeros(2, 64, world_model.config.text_config.hidden_size)
        override = world_model(
            **{k: v for k, v in batch_inputs.items() if k != "world_pixel_values"}, world_embeds_override=zeros
        ).logits
    assert torch.equal(cached, base)
    for row in range(2):
        end = int((ids[row] == world_model.config.end_of_world_token_id).nonzero()[0, 0])
        first = int(mask[row].argmax())
        # positions up to the start marker cannot see the world (causal); everything after it does
        torch.testing.assert_close(swapped[row, first : first + 2], base[row, first : first + 2])
        diff = (swapped[row, end:] - base[row, end:]).abs().amax(-1)
        assert (diff > 1e-4).all(), f"row {row}: world features did not reach every later position"
        assert (override[row, -1] - base[row, -1]).abs().max() > 1e-4


def test_legacy_images_list_gives_same_logits(world_model, batch_inputs, sample_images):
    """``forward(images=[PIL, ...])`` on prompts without world blocks == processor-built inputs."""
    n = world_model.config.num_world_tokens
    keep = []
    for row in range(2):
        first = int(batch_inputs["attention_mask"][row].argmax())
        idx = list(range(first + 1)) + list(range(first + 3 + n, batch_inputs["input_ids"].shape[1]))
        keep.append(torch.tensor(idx))
    stripped = {
        k: torch.stack([batch_inputs[k][r, keep[r]] for r in range(2)])
        for k in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert not (stripped["input_ids"] == world_model.config.world_token_id).any()
    with torch.no_grad():
        expected = world_model(**batch_inputs).logits
        legacy = world_model(**stripped, pixel_values=batch_inputs["pixel_values"], images=list(sample_images)).logits
        # images=[...] with input_ids that already hold the world blocks: the images are only the world pixels
        both = world_model(
            **{k: v for k, v in batch_inputs.items() if k != "world_pixel_values"}, images=list(sample_images)
        ).logits
    assert legacy.shape == expected.shape
    torch.testing.assert_close(legacy, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(both, expected, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------------------
# Training semantics
# ----------------------------------------------------------------------------------------------------------------------
def _world_positions(model: TheWorld, ids: torch.Tensor) -> torch.Tensor:
    cfg = model.config
    return (ids == cfg.world_token_id) | (ids == cfg.start_of_world_token_id) | (ids == cfg.end_of_world_token_id)


def test_labels_at_world_positions_are_ignored_and_loss_is_manual_ce(world_model, batch_inputs):
    ids, mask = batch_inputs["input_ids"], batch_inputs["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)  # naive labels that include the world block
    masked = world_model.mask_world_labels(ids, labels)
    world = _world_positions(world_model, ids)
    assert (masked[world] == -100).all()
    assert torch.equal(masked[~world], labels[~world])
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
    return {
        "vision": list(model.model.vision_tower.parameters()) + list(model.model.multi_modal_projector.parameters()),
        "language": list(model.model.language_model.parameters()) + [model.lm_head.weight],
        "vae": list(model.cosmos_vae.parameters()),
        "world": list(model.world_projector.parameters()) + list(model.world_boundary_embeddings.parameters()),
    }


@pytest.mark.parametrize("flags", list(itertools.product([True, False], repeat=3)))
def test_freeze_flags_freeze_exactly_the_original_sets(world_model_factory, flags):
    vision, language, vae = flags
    model = world_model_factory(freeze_gemma_vision=vision, freeze_gemma_language=language, freeze_cosmos_vae=vae)
    groups = _groups(model)
    expected = {"vision": not vision, "language": not language, "vae": not vae, "world": True}
    for group, params in groups.items():
        assert params, group
        assert {p.requires_grad for p in params} == {expected[group]}, group
    counted = sum({id(p): p.numel() for ps in groups.values() for p in ps}.values())
    assert counted == model.get_trainable_parameters()[1], "the four groups must cover every parameter"


def test_gradients_reach_projector_and_boundaries_only(world_model_factory, batch_inputs):
    model = world_model_factory()
    model.train()
    labels = batch_inputs["input_ids"].masked_fill(batch_inputs["attention_mask"] == 0, -100)
    model(**batch_inputs, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(("world_projector.", "world_boundary_embeddings.")):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name
    # both boundary rows receive a gradient (start and end markers)
    assert (model.world_boundary_embeddings.weight.grad.abs().sum(-1) > 0).all()


def test_gradients_reach_unfrozen_language_model(world_model_factory, batch_inputs):
    model = world_model_factory(freeze_gemma_language=False)
    labels = batch_inputs["input_ids"].masked_fill(batch_inputs["attention_mask"] == 0, -100)
    model(**batch_inputs, labels=labels).loss.backward()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad is not None
    assert model.world_projector.projection[0].weight.grad is not None
    assert all(p.grad is None for p in model.model.vision_tower.parameters())
    assert all(p.grad is None for p in model.cosmos_vae.parameters())


def test_gradients_reach_unfrozen_vae(world_model_factory, batch_inputs):
    model = world_model_factory(freeze_cosmos_vae=False)
    labels = batch_inputs["input_ids"].masked_fill(batch_inputs["attention_mask"] == 0, -100)
    model(**batch_inputs, labels=labels).loss.backward()
    # the temporal-downsampling convolutions only act on video (more than one frame): a single image skips them
    missing = [n for n, p in model.cosmos_vae.named_parameters() if p.grad is None]
    assert missing and all(".time_conv." in n for n in missing), missing
    got = [p.grad for p in model.cosmos_vae.parameters() if p.grad is not None]
    assert sum(float(g.abs().sum()) for g in got) > 0
    assert model.cosmos_vae.quant_conv.weight.grad is not None


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


def test_skeleton_builds_from_config_alone(world_model):
    """No from_pretrained inside __init__: the whole module tree comes from config.json, on the meta device, even when
    the base sources it names do not exist."""
    from theworld import TheWorldConfig

    data = world_model.config.to_dict()
    data.update(gemma_model_name="/nonexistent/gemma", cosmos_model_name="/nonexistent/cosmos")
    config = TheWorldConfig.from_dict(data)
    with torch.device("meta"):
        skeleton = TheWorld(config)
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in world_model.state_dict().items()}
    assert all(p.device.type == "meta" for p in skeleton.parameters())


def test_right_padding_gives_the_same_logits(world_model, sample_images):
    from conftest import conversations

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
