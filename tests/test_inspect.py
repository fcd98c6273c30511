"""``theworld inspect`` and ``theworld export`` (issue 3, point 7), through the command line's ``main`` (the console
script is ``sys.exit(main())``; test_cli.py runs it as a real subprocess)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from test_checkpoint import model_inputs, perturb
from test_hub import commit_id, lay_out_repo
from test_legacy import mlp_projector, write_legacy_checkpoint

from theworld import TheWorld
from theworld.checkpoint_theworld import REMOTE_CODE_FILES
from theworld.cli import main


@pytest.fixture(scope="module")
def saved(world_model_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    model = perturb(world_model_factory(seed=9, freeze_gemma_language=False), seed=51)
    model.save_pretrained(root / "ckpt")
    return {"root": root, "model": model}


def test_inspect_reports_kind_bases_modules_dtype_and_code(saved, tiny_bases, capsys):
    assert main(["inspect", str(saved["root"] / "ckpt")]) == 0
    out = capsys.readouterr().out
    model = saved["model"]
    assert "kind: partial" in out
    assert "format: 2 (written by theworld 0.2.0" in out
    assert f"gemma base: {tiny_bases.gemma} (no commit pinned" in out
    assert f"cosmos base: {tiny_bases.cosmos} (no commit pinned" in out
    prints = model.config.base_fingerprints
    assert f"base fingerprints: {len(prints['cosmos'])} cosmos file(s), {len(prints['gemma'])} gemma file(s)" in out
    assert "world: enable_world=True mode=spatial projector=mlp image=64px pooling=1 tokens=64 placement=after_image" in out
    projector = sum(p.numel() for p in model.model.world_projector.parameters())
    language = sum(p.numel() for p in model.model.language_model.parameters())
    lines = {line.split()[0]: line for line in out.splitlines() if "params" in line and "bytes" in line}
    row = lines["model.world_projector"]
    assert f"{projector:,} params" in row and f"{projector * 4:,} bytes" in row and row.rstrip().endswith("F32")
    assert f"{language:,} params" in lines["model.language_model"]
    assert "lm_head" not in lines  # tied: saved once
    assert "dtype: F32" in out
    for name in REMOTE_CODE_FILES:
        assert f"{name}: matches" in out


def test_inspect_flags_code_that_differs_and_hub_repos(saved, capsys, tmp_path):
    copy = shutil.copytree(saved["root"] / "ckpt", tmp_path / "edited")
    with open(copy / "modeling_theworld.py", "a") as f:
        f.write("\n# edited after saving\n")
    os.remove(copy / "processing_theworld.py")
    assert main(["inspect", str(copy)]) == 0
    out = capsys.readouterr().out
    assert "modeling_theworld.py: differs" in out and "processing_theworld.py: missing" in out
    assert "configuration_theworld.py: matches" in out

    cache = str(tmp_path / "hub")
    commit = commit_id("inspect")
    lay_out_repo(cache, "someone/inspected", {"checkpoint-2": str(saved["root"] / "ckpt")}, commit)
    args = ["inspect", "someone/inspected", "--checkpoint-name", "checkpoint-2", "--cache-dir", cache, "--json"]
    assert main(args) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "partial" and info["source"] == "someone/inspected/checkpoint-2"
    assert commit in info["config_path"]
    assert info["modules"]["model.world_boundary_embeddings"]["parameters"] == 2 * 64
    assert info["dtypes"] == {"F32": info["parameters"]}


def test_inspect_legacy_and_bad_sources(tiny_bases, tmp_path, capsys):
    write_legacy_checkpoint(tmp_path / "legacy", tiny_bases, mlp_projector(16, seed=1))
    assert main(["inspect", str(tmp_path / "legacy")]) == 0
    out = capsys.readouterr().out
    assert "kind: partial (earlier research format, converted on load)" in out
    assert "modeling_theworld.py: missing" in out and "image=512px" in out
    assert main(["inspect", tiny_bases.gemma]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tiny_bases.gemma} has model_type 'gemma3': not a TheWorld")
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: No config.json at")


def test_export_full_bf16_and_back(saved, sample_images, tmp_path, capsys):
    src, full = saved["root"] / "ckpt", tmp_path / "full"
    assert main(["export", str(src), str(full), "--full", "--dtype", "bfloat16", "--max-shard-size", "200KB"]) == 0
    assert f"Wrote a full TheWorld checkpoint to {full}: model-00001-of-" in capsys.readouterr().out
    assert main(["inspect", str(full), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == "full" and len(info["files"]) > 1
    assert info["modules"]["model.world_projector"]["dtypes"] == ["F32"]
    assert info["modules"]["model.language_model"]["dtypes"] == ["BF16"]
    exported = TheWorld.from_pretrained(str(full))
    reference = TheWorld.from_pretrained(str(src), dtype=torch.bfloat16)
    inputs = model_inputs(reference.processor, sample_images)
    with torch.no_grad():
        assert torch.equal(exported(**inputs).logits, reference(**inputs).logits)
    # back to a partial checkpoint, in-process
    assert main(["export", str(full), str(tmp_path / "partial")]) == 0
    assert "Wrote a partial TheWorld checkpoint" in capsys.readouterr().out
    assert main(["export", str(saved["root"] / "nowhere"), str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: No config.json at")
    assert main(["export", saved["model"].config.gemma_model_name, str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {saved['model'].config.gemma_model_name} has model_type 'gemma3'")
    assert "`theworld export` takes TheWorld checkpoints" in err
