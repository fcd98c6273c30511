"""Strict and safe loading (issue 3, point 5): every problem is an error naming the offending keys or files.

Unknown / missing / mis-shaped tensors, truncated and corrupt files, a config from a newer format, base weights that
changed since training (and the documented ``ignore_fingerprint_mismatch=True`` override), architecture arguments that
contradict the checkpoint, freeze overrides, safetensors-only reading, and atomic saves checked by SIGKILLing a saving
process. Tiny real models and real files; no mocks.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_checkpoint import logits_and_tokens, model_inputs, perturb
from transformers import AutoModel

from theworld import TheWorld
from theworld.modeling_theworld import DIGEST_KEY, read_safetensors_header

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


@pytest.fixture()
def copy(checkpoint, tmp_path):
    """A private, editable copy of the checkpoint."""
    return shutil.copytree(checkpoint, tmp_path / "ckpt")


def rewrite_weights(folder, edit, keep_digest: bool = False) -> None:
    """Apply ``edit(state) -> state`` to ``folder/model.safetensors`` (metadata kept; the checksum dropped unless
    ``keep_digest``, as a tool that rewrites the file without theworld would)."""
    path = os.path.join(folder, "model.safetensors")
    with safe_open(path, "pt") as f:
        metadata = dict(f.metadata())
    if not keep_digest:
        metadata.pop(DIGEST_KEY)
    save_file(edit(load_file(path)), path, metadata=metadata)


# ----------------------------------------------------------------------------------------------------------------------
# Tensor keys and shapes
# ----------------------------------------------------------------------------------------------------------------------
def test_unknown_tensor_key_is_named(copy):
    rewrite_weights(copy, lambda s: {**s, "world_projector.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unknown keys \['world_projector.extra.weight'\].*nothing was loaded"):
        TheWorld.from_pretrained(str(copy))


def test_missing_trained_key_is_named(copy):
    rewrite_weights(copy, lambda s: {k: v for k, v in s.items() if k != "world_projector.projection.2.bias"})
    with pytest.raises(ValueError, match=r"missing keys \['world_projector.projection.2.bias'\]"):
        AutoModel.from_pretrained(str(copy))


def test_shape_mismatch_is_named(copy):
    def edit(state):
        state["world_projector.projection.0.weight"] = torch.zeros(64, 17)
        return state

    rewrite_weights(copy, edit)
    with pytest.raises(
        ValueError, match=r"shape mismatches world_projector.projection.0.weight: checkpoint \(64, 17\) vs model \(64, 16\)"
    ):
        TheWorld.from_pretrained(str(copy))


# ----------------------------------------------------------------------------------------------------------------------
# Damaged files
# ----------------------------------------------------------------------------------------------------------------------
def test_truncated_file(copy):
    path = copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"model.safetensors is truncated: its header describes \d+ bytes but the file"):
        TheWorld.from_pretrained(str(copy))
    path.write_bytes(data[:20])
    with pytest.raises(ValueError, match=r"model.safetensors is not a valid safetensors file .*truncated or corrupt"):
        TheWorld.from_pretrained(str(copy))


def test_corrupt_header(copy):
    path = copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors is not a valid safetensors file .*re-download or re-save"):
        TheWorld.from_pretrained(str(copy))


def test_corrupt_tensor_bytes_fail_the_checksum(copy):
    path = copy / "model.safetensors"
    _, offset = read_safetensors_header(str(path))
    data = bytearray(path.read_bytes())
    data[offset + 17] ^= 0x40  # one flipped bit inside a tensor
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors is corrupt: its tensor data do not match the sha256"):
        TheWorld.from_pretrained(str(copy))
    # a tampered tensor under the old checksum is refused the same way
    rewrite_weights(copy, lambda s: {k: v + 1 if k.endswith("2.bias") else v for k, v in s.items()}, keep_digest=True)
    with pytest.raises(ValueError, match="is corrupt"):
        TheWorld.from_pretrained(str(copy))


# ----------------------------------------------------------------------------------------------------------------------
# Config versions, architecture and freeze arguments
# ----------------------------------------------------------------------------------------------------------------------
def test_config_from_a_newer_major_version(copy):
    with open(copy / "config.json") as f:
        config = json.load(f)
    config["checkpoint_format_version"] = config["checkpoint_format_version"] + 1
    with open(copy / "config.json", "w") as f:
        json.dump(config, f)
    for load in (TheWorld.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=r"checkpoint_format_version=2 was written by a newer major version"):
            load(str(copy))


def test_missing_sources_are_named(checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No config.json found at .*nowhere.*TheWorld checkpoint"):
        TheWorld.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(OSError, match=r"Could not load the Gemma base .*gemma_model_name=<local path>"):
        TheWorld.from_pretrained(str(checkpoint), gemma_model_name=str(tmp_path / "no-gemma"))


def test_architecture_arguments_must_match_the_checkpoint(checkpoint):
    for key, value in (("world_projection_mode", "channel"), ("enable_world", False), ("world_image_size", 128)):
        with pytest.raises(ValueError, match=rf"trained with {key}=.* but {key}={value!r} was passed"):
            TheWorld.from_pretrained(str(checkpoint), **{key: value})
    model = TheWorld.from_pretrained(str(checkpoint), world_projection_mode="spatial", world_image_size=64)
    assert model.config.world_projection_mode == "spatial"  # agreeing values are fine
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['projector_size'\]"):
        TheWorld.from_pretrained(str(checkpoint), projector_size=3)


def test_freeze_overrides_are_applied_and_saved(checkpoint, trained, sample_images, tmp_path):
    """Multi-stage training: load a projector-only checkpoint with the language model unfrozen."""
    model = TheWorld.from_pretrained(str(checkpoint), freeze_gemma_language=False)
    assert model.config.freeze_gemma_language is False
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in trainable
    assert "model.vision_tower.vision_model.embeddings.patch_embedding.weight" not in trainable
    inputs = model_inputs(trained.processor, sample_images)
    assert torch.equal(logits_and_tokens(model, inputs, 0)[0], logits_and_tokens(trained, inputs, 0)[0])
    perturb(model, seed=32)
    model.save_pretrained(tmp_path / "stage2")
    with safe_open(str(tmp_path / "stage2" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in keys and "lm_head.weight" not in keys
    stage2 = TheWorld.from_pretrained(str(tmp_path / "stage2"))
    assert stage2.config.freeze_gemma_language is False
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


def test_changed_gemma_base_is_refused_unless_overridden(checkpoint, tiny_bases, tmp_path, caplog):
    changed, tensor = _changed_copy(
        tiny_bases.gemma, tmp_path / "gemma", "model.safetensors", "language_model.model.layers.1.mlp.down_proj.weight"
    )
    with pytest.raises(ValueError, match=r"Base weights differ .*\['gemma/model.safetensors'\].*ignore_fingerprint"):
        TheWorld.from_pretrained(str(checkpoint), gemma_model_name=changed)
    with caplog.at_level(logging.WARNING, logger="theworld.modeling_theworld"):
        model = TheWorld.from_pretrained(str(checkpoint), gemma_model_name=changed, ignore_fingerprint_mismatch=True)
    assert any(
        "Base weights differ" in r.getMessage() and "gemma/model.safetensors" in r.getMessage() for r in caplog.records
    )
    assert model.config.gemma_model_name == changed
    assert torch.equal(model.model.language_model.layers[1].mlp.down_proj.weight, tensor)  # it used the other copy
    # An unchanged copy elsewhere is fine: fingerprints are about content, not paths.
    same = shutil.copytree(tiny_bases.gemma, tmp_path / "gemma_same")
    TheWorld.from_pretrained(str(checkpoint), gemma_model_name=str(same))


def test_changed_cosmos_vae_is_refused(checkpoint, tiny_bases, tmp_path):
    changed, _ = _changed_copy(
        tiny_bases.cosmos, tmp_path / "cosmos", "vae/diffusion_pytorch_model.safetensors", "encoder.conv_in.weight"
    )
    with pytest.raises(ValueError, match=r"Base weights differ .*\['cosmos_vae/diffusion_pytorch_model.safetensors'\]"):
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
    (copy / "pytorch_model.bin").write_bytes(pickle.dumps({"world_projector.projection.0.weight": _Booby(marker)}))
    _OPENED = []
    try:
        TheWorld.from_pretrained(str(copy))  # the .bin beside model.safetensors is ignored
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert not any(p.endswith(".bin") for p in opened), [p for p in opened if p.endswith(".bin")]
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


# ----------------------------------------------------------------------------------------------------------------------
# Atomic saves: SIGKILL a saving process
# ----------------------------------------------------------------------------------------------------------------------
KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    import safetensors.torch
    from theworld import TheWorld
    source, target, phase = sys.argv[1:4]
    model = TheWorld.from_pretrained(source)
    if phase == "writing":
        # test-only hook: pause after the first weight file is written, so the parent can kill us mid-save
        real_save_file = safetensors.torch.save_file
        def slow_save_file(*args, **kwargs):
            real_save_file(*args, **kwargs)
            print("WROTE", flush=True)
            time.sleep(120)
        safetensors.torch.save_file = slow_save_file
    else:
        # test-only hook: die the moment before config.json would be moved into place
        real_replace = os.replace
        def dying_replace(src, dst):
            if os.path.basename(dst) == "config.json" and os.path.basename(os.path.dirname(dst)) != os.path.basename(
                os.path.dirname(src)
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)
        os.replace = dying_replace
    model.save_pretrained(target, save_full_model=True, max_shard_size="1MB")
    print("FINISHED", flush=True)
    """
)


