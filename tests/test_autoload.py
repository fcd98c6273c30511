"""Loading through transformers' Auto classes (issue 8).

In-process, after ``import theworld`` (no ``trust_remote_code``): ``AutoConfig``, ``AutoProcessor``, ``AutoModel``,
``AutoModelForImageTextToText`` and ``AutoModelForCausalLM`` give TheWorld's installed classes.

Remote code, in a *clean environment*: a real ``python -m venv`` whose site-packages holds only torch, transformers,
huggingface_hub, safetensors and pillow plus their own dependencies (resolved from their installed metadata),
symlinked from the current environment: neither diffusers nor theworld (nor its editable-install finder) is there, so
``AutoModel.from_pretrained(dir, trust_remote_code=True)`` can only run the code files shipped in the checkpoint, and a
world checkpoint with ``num_world_steps=0`` must not need diffusers. Building it takes about a second, where ``pip
install`` of the same packages takes over a minute (``THEWORLD_CLEAN_ENV=pip`` builds it with pip instead, e.g. for a
release check).
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
from test_checkpoint import PROMPTS, assert_same_inputs, logits_and_tokens, model_inputs, perturb
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from theworld import TheWorld, TheWorldConfig, TheWorldProcessor

CLEAN_ENV_PACKAGES = ("torch", "transformers", "huggingface_hub", "safetensors", "pillow")


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
    return subprocess.run([python, "-c", script, *args], capture_output=True, text=True, env=env, timeout=600)


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
    logits, tokens = logits_and_tokens(model, inputs, new_tokens=4)
    return {"root": root, "model": model, "inputs": inputs, "logits": logits, "tokens": tokens}


def test_auto_classes_after_import_theworld(saved, sample_images):
    folder = str(saved["root"] / "partial")
    assert type(AutoConfig.from_pretrained(folder)) is TheWorldConfig
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor) is TheWorldProcessor
    assert_same_inputs(model_inputs(processor, sample_images), saved["inputs"])
    for auto, kind in ((AutoModel, "partial"), (AutoModelForImageTextToText, "full"), (AutoModelForCausalLM, "full")):
        model = auto.from_pretrained(str(saved["root"] / kind))
        assert type(model) is TheWorld  # the installed class, no remote code
        logits, tokens = logits_and_tokens(model, saved["inputs"], new_tokens=4 if auto is AutoModel else 0)
        assert torch.equal(logits, saved["logits"]), (auto.__name__, kind)
        assert tokens is None or torch.equal(tokens, saved["tokens"]), (auto.__name__, kind)


# ----------------------------------------------------------------------------------------------------------------------
# Remote code in a clean environment (no theworld, no diffusers)
# ----------------------------------------------------------------------------------------------------------------------
REMOTE_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    assert importlib.util.find_spec("theworld") is None, "theworld must not be importable in the clean environment"
    assert importlib.util.find_spec("diffusers") is None, "diffusers must not be importable in the clean environment"
    import torch
    from PIL import Image
    from safetensors.torch import save_file
    from transformers import AutoModel, AutoProcessor
    torch.set_num_threads(2)
    root, out = sys.argv[1], sys.argv[2]
    spec = json.load(open(root + "/spec.json"))
    images = [Image.open(p).convert("RGB") for p in spec["images"]]
    convs = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": t}]}]
             for im, t in zip(images, spec["prompts"])]
    result, report = {}, {}
    for tag in ("partial", "full"):
        model = AutoModel.from_pretrained(root + "/" + tag, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(root + "/" + tag, trust_remote_code=True)
        inputs = processor.apply_chat_template(convs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt", padding=True)
        with torch.no_grad():
            rest = dict(inputs)
            rest["world_latents"] = model.model.encode_world(rest.pop("world_pixel_values"))
            result[tag + ".logits"] = model(**rest).logits.contiguous()
            result[tag + ".tokens"] = model.generate(**rest, max_new_tokens=4, do_sample=False).contiguous()
        for k, v in inputs.items():
            result[tag + ".in." + k] = v.contiguous()
        report[tag] = {"class": type(model).__module__ + "." + type(model).__name__,
                       "processor": type(processor).__module__ + "." + type(processor).__name__}
    save_file(result, out)
    print("REPORT " + json.dumps(report))
    """
)


def test_remote_code_in_clean_env_without_diffusers_reproduces_bit_for_bit(saved, sample_images, tmp_path):
    python = make_clean_venv(str(tmp_path / "venv"))
    root = saved["root"]
    paths = []
    for i, image in enumerate(sample_images):
        paths.append(str(root / f"image{i}.png"))
        image.save(paths[-1])
    (root / "spec.json").write_text(json.dumps({"images": paths, "prompts": PROMPTS}))
    out = str(tmp_path / "remote.safetensors")
    proc = run_clean(python, REMOTE_SCRIPT, str(root), out, env_extra={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    got = load_file(out)
    for tag in ("partial", "full"):
        # the checkpoint's own code, not an installed theworld
        assert report[tag]["class"].startswith("transformers_modules.") and report[tag]["class"].endswith(
            "modeling_theworld.TheWorldForConditionalGeneration"
        ), report[tag]
        assert report[tag]["processor"].endswith("processing_theworld.TheWorldProcessor")
        for key, value in saved["inputs"].items():
            assert torch.equal(got[f"{tag}.in.{key}"], value), (tag, key)
        assert torch.equal(got[f"{tag}.logits"], saved["logits"]), tag
        assert torch.equal(got[f"{tag}.tokens"], saved["tokens"]), tag
