"""Loading through transformers' Auto classes (issue 3, point 3).

In-process, after ``import theworld`` (no ``trust_remote_code``): ``AutoModel``, ``AutoModelForImageTextToText``,
``AutoProcessor`` and ``AutoConfig``.

Remote code, in a *clean environment*: a real ``python -m venv`` whose site-packages holds only torch, transformers,
diffusers, huggingface_hub, safetensors and pillow plus their own dependencies (resolved from their installed metadata),
symlinked from the current environment. theworld is not installed there (and its editable-install finder is absent),
so ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` can only run the code files shipped in the checkpoint.
Building it takes about a second, where ``pip install`` of the same packages takes 75-80 s here (set
``THEWORLD_CLEAN_ENV=pip`` to build the venv with pip instead, e.g. for a release check). A second clean venv without
diffusers checks the "pip install diffusers" error.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from safetensors.torch import load_file
from test_checkpoint import (
    assert_same_inputs,
    gemma_dtype_report,
    logits_and_tokens,
    model_inputs,
    perturb,
)
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

from theworld import TheWorld, TheWorldConfig, TheWorldProcessor

CLEAN_ENV_PACKAGES = ("torch", "transformers", "diffusers", "huggingface_hub", "safetensors", "pillow")


# ----------------------------------------------------------------------------------------------------------------------
# Clean virtual environments
# ----------------------------------------------------------------------------------------------------------------------
def dependency_closure(roots) -> dict[str, md.Distribution]:
    """The installed distributions ``roots`` need: themselves plus their (non-extra) requirements, recursively."""
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        dist = md.distribution(name)
        seen[name] = dist
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                md.distribution(req.name)
            except md.PackageNotFoundError:
                continue  # an optional platform dependency that is not installed here either
            todo.append(req.name)
    return seen


def make_clean_venv(dest: str, packages=CLEAN_ENV_PACKAGES) -> str:
    """Create a venv at ``dest`` holding only ``packages`` and their dependencies; return its python."""
    use_pip = os.environ.get("THEWORLD_CLEAN_ENV") == "pip"
    subprocess.run([sys.executable, "-m", "venv", *([] if use_pip else ["--without-pip"]), dest], check=True)
    python = os.path.join(dest, "bin", "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if use_pip:
        pins = [f"{name}=={md.version(name)}" for name in packages]
        subprocess.run([python, "-m", "pip", "install", "-q", *pins], check=True)
        return python
    linked: set[str] = set()
    for dist in dependency_closure(packages).values():
        base = str(dist.locate_file(""))
        for entry in dist.files or []:
            top = entry.parts[0]
            if top == ".." or top in linked or top.endswith(".pth"):
                continue
            src = os.path.join(base, top)
            if os.path.exists(src):
                os.symlink(src, os.path.join(site, top))
                linked.add(top)
    return python


def run_clean(python: str, script: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "HF_", "TRANSFORMERS_"))
    }
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env_extra or {}))
    return subprocess.run([python, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def clean_python(tmp_path_factory):
    return make_clean_venv(str(tmp_path_factory.mktemp("venv") / "clean"))


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints and reference outputs
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(world_model_factory, sample_images, tmp_path_factory):
    """A trained-looking model saved partial and full, and its reference inputs, logits and greedy tokens."""
    root = tmp_path_factory.mktemp("auto")
    model = perturb(world_model_factory(seed=4), seed=21)
    model.save_pretrained(root / "partial")
    model.save_pretrained(root / "full", save_full_model=True, max_shard_size="2MB")
    inputs = model_inputs(model.processor, sample_images)
    logits, tokens = logits_and_tokens(model, inputs)
    return {"root": root, "model": model, "inputs": inputs, "logits": logits, "tokens": tokens}


def test_auto_classes_after_import_theworld(saved, sample_images):
    folder = str(saved["root"] / "partial")
    config = AutoConfig.from_pretrained(folder)
    assert type(config) is TheWorldConfig
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is TheWorldProcessor
    inputs = model_inputs(processor, sample_images)
    assert_same_inputs(inputs, saved["inputs"])
    for auto, kind in ((AutoModel, "partial"), (AutoModel, "full"), (AutoModelForImageTextToText, "partial")):
        model = auto.from_pretrained(str(saved["root"] / kind))
        assert type(model) is TheWorld  # the installed class, no remote code
        logits, tokens = logits_and_tokens(model, inputs)
        assert torch.equal(logits, saved["logits"]), (auto.__name__, kind)
        assert torch.equal(tokens, saved["tokens"]), (auto.__name__, kind)


def test_auto_classes_honour_dtype_and_device_map(saved):
    outputs = []
    for auto in (AutoModel, AutoModelForImageTextToText):
        model = auto.from_pretrained(str(saved["root"] / "partial"), dtype=torch.bfloat16, device_map="cpu")
        assert gemma_dtype_report(model) == {"gemma": {torch.bfloat16}, "vae": {torch.bfloat16}, "world": {torch.float32}}
        assert {p.device.type for p in model.parameters()} == {"cpu"}
        with torch.no_grad():
            outputs.append(model(**saved["inputs"]).logits)
    reference = TheWorld.from_pretrained(str(saved["root"] / "partial"), dtype=torch.bfloat16, device_map="cpu")
    with torch.no_grad():
        expected = reference(**saved["inputs"]).logits
    assert all(torch.equal(o, expected) for o in outputs)


# ----------------------------------------------------------------------------------------------------------------------
# Remote code in a clean environment
# ----------------------------------------------------------------------------------------------------------------------
REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    assert importlib.util.find_spec("theworld") is None, "theworld must not be importable in the clean environment"
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
    torch.set_num_threads(2)
    root, out = sys.argv[1], sys.argv[2]
    spec = json.load(open(root + "/spec.json"))
    images = [Image.open(p).convert("RGB") for p in spec["images"]]
    convs = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": t}]}]
             for im, t in zip(images, spec["prompts"])]
    result, report = {}, {}

    def run(tag, model, processor):
        inputs = processor.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt", padding=True)
        with torch.no_grad():
            result[tag + ".logits"] = model(**inputs).logits.float().contiguous()
            result[tag + ".tokens"] = model.generate(**inputs, max_new_tokens=6, do_sample=False).contiguous()
        for k, v in inputs.items():
            result[tag + ".in." + k] = v.contiguous()
        report[tag] = {
            "class": type(model).__module__ + "." + type(model).__name__,
            "processor": type(processor).__module__ + "." + type(processor).__name__,
            "dtypes": sorted({n.split(".")[0] + ":" + str(p.dtype) for n, p in model.named_parameters()}),
            "devices": sorted({p.device.type for p in model.parameters()}),
        }

    for kind in ("partial", "full"):
        path = root + "/" + kind
        model = AutoModel.from_pretrained(path, trust_remote_code=True)
        run(kind, model, AutoProcessor.from_pretrained(path, trust_remote_code=True))
    path = root + "/partial"
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True, dtype=torch.bfloat16,
                                                        device_map="cpu")
    run("bf16", model, AutoProcessor.from_pretrained(path, trust_remote_code=True))
    if spec.get("repo_id"):
        repo = spec["repo_id"]
        model = AutoModel.from_pretrained(repo, trust_remote_code=True, revision=spec["revision"])
        run("hub", model, AutoProcessor.from_pretrained(repo, trust_remote_code=True, revision=spec["revision"]))
    save_file(result, out)
    print("REPORT " + json.dumps(report))
    """
)


