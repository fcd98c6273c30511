"""LoRA on Gemma's language model through PEFT (issue 11): PEFT's own ``inject_adapter_in_model`` on TheWorld, the
adapter saved inside partial and full checkpoints at the byte floor, reloaded bit for bit through
``TheWorld.from_pretrained``, ``AutoModel`` (in-process, from a hub repo, and as remote code in a clean environment with
peft but without theworld), strict adapter loading, the error without peft, ``theworld export --merge-lora``, and
transformers' ``add_adapter`` where the installed peft allows it (and its refusal, naming the peft it needs, where it
does not). Tiny real models, real peft; no mocks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap

import peft
import pytest
import torch
from packaging.version import Version
from peft import LoraConfig, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_autoload import CLEAN_ENV_PACKAGES, make_clean_venv, run_clean
from test_checkpoint import header_length, logits_and_tokens, model_inputs, perturb, saved_keys
from test_hub import commit_id, lay_out_repo
from transformers import AutoModel
from transformers.integrations.peft import MIN_PEFT_VERSION

from theworld import TheWorld
from theworld.checkpoint_theworld import (
    ADAPTER_FILE,
    DIGEST_KEY,
    adapter_layers,
    adapter_tensors,
    apply_freeze_flags,
    merge_adapters,
    tensors_digest,
    trainable_state_dict,
    write_safetensors,
)

#: The README's regex: q_proj / v_proj of Gemma's language model only (SigLIP's own q_proj / v_proj and the world
#: encoder stay out: PEFT matches a string target against whole module names).
LM_TARGETS = r".*language_model.*\.(q_proj|v_proj)"
WORLD = ("model.world_projector.", "model.world_boundary_embeddings.")


def randomize_lora_b(model, seed: int) -> None:
    """PEFT starts ``lora_B`` at zero (the adapter is a no-op); random values make it change the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def rewrite_weights(folder, edit) -> None:
    """Rewrite ``model.safetensors`` of a partial checkpoint through ``edit(tensors) -> tensors``, with a consistent
    sha256 (so that the adapter checks, not the corruption check, judge the result)."""
    path = os.path.join(folder, "model.safetensors")
    with safe_open(path, "pt") as f:
        metadata = dict(f.metadata())
    tensors = edit(load_file(path))
    metadata[DIGEST_KEY] = tensors_digest(tensors)
    write_safetensors(tensors, path, metadata)


@pytest.fixture(scope="module")
def adapted(world_model_factory, sample_images, tmp_path_factory):
    """A trained-looking TheWorld with a LoRA adapter on the language model (PEFT's own API), saved partial and full,
    with its reference logits and greedy tokens; and a plain checkpoint (no adapter)."""
    root = tmp_path_factory.mktemp("lora")
    model = perturb(world_model_factory(seed=5), seed=31)
    inputs = model_inputs(model.processor, sample_images)
    model.save_pretrained(root / "plain")
    plain_logits, _ = logits_and_tokens(model, inputs, new_tokens=0)
    model = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=LM_TARGETS), model)
    randomize_lora_b(model, seed=32)
    logits, tokens = logits_and_tokens(model, inputs, new_tokens=4)
    model.save_pretrained(root / "partial")
    model.save_pretrained(root / "full", save_full_model=True, max_shard_size="1MB")
    return {
        "root": root,
        "model": model,
        "inputs": inputs,
        "plain_logits": plain_logits,
        "logits": logits,
        "tokens": tokens,
    }


def assert_reproduces(model, adapted) -> None:
    logits, tokens = logits_and_tokens(model, adapted["inputs"], new_tokens=4)
    assert torch.equal(logits, adapted["logits"])
    assert torch.equal(tokens, adapted["tokens"])


# ----------------------------------------------------------------------------------------------------------------------
# PEFT's own API on TheWorld
# ----------------------------------------------------------------------------------------------------------------------
def test_the_regex_adapts_only_the_language_model(adapted):
    model = adapted["model"]
    layers = adapter_layers(model)
    num_layers = model.config.text_config.num_hidden_layers
    assert sorted(layers) == sorted(
        f"model.language_model.layers.{i}.self_attn.{p}" for i in range(num_layers) for p in ("q_proj", "v_proj")
    )
    # SigLIP has q_proj / v_proj too: the regex keeps it (and the world encoder) out
    assert any(n.startswith("model.vision_tower.") and n.endswith("q_proj") for n, _ in model.named_modules())
    assert not torch.equal(adapted["logits"], adapted["plain_logits"])  # the adapter changes the predictions