@pytest.fixture(scope="module")
def kill_setup(world_model_factory, sample_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("atomic")
    old = perturb(world_model_factory(seed=7), seed=41)
    new = perturb(world_model_factory(seed=8), seed=42)
    new.save_pretrained(root / "new_source")
    inputs = model_inputs(old.processor, sample_images)
    return {"root": root, "old": old, "inputs": inputs, "old_out": logits_and_tokens(old, inputs),
            "new_out": logits_and_tokens(new, inputs)}


def _prepare_target(kill_setup, name):
    target = kill_setup["root"] / name
    kill_setup["old"].save_pretrained(target)  # the previous checkpoint: partial, one model.safetensors
    return target


def test_killed_while_writing_keeps_the_previous_checkpoint(kill_setup):
    target = _prepare_target(kill_setup, "killed_writing")
    before = {n: (target / n).read_bytes() for n in os.listdir(target)}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(kill_setup["root"] / "new_source"), str(target), "writing"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "WROTE", proc.stderr.read()[-3000:]
        staging = [n for n in os.listdir(target) if n.startswith(".theworld-staging-")]
        assert len(staging) == 1 and any(n.startswith("model-") for n in os.listdir(target / staging[0]))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert {n: (target / n).read_bytes() for n in os.listdir(target) if not n.startswith(".")} == before
    loaded = TheWorld.from_pretrained(str(target))
    got = logits_and_tokens(loaded, kill_setup["inputs"])
    assert torch.equal(got[0], kill_setup["old_out"][0]) and torch.equal(got[1], kill_setup["old_out"][1])
    kill_setup["old"].save_pretrained(target)  # the next save cleans the dead staging folder up
    assert not [n for n in os.listdir(target) if n.startswith(".")]


def test_killed_while_publishing_rolls_forward(kill_setup):
    target = _prepare_target(kill_setup, "killed_publishing")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(kill_setup["root"] / "new_source"), str(target), "publishing"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "FINISHED" not in proc.stdout
    with open(target / "config.json") as f:
        assert json.load(f)["checkpoint_kind"] == "partial"  # still the old config: killed just before the swap
    assert any(n.startswith("model-") for n in os.listdir(target))  # ...with the new shards already moved in
    loaded = TheWorld.from_pretrained(str(target))  # completes the committed save, then loads it
    assert loaded.config.checkpoint_kind == "full"
    assert sorted(n for n in os.listdir(target) if n.startswith(("model-", "model.", "."))) == sorted(
        n for n in os.listdir(target) if n.startswith("model-")
    ) + ["model.safetensors.index.json"]
    got = logits_and_tokens(loaded, kill_setup["inputs"])
    assert torch.equal(got[0], kill_setup["new_out"][0]) and torch.equal(got[1], kill_setup["new_out"][1])