def test_remote_code_in_clean_env_reproduces_bit_for_bit(saved, clean_python, sample_images, tmp_path):
    from test_hub import commit_id, lay_out_repo

    root = saved["root"]
    paths = []
    for i, image in enumerate(sample_images):
        paths.append(str(root / f"image{i}.png"))
        image.save(paths[-1])
    # The same checkpoint also as a hub repo (real cache layout, offline), loaded by repo id and revision.
    cache = tmp_path / "hub"
    revision = commit_id("auto-remote")
    lay_out_repo(str(cache), "someone/theworld-remote", {"": str(root / "partial")}, revision)
    from test_checkpoint import PROMPTS

    with open(root / "spec.json", "w") as f:
        json.dump({"images": paths, "prompts": PROMPTS, "repo_id": "someone/theworld-remote", "revision": revision}, f)
    bf16 = TheWorld.from_pretrained(str(root / "partial"), dtype=torch.bfloat16, device_map="cpu")
    bf16_logits, bf16_tokens = logits_and_tokens(bf16, saved["inputs"])

    out = str(tmp_path / "remote.safetensors")
    proc = run_clean(
        clean_python,
        REMOTE_SCRIPT,
        str(root),
        out,
        env_extra={"HF_HUB_CACHE": str(cache), "HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    got = load_file(out)
    for tag in ("partial", "full", "bf16", "hub"):
        # the checkpoint's own code, not an installed theworld
        assert report[tag]["class"].startswith("transformers_modules.") and report[tag]["class"].endswith(
            "modeling_theworld.TheWorld"
        ), report[tag]
        assert report[tag]["processor"].endswith("processing_theworld.TheWorldProcessor")
        assert report[tag]["devices"] == ["cpu"]
        for key, value in saved["inputs"].items():
            assert torch.equal(got[f"{tag}.in.{key}"], value), (tag, key)
    for tag in ("partial", "full", "hub"):
        assert torch.equal(got[f"{tag}.logits"], saved["logits"]), tag
        assert torch.equal(got[f"{tag}.tokens"], saved["tokens"]), tag
    assert torch.equal(got["bf16.logits"], bf16_logits.float())
    assert torch.equal(got["bf16.tokens"], bf16_tokens)
    assert report["bf16"]["dtypes"] == [
        "cosmos_vae:torch.bfloat16",
        "model:torch.bfloat16",  # lm_head is tied to model.language_model.embed_tokens
        "world_boundary_embeddings:torch.float32",
        "world_projector:torch.float32",
    ]


NO_DIFFUSERS_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    assert importlib.util.find_spec("theworld") is None and importlib.util.find_spec("diffusers") is None
    import torch
    from transformers import AutoModel
    world, gemma_only = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(gemma_only, trust_remote_code=True)
    ids = torch.tensor([[2, 40, 41, 42]])
    with torch.no_grad():
        print("GEMMA_ONLY_OK", tuple(model(input_ids=ids).logits.shape))
    try:
        AutoModel.from_pretrained(world, trust_remote_code=True)
    except Exception as err:
        print("ERROR " + type(err).__name__ + ": " + str(err))
    else:
        print("LOADED")
    """
)


def test_world_checkpoint_without_diffusers_says_pip_install_diffusers(saved, world_model_factory, tmp_path):
    python = make_clean_venv(str(tmp_path / "nodiffusers"), [p for p in CLEAN_ENV_PACKAGES if p != "diffusers"])
    gemma_only = tmp_path / "gemma_only"
    world_model_factory(enable_world=False).save_pretrained(gemma_only)
    proc = run_clean(
        python,
        NO_DIFFUSERS_SCRIPT,
        str(saved["root"] / "partial"),
        str(gemma_only),
        env_extra={"HF_MODULES_CACHE": str(tmp_path / "modules")},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "GEMMA_ONLY_OK" in proc.stdout  # an enable_world=False checkpoint needs no diffusers
    assert "LOADED" not in proc.stdout
    error = proc.stdout.split("ERROR ", 1)[1]
    assert "pip install diffusers" in error, error
    assert error.startswith("ImportError"), error