def test_partial_checkpoint_holds_adapter_and_projector_at_the_byte_floor(adapted):
    folder, model = adapted["root"] / "partial", adapted["model"]
    names = set(os.listdir(folder))
    assert ADAPTER_FILE in names
    # not PEFT's adapter_config.json: transformers' Auto classes would take a hub repo holding it for a bare adapter
    assert "adapter_config.json" not in names and "adapter_model.safetensors" not in names
    adapter = json.loads((folder / ADAPTER_FILE).read_text())
    assert adapter["format"] == 1 and adapter["adapter_name"] == "default"
    assert adapter["peft_config"]["peft_type"] == "LORA" and adapter["peft_config"]["r"] == 4
    assert adapter["peft_config"]["target_modules"] == LM_TARGETS
    lora = set(adapter_tensors(model))
    assert len(lora) == 4 * model.config.text_config.num_hidden_layers  # lora_A and lora_B of q_proj and v_proj
    saved = set(saved_keys(folder))
    assert saved == set(trainable_state_dict(model))
    assert saved == lora | {k for k in model.state_dict() if k.startswith(WORLD)}
    assert not any(".base_layer." in k for k in saved)  # the frozen base weights stay out
    path = folder / "model.safetensors"
    with safe_open(str(path), "pt") as f:
        for key, value in trainable_state_dict(model).items():
            assert torch.equal(f.get_tensor(key), value.detach()), key
    floor = sum(t.numel() * t.element_size() for t in trainable_state_dict(model).values())
    assert os.path.getsize(path) - header_length(path) == floor  # the tensor bytes are exactly the floor
    assert os.path.getsize(path) <= 1.01 * floor + header_length(path)
    summary = json.loads((folder / "checkpoint_config.json").read_text())["adapter"]
    assert summary["peft_type"] == "LORA" and summary["adapted_modules"] == len(adapter_layers(model))
    assert json.loads((adapted["root"] / "plain" / "checkpoint_config.json").read_text())["adapter"] is None


def test_partial_and_full_reload_bit_for_bit(adapted):
    for kind in ("partial", "full"):
        model = TheWorld.from_pretrained(adapted["root"] / kind)
        assert model.config.checkpoint_kind == kind
        assert sorted(adapter_layers(model)) == sorted(adapter_layers(adapted["model"]))
        assert_reproduces(model, adapted)
        # the adapter and the world projector train, the adapted base layers stay frozen: exactly what a save holds
        trains = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trains == set(trainable_state_dict(model))
        assert not any(".base_layer." in n for n in trains)
    auto = AutoModel.from_pretrained(str(adapted["root"] / "partial"))
    assert type(auto) is TheWorld
    assert_reproduces(auto, adapted)


def test_full_checkpoint_keeps_the_wrapped_base_weights(adapted):
    keys = saved_keys(adapted["root"] / "full")
    assert "model.language_model.layers.0.self_attn.q_proj.base_layer.weight" in keys
    assert "model.language_model.layers.0.self_attn.q_proj.lora_B.default.weight" in keys
    assert len([n for n in os.listdir(adapted["root"] / "full") if n.startswith("model-")]) > 1  # sharded


def test_hub_repo_with_an_adapter_loads_with_automodel(adapted, tmp_path):
    """A checkpoint repo in the hub cache, by id: AutoModel must load the repo itself (with a root
    adapter_config.json transformers would load the base model its config names instead)."""
    cache = str(tmp_path / "hub")
    lay_out_repo(cache, "someone/theworld-lora", {"": str(adapted["root"] / "partial")}, commit_id("lora"))
    model = AutoModel.from_pretrained("someone/theworld-lora", cache_dir=cache)
    assert_reproduces(model, adapted)


