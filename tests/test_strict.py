"""Strict and safe loading (issues 8 and 9): every problem is an error naming the offending keys or files.

Unknown / missing / mis-shaped tensors, truncated and corrupt files, tensors whose stored dtype cannot represent the
parameter (int, bool, a header edited from F32 to I32), overlapping tensor offsets, non-finite values (and the
documented ``allow_non_finite_weights=True``), a config from a newer format, base weights that changed since training
(and ``ignore_fingerprint_mismatch=True``), freeze overrides across training stages, and safetensors-only reading.
Tiny real models and real files; no mocks.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import struct
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_checkpoint import assert_same_state, logits_and_tokens, model_inputs, perturb
from transformers import AutoModel

from theworld import TheWorld
from theworld.checkpoint_theworld import DIGEST_KEY

PROJ = "model.world_projector.linear_1.weight"
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def trained(world_model_factory):
    return perturb(world_model_factory(seed=6), seed=31)


@pytest.fixture(scope="module")
def checkpoint(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("strict") / "ckpt"
    trained.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def full_checkpoint(trained, tmp_path_factory):
    folder = tmp_path_factory.mktemp("strict_full") / "ckpt"
    trained.save_pretrained(folder, save_full_model=True)
    return folder


@pytest.fixture()
def copy(checkpoint, tmp_path):
    """A private, editable copy of the checkpoint."""
    return shutil.copytree(checkpoint, tmp_path / "ckpt")


def rewrite_weights(path, edit, keep_digest: bool = False) -> None:
    """Apply ``edit(state) -> state`` to a safetensors file (metadata kept; the checksum dropped unless
    ``keep_digest``, as a tool that rewrites the file without theworld would)."""
    with safe_open(str(path), "pt") as f:
        metadata = dict(f.metadata())
    if not keep_digest:
        metadata.pop(DIGEST_KEY, None)
    save_file(edit(load_file(path)), path, metadata=metadata)


def edit_header(path, edit) -> None:
    """Rewrite the JSON header of a safetensors file in place (same length, padded with spaces): what a byte-level
    tamperer can do without touching the tensor data."""
    data = bytearray(open(path, "rb").read())
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header.pop("__metadata__", None)  # the checksum goes too
    edit(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert len(raw) <= length
    data[8 : 8 + length] = raw + b" " * (length - len(raw))
    open(path, "wb").write(bytes(data))


# ----------------------------------------------------------------------------------------------------------------------
# Tensor keys and shapes
# ----------------------------------------------------------------------------------------------------------------------
def test_unknown_missing_and_mis_shaped_tensors_are_named(copy):
    path = copy / "model.safetensors"
    original = load_file(path)
    rewrite_weights(path, lambda s: {**s, "model.world_projector.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected keys \['model.world_projector.extra.weight'\].*nothing was loaded"):
        TheWorld.from_pretrained(str(copy))
    save_file({k: v for k, v in original.items() if k != "model.world_projector.linear_2.bias"}, path)
    with pytest.raises(ValueError, match=r"missing keys \['model.world_projector.linear_2.bias'\]"):
        AutoModel.from_pretrained(str(copy))
    # A checkpoint whose config says the language model was trained must hold it (the base's would load silently).
    save_file(original, path)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "freeze_gemma_language": False}))
    with pytest.raises(ValueError, match=r"lacks tensors its configuration says were trained: "
                                         r"\['model.language_model.embed_tokens.weight', "):  # fmt: skip
        TheWorld.from_pretrained(str(copy))
    (copy / "config.json").write_text(json.dumps(config))
    save_file({**original, PROJ: torch.zeros(64, 17)}, path)
    with pytest.raises(ValueError, match=rf"shape mismatches \['{PROJ}: checkpoint \(64, 17\) vs model \(64, 16\)'\]"):
        TheWorld.from_pretrained(str(copy))


# ----------------------------------------------------------------------------------------------------------------------
# Damaged files
# ----------------------------------------------------------------------------------------------------------------------
def test_truncated_and_corrupt_files(copy):
    path = copy / "model.safetensors"
    data = path.read_bytes()
    for damaged in (data[:-100], data[:20], data[:8] + b"\xff" * 32 + data[40:]):
        path.write_bytes(damaged)
        with pytest.raises(ValueError, match=r"model.safetensors is not a valid safetensors file .*truncated or corrupt"):
            TheWorld.from_pretrained(str(copy))


def test_corrupt_tensor_bytes_fail_the_checksum(copy):
    path = copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-17] ^= 0x40  # one flipped bit inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors is corrupt: its tensors do not match the sha256"):
        TheWorld.from_pretrained(str(copy))
    # a tampered tensor under the old checksum is refused the same way
    rewrite_weights(path, lambda s: {k: v + 1 if k.endswith("2.bias") else v for k, v in s.items()}, keep_digest=True)
    with pytest.raises(ValueError, match="is corrupt"):
        TheWorld.from_pretrained(str(copy))


def test_overlapping_tensor_offsets_are_refused(copy):
    """Two tensors pointing at the same bytes (checksum stripped): the safetensors library rejects the file."""
    path = copy / "model.safetensors"

    def overlap(header):
        header["model.world_projector.linear_2.bias"]["data_offsets"] = header["model.world_projector.linear_1.bias"][
            "data_offsets"
        ]

    edit_header(path, overlap)
    with pytest.raises(ValueError, match=r"model.safetensors is not a valid safetensors file \(.*\): it is truncated"):
        TheWorld.from_pretrained(str(copy))


# ----------------------------------------------------------------------------------------------------------------------
# Stored dtypes that cannot represent the parameters
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, stored", [(torch.int32, "I32"), (torch.bool, "BOOL")])
def test_integer_and_bool_tensors_are_refused(copy, dtype, stored):
    rewrite_weights(copy / "model.safetensors", lambda s: {**s, PROJ: s[PROJ].to(dtype)})
    with pytest.raises(ValueError, match=rf"tensor '{PROJ}' is stored as {stored}, but the parameter '{PROJ}' is "
                                         r"torch.float32: an integer or bool dtype"):  # fmt: skip
        TheWorld.from_pretrained(str(copy))


def test_header_dtype_edited_from_f32_to_i32_is_refused(copy, full_checkpoint, tmp_path):
    def to_i32(header):
        assert header[PROJ]["dtype"] == "F32"
        header[PROJ]["dtype"] = "I32"  # same element size: the byte ranges stay valid

    edit_header(copy / "model.safetensors", to_i32)
    with pytest.raises(ValueError, match=rf"tensor '{PROJ}' is stored as I32, but the parameter .* torch.float32"):
        TheWorld.from_pretrained(str(copy))
    # the same in a full checkpoint (a Gemma tensor; the model loads in bfloat16: both dtypes are named)
    full = shutil.copytree(full_checkpoint, tmp_path / "full")
    key = "model.language_model.layers.0.mlp.up_proj.weight"

    def gemma_to_i32(header):
        header[key]["dtype"] = "I32"

    edit_header(full / "model.safetensors", gemma_to_i32)
    with pytest.raises(ValueError, match=rf"tensor '{key}' is stored as I32, but the parameter '{key}' is "
                                         r"torch.bfloat16"):  # fmt: skip
        TheWorld.from_pretrained(str(full), dtype=torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------------------
# Non-finite values
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value", [(PROJ, float("nan")), ("model.world_boundary_embeddings.weight", float("inf"))], ids=["nan", "inf"]
)
def test_non_finite_weights_saved_with_save_pretrained_are_refused(trained, tmp_path, key, value, caplog):
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    bad = TheWorld.from_pretrained(None, config=trained.config, state_dict=state)
    with torch.no_grad():
        bad.get_parameter(key)[0, 1] = value
    bad.processor = trained.processor
    bad.save_pretrained(tmp_path / "bad")  # the checksum is right: the values were saved as they were
    with pytest.raises(ValueError, match=rf"holds non-finite values \(NaN or Inf\) in \['{key}'\].*"
                                         r"allow_non_finite_weights=True"):  # fmt: skip
        TheWorld.from_pretrained(str(tmp_path / "bad"))
    with caplog.at_level(logging.WARNING, logger="theworld.checkpoint_theworld"):
        model = TheWorld.from_pretrained(str(tmp_path / "bad"), allow_non_finite_weights=True)
    assert "non-finite" in caplog.text
    assert f"The checkpoint {tmp_path / 'bad'} holds non-finite" in caplog.text  # the folder, not a pinned fd path
    assert "/proc/self/fd" not in caplog.text
    loaded = model.get_parameter(key)[0, 1]
    assert torch.isnan(loaded) if value != value else torch.isinf(loaded)


def test_non_finite_gemma_weight_in_a_full_checkpoint_is_refused(full_checkpoint, tmp_path):
    full = shutil.copytree(full_checkpoint, tmp_path / "full")
    key = "model.language_model.layers.1.self_attn.q_proj.weight"

    def poison(state):
        state[key] = state[key].clone()
        state[key][3, 4] = float("nan")
        return state

    rewrite_weights(full / "model.safetensors", poison)
    for load in (TheWorld.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=rf"non-finite values \(NaN or Inf\) in \['{key}'\]"):
            load(str(full))


# ----------------------------------------------------------------------------------------------------------------------
# Config versions and missing sources
# ----------------------------------------------------------------------------------------------------------------------
def test_config_from_a_newer_format(copy):
    config = json.loads((copy / "config.json").read_text())
    config["checkpoint_format_version"] += 1
    (copy / "config.json").write_text(json.dumps(config))
    for load in (TheWorld.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=r"checkpoint_format_version=3 was written by a newer theworld"):
            load(str(copy))


def test_missing_sources_are_named(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No config.json at .*nowhere.*TheWorld checkpoint"):
        TheWorld.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(OSError, match=r"Could not find the Gemma 3 base .*no-gemma.*gemma_model_name="):
        TheWorld.from_pretrained(str(checkpoint), gemma_model_name=str(tmp_path / "no-gemma"))


def test_freeze_overrides_are_applied_and_saved(checkpoint, trained, sample_images, tmp_path):
    """Multi-stage training: a projector-only checkpoint loaded with the language model unfrozen, trained, saved (now
    holding the language model), and loaded again."""
    model = TheWorld.from_pretrained(str(checkpoint), freeze_gemma_language=False)
    assert model.config.freeze_gemma_language is False
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in trainable
    assert "model.vision_tower.vision_model.embeddings.patch_embedding.weight" not in trainable
    perturb(model, seed=32)
    model.save_pretrained(tmp_path / "stage2")
    with safe_open(str(tmp_path / "stage2" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in keys and "lm_head.weight" not in keys
    stage2 = TheWorld.from_pretrained(str(tmp_path / "stage2"))
    assert stage2.config.freeze_gemma_language is False
    assert_same_state(stage2, model)
    inputs = model_inputs(trained.processor, sample_images)
    assert torch.equal(logits_and_tokens(stage2, inputs, 0)[0], logits_and_tokens(model, inputs, 0)[0])


# ----------------------------------------------------------------------------------------------------------------------
# Base fingerprints
# ----------------------------------------------------------------------------------------------------------------------
def _changed_copy(src: str, dst, weights: str, key: str) -> tuple[str, torch.Tensor]:
    """Copy a base folder and change one tensor of ``weights`` (same shape); return the copy and the new tensor."""
    shutil.copytree(src, dst)
    path = os.path.join(dst, weights)
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    state = load_file(path)
    state[key] = state[key] * 0.5 + 0.25
    save_file(state, path, metadata=metadata)
    return str(dst), state[key]


def test_changed_bases_are_refused_unless_overridden(checkpoint, tiny_bases, tmp_path, caplog):
    changed, tensor = _changed_copy(
        tiny_bases.gemma, tmp_path / "gemma", "model.safetensors", "language_model.model.layers.1.mlp.down_proj.weight"
    )
    with pytest.raises(ValueError, match=r"Base weights differ .*\['gemma/model.safetensors'\].*ignore_fingerprint"):
        TheWorld.from_pretrained(str(checkpoint), gemma_model_name=changed)
    with caplog.at_level(logging.WARNING, logger="theworld.checkpoint_theworld"):
        model = TheWorld.from_pretrained(str(checkpoint), gemma_model_name=changed, ignore_fingerprint_mismatch=True)
    assert "Base weights differ" in caplog.text and "gemma/model.safetensors" in caplog.text
    assert model.config.gemma_model_name == changed
    assert torch.equal(model.model.language_model.layers[1].mlp.down_proj.weight, tensor)  # it used the other copy
    # An unchanged copy elsewhere is fine: fingerprints are about content, not paths.
    same = shutil.copytree(tiny_bases.gemma, tmp_path / "gemma_same")
    TheWorld.from_pretrained(str(checkpoint), gemma_model_name=str(same))
    changed, _ = _changed_copy(
        tiny_bases.cosmos, tmp_path / "cosmos", "vae/diffusion_pytorch_model.safetensors", "encoder.conv_in.weight"
    )
    with pytest.raises(ValueError, match=r"Base weights differ .*\['cosmos/vae/diffusion_pytorch_model.safetensors'\]"):
        TheWorld.from_pretrained(str(checkpoint), cosmos_model_name=changed)


# ----------------------------------------------------------------------------------------------------------------------
# Only safetensors, never pickle
# ----------------------------------------------------------------------------------------------------------------------
class _Booby:
    """Unpickling this creates a marker file: proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_files_are_never_read(copy, tiny_bases, tmp_path):
    global _OPENED
    marker = str(tmp_path / "PICKLE_WAS_EXECUTED")
    (copy / "pytorch_model.bin").write_bytes(pickle.dumps({PROJ: _Booby(marker)}))
    _OPENED = []
    try:
        TheWorld.from_pretrained(str(copy))  # the .bin beside model.safetensors is ignored
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert opened and not any(p.endswith(".bin") for p in opened)
    assert not os.path.exists(marker)

    os.remove(copy / "model.safetensors")  # only the pickle left
    with pytest.raises(FileNotFoundError, match=r"No model.safetensors .* Only safetensors weights are loaded"):
        TheWorld.from_pretrained(str(copy))
    # A Gemma base that ships only pickled weights is refused too.
    gemma = shutil.copytree(tiny_bases.gemma, tmp_path / "gemma_bin")
    os.remove(gemma / "model.safetensors")
    (gemma / "pytorch_model.bin").write_bytes(pickle.dumps(_Booby(marker)))
    with pytest.raises(OSError, match=r"safetensors"):
        TheWorld.from_pretrained(str(gemma), cosmos_model_name=tiny_bases.cosmos, world_image_size=64)
    assert not os.path.exists(marker)
