"""Loading that cannot be turned against its user (issue 9, points 1, 2, 9 and 10 of loading).

* Consent: nothing from a checkpoint runs without ``trust_remote_code=True``. A checkpoint whose
  ``tokenizer_config.json`` ``auto_map`` names a planted module, and whose shipped code files are all booby-trapped,
  is loaded every way a user may load it after ``import theworld`` (local folder and hub repo id, TheWorld, the Auto
  classes, ``theworld inspect``); no planted code ever runs.
* Read-only loading: loads of partial, full, earlier-format and hub-cache checkpoints and fresh builds change no file
  or directory entry anywhere (names, sizes, mtimes, inodes of the whole tree); a crafted 0.1.0 staging folder whose
  marker lists ``../victim`` is never acted on by a load, and the explicit repair honours only plain file names.
Real files; no mocks.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
from test_checkpoint import perturb
from test_hub import commit_id, lay_out_repo
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from theworld import TheWorld
from theworld.checkpoint_theworld import recover_interrupted_save
from theworld.cli import main as cli_main

REPO = "someone/planted"


def snapshot(*roots) -> dict[str, tuple]:
    """Every entry under ``roots``: ``(kind, size, mtime_ns, inode)``, and the bytes' hash for files."""
    out = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                st = os.lstat(path)
                kind = "link" if os.path.islink(path) else "dir" if os.path.isdir(path) else "file"
                content = open(path, "rb").read() if kind == "file" else os.readlink(path) if kind == "link" else None
                out[path] = (kind, st.st_size, st.st_mtime_ns, st.st_ino, hash(content))
            out[folder] = ("dir", None, os.lstat(folder).st_mtime_ns, os.lstat(folder).st_ino, None)
    return out