def test_freeze_flags_and_saved_tensors_agree_with_a_trained_language_model(world_model_factory, sample_images, tmp_path):
    """PEFT freezes everything but the adapter; `apply_freeze_flags` restores the config's flags (here the language
    model trains as well): the wrapped base layers then train and are saved under their wrapped names."""
    model = world_model_factory(seed=6, freeze_gemma_language=False)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=LM_TARGETS), model)
    assert not any(p.requires_grad for n, p in model.named_parameters() if n.startswith(WORLD))  # PEFT froze them
    apply_freeze_flags(model)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == set(trainable_state_dict(model))
    assert "model.language_model.layers.0.self_attn.q_proj.base_layer.weight" in trains
    assert {n for n in trains if n.startswith(WORLD)} == {n for n in model.state_dict() if n.startswith(WORLD)}
    perturb(model, seed=7)
    inputs = model_inputs(model.processor, sample_images)
    reference = logits_and_tokens(model, inputs, new_tokens=0)[0]
    model.save_pretrained(tmp_path / "ckpt")
    assert "model.language_model.layers.0.self_attn.q_proj.base_layer.weight" in saved_keys(tmp_path / "ckpt")
    again = TheWorld.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(logits_and_tokens(again, inputs, new_tokens=0)[0], reference)


# ----------------------------------------------------------------------------------------------------------------------
# Strict adapter loading and refused saves
# ----------------------------------------------------------------------------------------------------------------------
LORA_B0 = "model.language_model.layers.0.self_attn.q_proj.lora_B.default.weight"


def _drop(tensors):
    del tensors[LORA_B0]
    return tensors


def _extra(tensors):
    tensors["model.language_model.layers.0.self_attn.k_proj.lora_A.default.weight"] = torch.zeros(4, 64)
    return tensors


def _nan(tensors):
    tensors[LORA_B0] = tensors[LORA_B0].clone()
    tensors[LORA_B0][0, 0] = float("nan")
    return tensors


def _integer(tensors):
    tensors[LORA_B0] = tensors[LORA_B0].to(torch.int32)
    return tensors


def _reshaped(tensors):
    tensors[LORA_B0] = torch.zeros(tensors[LORA_B0].shape[0], 3)
    return tensors


@pytest.mark.parametrize(
    "edit, message",
    [
        (_drop, rf"adapter tensors do not match the adapter 'default'.*missing keys \['{LORA_B0}'\]"),
        (_extra, r"adapter tensors do not match.*unexpected keys \['model.language_model.layers.0.self_attn.k_proj.lora_A"),
        (_reshaped, rf"shape mismatches \['{LORA_B0}: checkpoint \(\d+, 3\) vs model \(\d+, 4\)'\]"),
        (_nan, rf"non-finite values \(NaN or Inf\) in \['{LORA_B0}'\]"),
        (_integer, rf"tensor '{LORA_B0}' is stored as I32.*integer or bool dtype"),
    ],
)
def test_adapter_tensors_load_strictly(adapted, tmp_path, edit, message):
    folder = tmp_path / "ckpt"
    shutil.copytree(adapted["root"] / "partial", folder)
    rewrite_weights(folder, edit)
    with pytest.raises(ValueError, match=message):
        TheWorld.from_pretrained(folder)


