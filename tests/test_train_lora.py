"""``theworld train`` with a ``lora:`` section (issue 11): a LoRA adapter on Gemma's frozen language model trains with
the world projector; the checkpoints hold exactly the adapter and the projector and reload with the trained logits;
resume restores the adapter exactly; ``theworld export --merge-lora`` folds it in; bad ``lora:`` sections end the
command with ``error: ...`` and exit status 2. Tiny real models, real peft; no mocks.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_checkpoint import logits_and_tokens, model_inputs
from test_cli import error_line

from theworld import TheWorld
from theworld.checkpoint_theworld import ADAPTER_FILE, adapter_layers, adapter_tensors, trainable_state_dict
from theworld.cli import main
from theworld.training import DEFAULT_LORA_TARGETS, Trainer, add_lora, load_train_config

REPO = Path(__file__).resolve().parents[1]
WORLD = ("model.world_projector.", "model.world_boundary_embeddings.")
STEPS = 6


@pytest.fixture(scope="module")
def lora_run(tiny_bases, tmp_path_factory):
    """A ``lora:`` config (rank 4, alpha 8, dropout 0.1, the default targets) trained for 6 steps of 2 x 2 examples,
    checkpoints every 3 steps, by the `Trainer` ``theworld train`` runs (kept here for its trained model)."""
    from theworld.data import generate_synthetic_vsr

    root = tmp_path_factory.mktemp("lora_train")
    paths = generate_synthetic_vsr(
        root / "data", num_train=8, num_val=0, num_test=0, relations=("left of", "above"), seed=1
    )
    cfg = {
        "output_dir": str(root / "run"),
        "gemma_model_name": tiny_bases.gemma,
        "cosmos_model_name": tiny_bases.cosmos,
        "world_image_size": 64,
        "train_file": paths["train"],
        "max_steps": STEPS,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "save_steps": 3,
        "progress_bar": False,
        "lora": {"r": 4, "alpha": 8, "dropout": 0.1},
    }
    path = root / "lora.yaml"
    path.write_text(yaml.safe_dump(cfg))
    trainer = Trainer(load_train_config(path))
    summary = trainer.train()
    return {"config": path, "out": root / "run", "trainer": trainer, "model": trainer.model, "summary": summary}


def test_the_checkpoints_hold_the_adapter_and_the_projector_only(lora_run):
    model, out = lora_run["model"], lora_run["out"]
    num_layers = model.config.text_config.num_hidden_layers
    assert sorted(adapter_layers(model)) == sorted(
        f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in range(num_layers) for p in "qkvo"
    )
    lora = set(adapter_tensors(model))
    assert len(lora) == 2 * 4 * num_layers  # lora_A and lora_B of four projections per layer
    assert lora_run["summary"]["lora"] == {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": DEFAULT_LORA_TARGETS}
    for folder in (out / "checkpoint-3", out / "checkpoint-6", out / "final"):
        assert json.loads((folder / "config.json").read_text())["checkpoint_kind"] == "partial"
        adapter = json.loads((folder / ADAPTER_FILE).read_text())["peft_config"]
        assert (adapter["peft_type"], adapter["r"], adapter["lora_alpha"]) == ("LORA", 4, 8)
        assert adapter["lora_dropout"] == 0.1
        assert adapter["target_modules"] == DEFAULT_LORA_TARGETS
        saved = load_file(folder / "model.safetensors")
        assert set(saved) == lora | {k for k in model.state_dict() if k.startswith(WORLD)}, folder.name
    final = load_file(out / "final" / "model.safetensors")
    for key, value in trainable_state_dict(model).items():
        assert torch.equal(final[key], value), key


def test_the_adapter_trains_and_the_loss_falls(lora_run):
    final = load_file(lora_run["out"] / "final" / "model.safetensors")
    lora_b = [k for k in final if ".lora_B." in k]
    assert lora_b and all(final[k].abs().max() > 0 for k in lora_b)  # PEFT starts lora_B at zero
    records = [json.loads(line) for line in (lora_run["out"] / "metrics.jsonl").read_text().splitlines()]
    loss = [r["loss"] for r in records if r["type"] == "train"]
    assert len(loss) == STEPS
    assert sum(loss[-2:]) / 2 < sum(loss[:2]) / 2 - 0.15, loss


def test_the_final_checkpoint_reloads_with_the_trained_logits(lora_run, sample_images):
    model = lora_run["model"].eval()
    inputs = model_inputs(model.processor, sample_images)
    reloaded = TheWorld.from_pretrained(lora_run["out"] / "final")
    assert sorted(adapter_layers(reloaded)) == sorted(adapter_layers(model))
    assert torch.equal(logits_and_tokens(reloaded, inputs, 0)[0], logits_and_tokens(model, inputs, 0)[0])


def test_resume_restores_the_adapter_exactly(lora_run, tmp_path, capsys):
    """6 steps straight == `theworld train` resumed from checkpoint-3 for 3 more (dropout on): bit-identical adapter,
    projector and optimizer state."""
    out = tmp_path / "resumed"
    rc = main(["train", "--config", str(lora_run["config"]), "--set", f"output_dir={out}",
               "--set", f"resume_from={lora_run['out'] / 'checkpoint-3'}"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    assert f"trained {STEPS} steps" in capsys.readouterr().out
    straight = load_file(lora_run["out"] / "final" / "model.safetensors")
    resumed = load_file(out / "final" / "model.safetensors")
    assert straight.keys() == resumed.keys() and any(".lora_A." in k for k in straight)
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    a = load_file(lora_run["out"] / "checkpoint-6" / "training_state" / "optimizer.safetensors")
    b = load_file(out / "checkpoint-6" / "training_state" / "optimizer.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_merge_lora_of_a_trained_run(lora_run, sample_images, tmp_path, capsys):
    dest = tmp_path / "merged"
    assert main(["export", str(lora_run["out"] / "final"), str(dest), "--merge-lora"]) == 0
    assert "LoRA merged into 8 modules" in capsys.readouterr().out
    merged = TheWorld.from_pretrained(dest)
    assert merged.config.checkpoint_kind == "full" and not adapter_layers(merged)
    assert ADAPTER_FILE not in os.listdir(dest)
    model = lora_run["model"].eval()
    inputs = model_inputs(model.processor, sample_images)
    torch.testing.assert_close(logits_and_tokens(merged, inputs, 0)[0], logits_and_tokens(model, inputs, 0)[0],
                               rtol=1e-4, atol=1e-4)


def test_stage_two_from_a_lora_checkpoint_keeps_training_its_adapter(lora_run, tmp_path, capsys):
    config = str(lora_run["config"])
    stage2 = ["--set", "gemma_model_name=null", "--set", "cosmos_model_name=null", "--set", "world_image_size=null",
              "--set", f"init_from={lora_run['out'] / 'final'}"]
    # a second lora: section on a checkpoint that holds one is refused
    assert main(["train", "--config", config, "--set", f"output_dir={tmp_path / 'twice'}", *stage2]) == 2
    assert re.match(r"error: init_from .* already holds a PEFT adapter, which keeps training; drop the lora: section",
                    error_line(capsys.readouterr().err))
    cfg = load_train_config(config, [f"output_dir={tmp_path / 's2'}", "lora=null", "max_steps=1", *stage2[1::2]])
    trainer = Trainer(cfg)
    trainer.setup()
    assert set(trainer.param_names) == set(trainable_state_dict(trainer.model))
    assert {n for n in trainer.param_names if ".lora_" in n} == set(adapter_tensors(lora_run["model"]))
    start = trainer.model.state_dict()
    for key, value in load_file(lora_run["out"] / "final" / "model.safetensors").items():
        assert torch.equal(start[key], value), key


@pytest.mark.parametrize(
    "lora, extra, message",
    [
        ("{r: 4, target_module: x}", [],
         r"error: invalid config: lora: unknown key\(s\) 'target_module' \(did you mean 'target_modules'\?\); the keys "
         r"are r, alpha, dropout, target_modules\."),
        ("{r: 0}", [], r"error: invalid config: lora\.r must be an int >= 1, got 0\."),
        ("{r: 4, dropout: 1.0}", [], r"error: invalid config: lora\.dropout must be a number in \[0, 1\), got 1\.0\."),
        ("yes", [], r"error: invalid config: lora must be a mapping or null, got True"),
        ("{r: 4}", ["freeze_preset=projector+lm"],
         r"error: invalid config: lora: the adapter trains on Gemma's frozen language model, but freeze_preset "
         r"'projector\+lm' trains the whole language model; drop lm from freeze_preset"),
        ("{target_modules: '(['}", [],
         r"error: invalid config: lora\.target_modules '\(\[' is not a valid regular expression"),
        (r"{target_modules: '.*\.(q_proj|v_proj)'}", [],
         r"error: lora\.target_modules .* also matches modules outside Gemma's language model: "
         r"\['model\.vision_tower\..*q_proj'"),
        ("{target_modules: [q_proj]}", [],
         r"error: lora\.target_modules \['q_proj'\] also matches modules outside Gemma's language model: "
         r"\['model\.vision_tower\."),
        ("{target_modules: '.*no_such_module'}", [],
         r"error: lora\.target_modules '\.\*no_such_module' matches no module of the model"),
    ],
)
def test_bad_lora_sections_end_with_a_clear_error(lora_run, tmp_path, capsys, lora, extra, message):
    overrides = [f"output_dir={tmp_path / 'run'}", f"lora={lora}", *extra]
    rc = main(["train", "--config", str(lora_run["config"]), *[a for o in overrides for a in ("--set", o)]])
    assert rc == 2
    assert re.match(message, error_line(capsys.readouterr().err))


def test_the_shipped_lora_config_adapts_only_the_language_model_attention(world_model_factory):
    """configs/vsr_lora.yaml validates (test_training checks every shipped config) and its regex, applied to a model,
    adapts exactly the attention projections of Gemma's language model, beside the training projector."""
    settings = load_train_config(REPO / "configs" / "vsr_lora.yaml").lora_settings()
    assert settings == {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": DEFAULT_LORA_TARGETS}
    model = add_lora(world_model_factory(seed=3), **settings)
    num_layers = model.config.text_config.num_hidden_layers
    assert sorted(adapter_layers(model)) == sorted(
        f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in range(num_layers) for p in "qkvo"
    )
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trains == set(adapter_tensors(model)) | {n for n, _ in model.named_parameters() if n.startswith(WORLD)}