@pytest.fixture(scope="module")
def saved(world_model_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("trust")
    model = perturb(world_model_factory(seed=9), seed=19)
    model.save_pretrained(root / "partial")
    model.save_pretrained(root / "full", save_full_model=True, max_shard_size="1MB")
    return root


# ----------------------------------------------------------------------------------------------------------------------
# Consent: a planted module never runs
# ----------------------------------------------------------------------------------------------------------------------
def plant(folder, marker: str) -> None:
    """Make every way of running code from ``folder`` write ``marker``: a module named by tokenizer_config.json's
    auto_map, and a booby trap appended to each shipped code file."""
    trap = f"\nimport pathlib as _p\n_p.Path({marker!r}).write_text(__name__)\n"
    (folder / "evil_tokenizer.py").write_text(trap + "class EvilTokenizer:\n    pass\n")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["auto_map"] = {
        "AutoTokenizer": ["evil_tokenizer.EvilTokenizer", "evil_tokenizer.EvilTokenizer"],
        "AutoProcessor": "evil_tokenizer.EvilTokenizer",
        "AutoImageProcessor": "evil_tokenizer.EvilTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for name in os.listdir(folder):
        if name.endswith(".py") and name != "evil_tokenizer.py":
            with open(folder / name, "a") as f:
                f.write(trap)


def test_planted_modules_never_run_without_trust_remote_code(saved, tmp_path, capsys):
    """In this process (theworld imported, as a user's would be): every way of loading the planted checkpoint either
    works with theworld's own classes or fails; the planted code never runs."""
    marker = tmp_path / "PLANTED_CODE_RAN"
    folder, full = tmp_path / "partial", tmp_path / "full"
    shutil.copytree(saved / "partial", folder)
    shutil.copytree(saved / "full", full)
    plant(folder, str(marker))
    plant(full, str(marker))
    cache = str(tmp_path / "hub")
    lay_out_repo(cache, REPO, {"": str(folder)}, commit_id("planted"))
    attempts = {
        "TheWorld.from_pretrained(folder)": lambda: TheWorld.from_pretrained(str(folder)),
        "TheWorld.from_pretrained(repo)": lambda: TheWorld.from_pretrained(REPO, cache_dir=cache),
        "AutoModel.from_pretrained(folder)": lambda: AutoModel.from_pretrained(str(folder)),
        "AutoModel.from_pretrained(repo)": lambda: AutoModel.from_pretrained(REPO, cache_dir=cache),
        "AutoModelForImageTextToText.from_pretrained(full)": lambda: AutoModelForImageTextToText.from_pretrained(
            str(full)
        ),
        "AutoProcessor.from_pretrained(folder)": lambda: AutoProcessor.from_pretrained(str(folder)),
        "AutoConfig.from_pretrained(folder)": lambda: AutoConfig.from_pretrained(str(folder)),
        "theworld inspect folder": lambda: cli_main(["inspect", str(folder)]),
    }
    outcome = {}
    for name, attempt in attempts.items():
        try:
            result = attempt()
            outcome[name] = f"ok {type(result).__module__}.{type(result).__name__}"
        except SystemExit as err:
            outcome[name] = f"exit {err.code}"
        except Exception as err:  # noqa: BLE001 - every outcome is recorded; the marker is what matters
            outcome[name] = f"error {type(err).__name__}: {err}"
    capsys.readouterr()
    assert not marker.exists(), (marker.read_text(), outcome)
    assert not [m for m in sys.modules if "evil_tokenizer" in m or m.startswith("transformers_modules.partial")]
    # The loads themselves work: the installed theworld classes, never the checkpoint's code.
    for name, result in outcome.items():
        if name.startswith(("TheWorld.", "AutoModel")):
            assert result == "ok theworld.modeling_theworld.TheWorldForConditionalGeneration", (name, result)
    assert outcome["AutoProcessor.from_pretrained(folder)"] == "ok theworld.processing_theworld.TheWorldProcessor"
    assert outcome["AutoConfig.from_pretrained(folder)"] == "ok theworld.configuration_theworld.TheWorldConfig"
    assert outcome["theworld inspect folder"] in ("ok builtins.int", "exit 0"), outcome


# ----------------------------------------------------------------------------------------------------------------------
# Read-only loading
# ----------------------------------------------------------------------------------------------------------------------
def test_loads_change_no_file_anywhere(saved, tiny_bases, tmp_path, monkeypatch):
    work = tmp_path / "work"
    partial, full = work / "partial", work / "full"
    shutil.copytree(saved / "partial", partial)
    shutil.copytree(saved / "full", full)
    gemma, cosmos = shutil.copytree(tiny_bases.gemma, work / "gemma"), shutil.copytree(tiny_bases.cosmos, work / "cosmos")
    cache = work / "hub"
    lay_out_repo(str(cache), REPO, {"": str(partial)}, commit_id("read-only"))
    # an unfinished 0.1.0 staging folder (no marker): harmless, and left alone by loads
    (partial / ".theworld-staging-old").mkdir()
    (partial / ".theworld-staging-old" / "model.safetensors").write_bytes(b"partial write")
    monkeypatch.chdir(work)
    hf_home = os.environ["HF_HOME"]
    before = snapshot(work, hf_home)
    models = [
        TheWorld.from_pretrained(str(partial)),
        TheWorld.from_pretrained(str(full)),
        TheWorld.from_pretrained("partial"),  # relative to the working directory
        TheWorld.from_pretrained(REPO, cache_dir=str(cache)),
        TheWorld.from_pretrained(str(gemma), cosmos_model_name=str(cosmos), world_image_size=64),  # fresh build
    ]
    assert [m.config.checkpoint_kind for m in models[:4]] == ["partial", "full", "partial", "partial"]
    assert snapshot(work, hf_home) == before


def test_crafted_staging_marker_is_never_acted_on_by_a_load(saved, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(saved / "partial", folder)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    staging = folder / ".theworld-staging-x"
    staging.mkdir()
    (staging / "victim").write_text("planted")
    (staging / "config.json").write_text("{}")
    (staging / ".theworld-complete").write_text(json.dumps(["../victim", "config.json", "/etc/passwd"]))
    before = snapshot(tmp_path)
    with pytest.raises(ValueError, match=r"\.theworld-staging-x/, a save by theworld 0\.1\.0 that was interrupted.*"
                                         r"recover_interrupted_save"):  # fmt: skip
        TheWorld.from_pretrained(str(folder))
    assert snapshot(tmp_path) == before  # the victim and every file inside are unchanged
    assert victim.read_text() == "precious"


def test_explicit_recovery_moves_only_plain_file_names(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("old config")
    (folder / "model.safetensors").write_bytes(b"old weights")
    (folder / "README.md").write_text("old card")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    staging = folder / ".theworld-staging-x"
    staging.mkdir()
    (staging / "config.json").write_text("new config")
    (staging / "model.safetensors.index.json").write_text("new index")
    (staging / "model-00001-of-00001.safetensors").write_bytes(b"new shard")
    (staging / ".hidden").write_text("no")
    listed = ["config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors", "../victim",
              "/tmp/elsewhere", ".hidden", "sub/dir.json", ""]  # fmt: skip
    (staging / ".theworld-complete").write_text(json.dumps(listed))
    unfinished = folder / ".theworld-staging-y"  # never committed: just removed
    unfinished.mkdir()
    (unfinished / "config.json").write_text("half")
    moved = recover_interrupted_save(str(folder))
    assert moved == ["model-00001-of-00001.safetensors", "model.safetensors.index.json", "config.json"]
    assert sorted(os.listdir(folder)) == sorted(["README.md", "config.json", "model.safetensors.index.json",
                                                 "model-00001-of-00001.safetensors"])  # fmt: skip
    assert (folder / "config.json").read_text() == "new config" and victim.read_text() == "precious"
    assert not os.path.exists("/tmp/elsewhere")
