"""``theworld plan`` and `theworld.planning.plan`: offline resolution of the bases, the command line, and the plan's
numbers against the real processor, the real model and a real saved checkpoint on the tiny-real bases."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import conversations
from PIL import Image

from theworld.checkpoint_theworld import parameter_counts
from theworld.cli import main
from theworld.planning import BaseNotFoundError, plan
from theworld.processing_theworld import world_tokens_outside_window

REQUIRED_KEYS = {
    "world_tokens", "sequence_length", "world_tokens_outside_window", "trainable_parameters", "total_parameters",
    "train_memory_per_sample_gb", "partial_checkpoint_bytes",
}  # fmt: skip
QUESTIONS = ("Left?", "Is the red circle left of the blue square?", "Describe the scene. " * 6)


@pytest.fixture(scope="module")
def empty_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("empty-hub-cache"))


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["plan", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _prompt(processor, image, question: str, placement: str):
    processor.world_placement = placement
    return processor.apply_chat_template(
        conversations([image], [question]), add_generation_prompt=True, tokenize=True, return_dict=True
    )


# ----------------------------------------------------------------------------------------------------------------------
# The acceptance commands, offline
# ----------------------------------------------------------------------------------------------------------------------
def test_cli_default_plan_offline_with_an_empty_hf_home(tmp_path):
    """``theworld plan --gemma google/gemma-3-4b-it --cosmos nvidia/Cosmos-Predict2-2B-Video2World --json``."""
    home = tmp_path / "hf-home"
    home.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(home))
    env.pop("HF_HUB_CACHE", None)
    command = [sys.executable, "-m", "theworld.cli", "plan", "--gemma", "google/gemma-3-4b-it", "--cosmos",
               "nvidia/Cosmos-Predict2-2B-Video2World", "--json"]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert REQUIRED_KEYS <= set(result)
    assert result["world_tokens_outside_window"] == 0
    assert 4.2e9 <= result["total_parameters"] <= 4.5e9
    assert result["world_tokens"] == 256 and result["trainable_parameters"] == 6_604_800
    assert result["gemma"]["resolved_from"] == result["cosmos"]["resolved_from"] == "shipped config"
    assert list(home.rglob("*")) == []  # nothing fetched, nothing cached


def test_cli_4096_setting(capsys, empty_cache):
    code, out, err = _cli(
        capsys, "--gemma", "google/gemma-3-4b-it", "--cosmos", "nvidia/Cosmos-Predict2-2B-Video2World",
        "--world-image-size", "512", "--world-pooling", "1", "--world-projection-mode", "spatial", "--json",
        "--cache-dir", empty_cache,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["world_tokens"] == 4096
    assert result["world_tokens_outside_window"] > 3000
    assert result["settings"]["world_pooling"] == 1


def test_cli_table(capsys, empty_cache):
    code, out, err = _cli(capsys, "--cache-dir", empty_cache, "--batch-size", "2", "--prompt-tokens", "100")
    assert code == 0, err
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.splitlines())
    assert rows["world tokens"] == "256 (256 x 1 frame(s))"
    assert rows["attention layers"] == "29 sliding_attention, 5 full_attention; sliding window 1024"
    assert rows["world tokens outside window"].startswith("0 of 256 (farthest at distance 362")
    assert rows["total parameters"] == "4,359,727,664 (4.360 B)"
    assert rows["world_encoder"].endswith("[float32]") and rows["language_model"].endswith("[bfloat16]")
    assert rows["train memory at batch 2"].endswith("GB (estimate)")
    assert rows["sequence length"].startswith("626 (")  # 256 world + 2 markers + 100 question + 268 template/image


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------
def test_cli_errors_are_one_line_and_exit_2(capsys, tmp_path, tiny_real_bases, empty_cache):
    code, out, err = _cli(capsys, "--gemma", "nobody/no-such-model", "--cache-dir", empty_cache)
    assert code == 2 and out == ""
    assert err.startswith("error: Cannot find the Gemma 3 config of 'nobody/no-such-model'")
    assert "plan never downloads" in err and "hf download nobody/no-such-model config.json" in err

    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _cli(capsys, "--gemma", str(empty))
    assert code == 2 and f"The Gemma 3 folder {empty} has no config.json" in err

    code, _, err = _cli(capsys, "--gemma", tiny_real_bases.cosmos + "/vae")
    assert code == 2 and "plan takes a Gemma 3 vision-language model" in err

    cosmos = tmp_path / "cosmos-vae-only"
    shutil.copytree(tiny_real_bases.cosmos, cosmos, ignore=shutil.ignore_patterns("transformer", "scheduler"))
    args = ("--gemma", tiny_real_bases.gemma, "--cosmos", str(cosmos), "--world-image-size", "64")
    assert _cli(capsys, *args)[0] == 0  # k = 0 needs only the VAE config
    code, _, err = _cli(capsys, *args, "--num-world-steps", "1")
    assert code == 2 and "has no transformer/config.json, scheduler/scheduler_config.json" in err

    code, _, err = _cli(capsys, "--world-pooling", "3", "--cache-dir", empty_cache)
    assert code == 2 and "world_image_size=512 must be divisible" in err and "world_pooling (3)" in err
    code, _, err = _cli(capsys, "--num-world-steps", "17", "--cache-dir", empty_cache)
    assert code == 2 and "num_world_steps must lie in [0, max_world_steps=16]" in err
    with pytest.raises(ValueError, match="prompt_tokens must be an int >= 0"):
        plan(prompt_tokens=-1, cache_dir=empty_cache)
    with pytest.raises(ValueError, match="attn_implementation must be 'sdpa' or 'eager'"):
        plan(attn_implementation="flash", cache_dir=empty_cache)


# ----------------------------------------------------------------------------------------------------------------------
# Resolution order: local folder, hub cache, shipped config
# ----------------------------------------------------------------------------------------------------------------------
def _lay_out(cache, repo_id: str, folder: str, commit: str) -> None:
    """A repo snapshot in the hub cache layout (files copied; refs/main points at it)."""
    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, os.path.join(repo, "snapshots", commit))
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(commit)


def test_hub_cache_comes_before_the_shipped_config(tmp_path, tiny_real_bases, empty_cache):
    cache = tmp_path / "hub"
    commit = "a" * 40
    # a hub cache that holds (tiny) copies under the real repo ids
    _lay_out(cache, "google/gemma-3-4b-it", tiny_real_bases.gemma, commit)
    _lay_out(cache, "nvidia/Cosmos-Predict2-2B-Video2World", tiny_real_bases.cosmos, commit)
    cached = plan(world_image_size=64, world_pooling=1, cache_dir=str(cache))
    assert cached["gemma"]["resolved_from"] == cached["cosmos"]["resolved_from"] == "hub cache"
    assert cached["gemma"]["location"] == str(cache / "models--google--gemma-3-4b-it" / "snapshots" / commit)
    assert cached["layout"]["source"].startswith("measured with the processor of google/gemma-3-4b-it")
    local = plan(tiny_real_bases.gemma, tiny_real_bases.cosmos, world_image_size=64, world_pooling=1)
    assert local["gemma"]["resolved_from"] == "local folder"
    assert cached["total_parameters"] == local["total_parameters"] < 10**7
    assert cached["sequence_length"] == local["sequence_length"]
    shipped = plan(world_image_size=64, world_pooling=1, cache_dir=empty_cache)
    assert shipped["gemma"]["resolved_from"] == "shipped config" and shipped["total_parameters"] > 4e9
    # a hub cache with only part of what is needed is an error, not a silent fallback to the shipped config
    partial = tmp_path / "partial-hub"
    vae_only = tmp_path / "vae-only"
    shutil.copytree(tiny_real_bases.cosmos, vae_only, ignore=shutil.ignore_patterns("transformer", "scheduler"))
    _lay_out(partial, "nvidia/Cosmos-Predict2-2B-Video2World", str(vae_only), commit)
    with pytest.raises(BaseNotFoundError, match="hub cache holds only part"):
        plan(num_world_steps=1, cache_dir=str(partial))


# ----------------------------------------------------------------------------------------------------------------------
# The plan against the real processor, model and checkpoint (tiny-real bases)
# ----------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_real_model(real_world_model_factory):
    return real_world_model_factory()  # 64 px world image, pooling 1: 64 world tokens, sliding window 32


@pytest.mark.parametrize("placement", ["after_image", "after_bos"])
def test_sequence_length_and_reach_match_the_processor(tiny_real_bases, tiny_real_model, placement):
    processor = tiny_real_model.processor
    window = tiny_real_model.config.text_config.sliding_window
    image = Image.new("RGB", (80, 64), (255, 255, 255))
    previous = processor.world_placement
    try:
        for question in QUESTIONS:
            ids = _prompt(processor, image, question, placement)["input_ids"][0]
            n_text = len(processor.tokenizer(question.strip(), add_special_tokens=False)["input_ids"])
            result = plan(tiny_real_bases.gemma, tiny_real_bases.cosmos, world_image_size=64, world_pooling=1,
                          world_placement=placement, prompt_tokens=n_text)  # fmt: skip
            assert result["sequence_length"] == len(ids), question
            expected = world_tokens_outside_window(ids, tiny_real_model.config.world_token_id, window)
            assert result["world_tokens_outside_window"] == expected, question
    finally:
        processor.world_placement = previous
    # the window (32) is shorter than these prompts: world tokens do fall outside, more so after <bos>
    assert expected > 0


def test_counts_and_checkpoint_size_match_the_model(tiny_real_bases, tiny_real_model, real_world_model_factory,
                                                    tmp_path):  # fmt: skip
    result = plan(tiny_real_bases.gemma, tiny_real_bases.cosmos, world_image_size=64, world_pooling=1, dtype="float32")
    assert (result["trainable_parameters"], result["total_parameters"]) == parameter_counts(tiny_real_model)
    assert result["world_token_ids"] == list(tiny_real_model.config.world_token_ids)
    assert result["world_token_ids_in_embedding"] is True
    tiny_real_model.save_pretrained(tmp_path / "partial")
    assert result["partial_checkpoint_bytes"] == (tmp_path / "partial" / "model.safetensors").stat().st_size

    # other freeze flags and a rollout step: the plan follows the model
    unfrozen = plan(tiny_real_bases.gemma, tiny_real_bases.cosmos, world_image_size=64, world_pooling=1,
                    dtype="float32", freeze_gemma_language=False, num_world_steps=1)  # fmt: skip
    model = real_world_model_factory(freeze_gemma_language=False, num_world_steps=1, rollout_num_inference_steps=2)
    assert (unfrozen["trainable_parameters"], unfrozen["total_parameters"]) == parameter_counts(model)
    assert unfrozen["world_tokens"] == model.config.num_world_tokens == 128
    model.save_pretrained(tmp_path / "rollout")
    assert unfrozen["partial_checkpoint_bytes"] == (tmp_path / "rollout" / "model.safetensors").stat().st_size
    # the estimate's fixed part: weights + gradients + AdamW for what trains
    trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    fixed = unfrozen["memory_breakdown_bytes"]["fixed"]
    assert fixed["gradients"] == trainable_bytes  # parameters() yields the tied lm_head once
    assert fixed["optimizer_adamw"] == 2 * fixed["gradients"]
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert fixed["weights"] == weights + sum(b.numel() * b.element_size() for b in model.buffers())