def test_damaged_adapter_file_is_refused(adapted, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(adapted["root"] / "partial", folder)
    (folder / ADAPTER_FILE).write_text(json.dumps({"peft_config": {"r": 4}}))
    with pytest.raises(ValueError, match=rf"{ADAPTER_FILE} must hold .*damaged or was written by another program"):
        TheWorld.from_pretrained(folder)
    (folder / ADAPTER_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=rf"{ADAPTER_FILE} is not valid json"):
        TheWorld.from_pretrained(folder)


def test_saves_refuse_two_adapters_and_auxiliary_modules(world_model_factory, tmp_path):
    model = world_model_factory(seed=8)
    inject_adapter_in_model(LoraConfig(r=2, target_modules=LM_TARGETS), model, adapter_name="a")
    with pytest.warns(UserWarning, match="multiple adapters"):
        inject_adapter_in_model(LoraConfig(r=2, target_modules=LM_TARGETS), model, adapter_name="b")
    with pytest.raises(ValueError, match=r"exactly one PEFT adapter .*has 2 adapter config\(s\) \['a', 'b'\]"):
        model.save_pretrained(tmp_path / "two")
    model = world_model_factory(seed=8)
    config = LoraConfig(r=2, target_modules=LM_TARGETS, modules_to_save=["multi_modal_projector"])
    inject_adapter_in_model(config, model)
    with pytest.raises(ValueError, match=r"PEFT auxiliary modules .*modules_to_save.*freeze flags"):
        model.save_pretrained(tmp_path / "aux")
    assert not os.path.exists(tmp_path / "two") and not os.path.exists(tmp_path / "aux")


# ----------------------------------------------------------------------------------------------------------------------
# Merging: theworld export --merge-lora
# ----------------------------------------------------------------------------------------------------------------------
def test_export_merge_lora_writes_a_full_checkpoint_with_the_same_predictions(adapted, tmp_path, capsys):
    from theworld.cli import main

    dest = tmp_path / "merged"
    assert main(["export", str(adapted["root"] / "partial"), str(dest), "--merge-lora"]) == 0
    assert "Wrote a full TheWorld checkpoint" in capsys.readouterr().out
    assert ADAPTER_FILE not in os.listdir(dest)
    keys = saved_keys(dest)
    assert not any("lora_" in k or ".base_layer." in k for k in keys)
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in keys
    model = TheWorld.from_pretrained(dest)
    assert model.config.checkpoint_kind == "full" and not adapter_layers(model)
    logits, tokens = logits_and_tokens(model, adapted["inputs"], new_tokens=4)
    assert torch.equal(tokens, adapted["tokens"])
    torch.testing.assert_close(logits, adapted["logits"], rtol=1e-4, atol=1e-4)
    # the merged weights are what PEFT's merge computes: W + B A * alpha / r
    base = TheWorld.from_pretrained(adapted["root"] / "plain").state_dict()
    lora = adapted["model"].state_dict()
    prefix = "model.language_model.layers.0.self_attn.q_proj"
    delta = lora[f"{prefix}.lora_B.default.weight"] @ lora[f"{prefix}.lora_A.default.weight"] * (8 / 4)
    torch.testing.assert_close(model.state_dict()[f"{prefix}.weight"], base[f"{prefix}.weight"] + delta)
    # a checkpoint without an adapter has nothing to merge
    assert main(["export", str(adapted["root"] / "plain"), str(tmp_path / "x"), "--merge-lora"]) == 2
    assert "holds no LoRA (PEFT) adapter to merge" in capsys.readouterr().err


def test_a_merged_model_saves_only_as_a_full_checkpoint(adapted, tmp_path):
    model = TheWorld.from_pretrained(adapted["root"] / "partial")
    merged = merge_adapters(model)
    assert len(merged) == 2 * model.config.text_config.num_hidden_layers and not adapter_layers(model)
    with pytest.raises(ValueError, match=r"An adapter was merged into .*save_full_model=True"):
        model.save_pretrained(tmp_path / "partial")
    assert not os.path.exists(tmp_path / "partial")
    with pytest.raises(ValueError, match="no PEFT adapter to merge"):
        merge_adapters(model)


# ----------------------------------------------------------------------------------------------------------------------
# Remote code: a clean environment with peft (no theworld), and one without peft
# ----------------------------------------------------------------------------------------------------------------------
REMOTE_ADAPTER_SCRIPT = textwrap.dedent(
    """
    import importlib.util, json, sys
    assert importlib.util.find_spec("theworld") is None, "theworld must not be importable in the clean environment"
    assert importlib.util.find_spec("peft") is not None
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel
    torch.set_num_threads(2)
    root, out = sys.argv[1], sys.argv[2]
    inputs = load_file(root + "/inputs.safetensors")
    plain = AutoModel.from_pretrained(root + "/plain", trust_remote_code=True)
    report = {"peft_after_plain": "peft" in sys.modules}
    model = AutoModel.from_pretrained(root + "/partial", trust_remote_code=True)
    report["peft_after_adapter"] = "peft" in sys.modules
    report["class"] = type(model).__module__ + "." + type(model).__name__
    report["lora_layers"] = sum(1 for _, m in model.named_modules() if hasattr(type(m), "adapter_layer_names"))
    with torch.no_grad():
        rest = dict(inputs)
        rest["world_latents"] = model.model.encode_world(rest.pop("world_pixel_values"))
        logits = model(**rest).logits.contiguous()
        tokens = model.generate(**rest, max_new_tokens=4, do_sample=False).contiguous()
    save_file({"logits": logits, "tokens": tokens}, out)
    print("REPORT " + json.dumps(report))
    """
)

NO_PEFT_SCRIPT = textwrap.dedent(
    """
    import importlib.util, sys
    assert importlib.util.find_spec("peft") is None, "peft must not be importable here"
    from transformers import AutoModel
    AutoModel.from_pretrained(sys.argv[1] + "/plain", trust_remote_code=True)  # no adapter: no peft needed
    try:
        AutoModel.from_pretrained(sys.argv[1] + "/partial", trust_remote_code=True)
    except ImportError as err:
        print("IMPORT_ERROR " + str(err))
    """
)


def test_remote_code_with_peft_reproduces_the_adapter_bit_for_bit(adapted, tmp_path):
    python = make_clean_venv(str(tmp_path / "venv"), packages=(*CLEAN_ENV_PACKAGES, "peft"))
    root = adapted["root"]
    save_file({k: v.contiguous() for k, v in adapted["inputs"].items()}, str(root / "inputs.safetensors"))
    out = str(tmp_path / "remote.safetensors")
    proc = run_clean(
        python, REMOTE_ADAPTER_SCRIPT, str(root), out, env_extra={"HF_MODULES_CACHE": str(tmp_path / "modules")}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.split("REPORT ", 1)[1])
    assert report["class"].startswith("transformers_modules.") and report["class"].endswith(
        "modeling_theworld.TheWorldForConditionalGeneration"
    )
    assert report["peft_after_plain"] is False and report["peft_after_adapter"] is True  # peft only for an adapter
    assert report["lora_layers"] == len(adapter_layers(adapted["model"]))
    got = load_file(out)
    assert torch.equal(got["logits"], adapted["logits"])
    assert torch.equal(got["tokens"], adapted["tokens"])


def test_remote_code_without_peft_says_how_to_install_it(adapted, tmp_path):
    python = make_clean_venv(str(tmp_path / "venv"))
    proc = run_clean(
        python, NO_PEFT_SCRIPT, str(adapted["root"]), env_extra={"HF_MODULES_CACHE": str(tmp_path / "modules")}
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    message = proc.stdout.split("IMPORT_ERROR ", 1)[1]
    assert f"holds a PEFT adapter ({ADAPTER_FILE})" in message
    assert "pip install peft (or pip install 'theworld[peft]')" in message and "--merge-lora" in message


# ----------------------------------------------------------------------------------------------------------------------
# transformers' add_adapter
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(
    Version(peft.__version__) < Version(MIN_PEFT_VERSION),
    reason=f"transformers' add_adapter needs peft >= {MIN_PEFT_VERSION} (transformers.integrations.peft."
    f"MIN_PEFT_VERSION); peft {peft.__version__} is installed. PEFT's own inject_adapter_in_model is tested above.",
)
def test_transformers_add_adapter_round_trip(world_model_factory, sample_images, tmp_path):
    model = perturb(world_model_factory(seed=9), seed=10)
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=LM_TARGETS))
    apply_freeze_flags(model)
    randomize_lora_b(model, seed=11)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(trainable_state_dict(model))
    inputs = model_inputs(model.processor, sample_images)
    logits, tokens = logits_and_tokens(model, inputs, new_tokens=4)
    for kind, full in (("partial", False), ("full", True)):
        model.save_pretrained(tmp_path / kind, save_full_model=full)
        again = TheWorld.from_pretrained(tmp_path / kind)
        got = logits_and_tokens(again, inputs, new_tokens=4)
        assert torch.equal(got[0], logits) and torch.equal(got[1], tokens), kind


@pytest.mark.skipif(
    Version(peft.__version__) >= Version(MIN_PEFT_VERSION),
    reason=f"peft {peft.__version__} meets transformers' add_adapter minimum ({MIN_PEFT_VERSION}): the round trip "
    "above runs instead.",
)
def test_transformers_add_adapter_names_the_peft_version_it_needs(world_model_factory, sample_images, tmp_path):
    """The complement of the round trip: with a peft older than transformers' minimum, ``add_adapter`` refuses with the
    version it needs and leaves the model as it was (PEFT's own ``inject_adapter_in_model`` still works)."""
    model = world_model_factory(seed=9)
    inputs = model_inputs(model.processor, sample_images)
    before = logits_and_tokens(model, inputs, new_tokens=0)[0]
    with pytest.raises(ValueError, match=rf"version of PEFT .* not compatible, please use a version >= "
                                         rf"{re.escape(MIN_PEFT_VERSION)}"):
        model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=LM_TARGETS))
    assert not adapter_layers(model) and not getattr(model, "peft_config", None)
    assert torch.equal(logits_and_tokens(model, inputs, new_tokens=0)[0], before)
    model.save_pretrained(tmp_path / "plain")
    assert ADAPTER_FILE not in os.listdir(tmp_path / "plain")
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=LM_TARGETS), model)
    assert len(adapter_layers(model)) == 2 * model.config.text_config.num_hidden_layers
