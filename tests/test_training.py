"""Training: config validation, loss scaling under accumulation, exact resume, multi-stage, cached latents, CLI."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cli import error_line

from theworld.training import (
    TrainConfig,
    Trainer,
    accumulate_gradients,
    config_fields,
    load_train_config,
    lr_factor,
    optimizer_state_from_files,
    optimizer_state_to_files,
    preset_freeze_flags,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def vsr_data(tmp_path_factory):
    """A small synthetic set with several relations (captions of different lengths) plus a duplicated-image split."""
    from theworld.data import generate_synthetic_vsr

    out = tmp_path_factory.mktemp("vsr")
    paths = generate_synthetic_vsr(
        out, num_train=16, num_val=8, num_test=8, relations=("left of", "above", "far from"), seed=1
    )
    rows = [json.loads(line) for line in open(paths["train"], encoding="utf-8")]
    # 12 rows over 8 distinct images: the latent cache must encode each image once
    dup = rows[:8] + [dict(r, caption=r["caption"].replace("The ", "A ", 1)) for r in rows[:4]]
    with open(out / "dup.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in dup)
    paths["dup"] = str(out / "dup.jsonl")
    return paths


def base_config(tiny_bases, vsr_data, out, **kw) -> TrainConfig:
    fields = dict(
        output_dir=str(out),
        gemma_model_name=tiny_bases.gemma,
        cosmos_model_name=tiny_bases.cosmos,
        world_image_size=64,
        train_file=vsr_data["train"],
        max_steps=2,
        per_device_batch_size=4,
        learning_rate=1e-3,
        progress_bar=False,
        logging_steps=1,
    )
    fields.update(kw)
    return TrainConfig(**fields)


def trained_weights(path: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(path, "model.safetensors"))


# ----------------------------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------------------------


def test_config_loads_yaml_and_json_with_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("output_dir: out\ngemma_model_name: g\ncosmos_model_name: c\ntrain_file: t.jsonl\nmax_steps: 5\n")
    cfg = load_train_config(y, ["learning_rate=3e-4", "freeze_preset=projector+lm", "max_grad_norm=null"])
    assert (cfg.max_steps, cfg.learning_rate, cfg.freeze_preset, cfg.max_grad_norm) == (5, 3e-4, "projector+lm", None)
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"output_dir": "o", "init_from": "ckpt", "train_file": "t", "num_epochs": 1.5}))
    assert load_train_config(j).num_epochs == 1.5


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"learning_rat": 1e-3}, r"Unknown config field.*'learning_rat' \(did you mean 'learning_rate'\?\)"),
        ({"max_steps": "10"}, r"max_steps must be an int or null, got '10'"),
        ({"max_steps": True}, r"max_steps must be an int"),
        ({"max_steps": 3, "num_epochs": 1.0}, r"exactly one of max_steps and num_epochs"),
        ({"max_steps": 0}, r"max_steps must be >= 1"),
        ({"freeze_preset": "projector+lmm"}, r"unknown part\(s\) \['lmm'\]"),
        ({"lr_scheduler": "step"}, r"lr_scheduler must be one of"),
        ({"warmup_steps": 5, "warmup_ratio": 0.1}, r"only one of warmup_steps and warmup_ratio"),
        ({"push_to_hub": True}, r"push_to_hub: true needs hub_model_id"),
        ({"cache_world_latents": "always"}, r"cache_world_latents must be true, false or 'auto'"),
        ({"mixed_precision": "fp8"}, r"mixed_precision must be one of"),
        ({"train_file": None}, r"exactly one of train_file"),
        ({"gemma_model_name": None}, r"gemma_model_name .* or init_from"),
        ({"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\)"),
        ({"world_placement": "before_bos"}, r"world_placement must be one of \('after_image', 'after_bos'\)"),
        ({"world_attention": "full"}, r"world_attention must be one of"),
        ({"world_resize_mode": "stretch"}, r"world_resize_mode must be one of"),
        ({"world_projection_mode": "pixel"}, r"world_projection_mode must be one of \('spatial', 'channel'\)"),
        ({"world_pooling": 0}, r"world_pooling must be >= 1"),
        ({"num_world_steps": -1}, r"num_world_steps must be >= 0"),
        ({"rollout_num_inference_steps": 1}, r"rollout_num_inference_steps must be >= 2"),
        ({"rollout_mode": "parallel"}, r"rollout_mode must be one of \('joint', 'autoregressive'\)"),
        ({"dtype": "int8"}, r"dtype must be one of"),
    ],
)
def test_config_errors_name_the_field(fields, message):
    data = {"output_dir": "o", "gemma_model_name": "g", "cosmos_model_name": "c", "train_file": "t", "max_steps": 1}
    data.update(fields)
    from theworld.training import config_from_dict

    with pytest.raises(ValueError, match=message):
        config_from_dict(data)


def test_presets_map_to_the_model_config_freeze_flags(world_model_factory):
    from theworld.checkpoint_theworld import parameter_counts

    assert preset_freeze_flags("projector", True) == {
        "freeze_gemma_language": True, "freeze_gemma_vision": True, "freeze_cosmos_vae": True,
    }
    assert preset_freeze_flags("projector+lm", True)["freeze_gemma_language"] is False
    assert set(preset_freeze_flags("all", True).values()) == {False}
    assert preset_freeze_flags("all", False) == {
        "freeze_gemma_language": False, "freeze_gemma_vision": False, "freeze_cosmos_vae": True,
    }
    with pytest.raises(ValueError, match="world projector always trains"):
        preset_freeze_flags("lm", True)
    with pytest.raises(ValueError, match="does not have"):
        preset_freeze_flags("projector", False)
    # the flags are TheWorldConfig's own: projector+lm trains exactly the world modules, the LM and lm_head
    model = world_model_factory(**preset_freeze_flags("projector+lm", True))
    cfg = model.config
    assert (cfg.freeze_gemma_language, cfg.freeze_gemma_vision, cfg.freeze_cosmos_vae) == (False, True, True)
    trained = {n.split(".")[0] + "." + n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {"model.world_projector", "model.world_boundary_embeddings", "model.language_model"}
    assert model.lm_head.weight.requires_grad
    assert parameter_counts(model)[0] > sum(p.numel() for p in model.model.world_projector.parameters())


def test_every_field_is_documented():
    doc = (REPO / "README.md").read_text()
    missing = [name for name, help_text, _ in config_fields() if f"`{name}`" not in doc or not help_text]
    assert not missing, f"fields missing from the README: {missing}"


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid_and_explicit(name):
    cfg = load_train_config(REPO / "configs" / name)
    if cfg.init_from is None and cfg.enable_world is not False:
        # a fresh world model states the world settings it relies on instead of inheriting the model's defaults
        for field in ("world_image_size", "world_pooling", "world_projection_mode", "world_placement", "world_attention"):
            assert getattr(cfg, field) is not None, f"{name} leaves {field} to the model's default"


def test_lr_schedule():
    kw = dict(warmup=4, total=20, min_ratio=0.1)
    assert [lr_factor(s, kind="cosine", **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, kind="cosine", **kw) == pytest.approx(1.0)
    assert lr_factor(12, kind="cosine", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(20, kind="cosine", **kw) == pytest.approx(0.1)
    assert lr_factor(12, kind="linear", **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(19, kind="constant", **kw) == 1.0


# ----------------------------------------------------------------------------------------------------------------------
# Loss scaling under gradient accumulation
# ----------------------------------------------------------------------------------------------------------------------


def test_k_micro_batches_give_the_gradient_of_one_k_times_batch(world_model_factory, vsr_data):
    from accelerate import Accelerator

    from theworld.data import VSRCollator, load_vsr_jsonl

    model = world_model_factory(freeze_gemma_language=False)  # LM trains too: gradients reach every layer
    model.train()
    ds = load_vsr_jsonl(vsr_data["train"])
    items = [ds[i] for i in range(6)]
    collate = VSRCollator(model.processor, supervise_end_of_turn=True)
    acc = Accelerator(cpu=True)
    params = [p for p in model.parameters() if p.requires_grad]

    def grads(micro):
        model.zero_grad(set_to_none=True)
        tokens = sum(int((b["labels"] != -100).sum()) for b in micro)
        accumulate_gradients(model, micro, acc, tokens)
        return [p.grad.clone() for p in params]

    one = grads([collate(items)])
    # uneven micro-batches (4 + 2 examples) with different padding: normalisation is over the whole batch
    three = grads([collate(items[:4]), collate(items[4:5]), collate(items[5:])])
    for a, b in zip(one, three):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in one)


def test_accumulation_and_batch_training_reach_the_same_weights(tiny_bases, vsr_data, tmp_path):
    a = Trainer(base_config(tiny_bases, vsr_data, tmp_path / "a", per_device_batch_size=2, gradient_accumulation_steps=2,
                            max_steps=3, latent_cache_dir=str(tmp_path / "cache"), save_steps=1,
                            save_total_limit=2)).train()
    assert sorted(p.name for p in (tmp_path / "a").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    b = Trainer(base_config(tiny_bases, vsr_data, tmp_path / "b", per_device_batch_size=4, max_steps=3,
                            latent_cache_dir=str(tmp_path / "cache"))).train()
    wa, wb = trained_weights(a["final_checkpoint"]), trained_weights(b["final_checkpoint"])
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    assert a["final_loss"] == pytest.approx(b["final_loss"], rel=1e-4)


# ----------------------------------------------------------------------------------------------------------------------
# The CLI: metrics, curve, checkpoints, exact resume, latent cache
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_run(tiny_bases, vsr_data, tmp_path_factory):
    """`theworld train --config`: 4 steps, checkpoints every 2, duplicated images, eval at the end (the console script's
    own wiring, ``sys.exit(main())``, is tested in test_cli.py and test_distributed.py)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    cfg = {
        "output_dir": str(out),
        "gemma_model_name": tiny_bases.gemma,
        "cosmos_model_name": tiny_bases.cosmos,
        "world_image_size": 64,
        "train_file": vsr_data["dup"],
        "eval_file": vsr_data["validation"],
        "max_steps": 4,
        "per_device_batch_size": 3,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "warmup_steps": 1,
        "logging_steps": 1,
        "save_steps": 2,
    }
    path = out.parent / "train.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    from theworld.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(["train", "--config", str(path)])
    assert rc == 0, stderr.getvalue()[-3000:]
    return {"out": out, "config": path, "stdout": stdout.getvalue(), "stderr": stderr.getvalue()}


def test_cli_writes_metrics_curve_and_checkpoints(cli_run):
    out = cli_run["out"]
    assert "trained 4 steps" in cli_run["stdout"]
    assert "training" in cli_run["stderr"]  # the tqdm bar
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(r["supervised_tokens"] == 6 and r["loss"] > 0 and r["lr"] > 0 for r in train)
    assert train[0]["lr"] == pytest.approx(1e-3)  # warmup 1 step, then cosine
    assert [r["type"] for r in records].count("eval") == 1
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for step in (2, 4):
        state = out / f"checkpoint-{step}" / "training_state"
        assert sorted(os.listdir(state)) == [
            "optimizer.safetensors", "rng_state_0.json", "rng_state_0.safetensors", "trainer_state.json",
        ]
        assert json.loads((state / "trainer_state.json").read_text())["global_step"] == step
    summary = json.loads((out / "train_summary.json").read_text())
    # 12 rows over 8 distinct images: each distinct image encoded once
    assert summary["latent_cache"]["train_distinct_images"] == 8
    assert summary["latent_cache"]["train_encoded"] == 8
    assert summary["latent_cache"]["encoded"] == 8 + 8  # and the 8 validation images, once
    cache_files = list(Path(out / "latent_cache").rglob("*.safetensors"))
    assert len(cache_files) == 8 + 8  # train images + validation images


def test_checkpoints_load_with_automodel(cli_run):
    from transformers import AutoModel

    from theworld.checkpoint_theworld import trainable_state_dict

    ckpt = cli_run["out"] / "checkpoint-2"
    model = AutoModel.from_pretrained(str(ckpt))
    saved = trained_weights(str(ckpt))
    assert set(saved) == set(trainable_state_dict(model))
    for k, v in saved.items():
        assert torch.equal(model.state_dict()[k], v)
    key = "model.world_projector.linear_1.weight"
    assert not torch.equal(saved[key], trained_weights(str(cli_run["out"] / "final"))[key])


def test_resume_continues_exactly(cli_run, tmp_path):
    """4 steps straight == 2 steps, stop, resume from checkpoint-2 for 2 more: bit-identical weights."""
    from theworld.cli import main

    out = tmp_path / "resumed"
    rc = main(["train", "--config", str(cli_run["config"]), "--set", f"output_dir={out}",
               "--set", f"resume_from={cli_run['out'] / 'checkpoint-2'}", "--set", "progress_bar=false"])
    assert rc == 0
    straight, resumed = trained_weights(str(cli_run["out"] / "final")), trained_weights(str(out / "final"))
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    # optimizer state of the last checkpoint is identical too
    a = load_file(str(cli_run["out"] / "checkpoint-4" / "training_state" / "optimizer.safetensors"))
    b = load_file(str(out / "checkpoint-4" / "training_state" / "optimizer.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_changed_settings_and_overwrite(cli_run, tmp_path, capsys):
    from theworld.cli import main

    rc = main(["train", "--config", str(cli_run["config"]), "--set", f"output_dir={tmp_path / 'x'}",
               "--set", f"resume_from={cli_run['out'] / 'checkpoint-2'}", "--set", "learning_rate=0.002"])
    assert rc == 2
    assert re.match(r"error: Cannot resume from .*learning_rate: 0.001 -> 0.002", error_line(capsys.readouterr().err))
    assert main(["train", "--config", str(cli_run["config"])]) == 2
    assert re.match(r"error: output_dir .* already holds .*resume_from: latest", error_line(capsys.readouterr().err))
    assert main(["train", "--config", str(cli_run["config"]), "--set", "bogus=1"]) == 2
    assert capsys.readouterr().err.startswith("error: invalid config: Unknown config field(s)")


def test_stage_two_starts_from_stage_one(cli_run, tiny_bases, vsr_data, tmp_path):
    stage1 = str(cli_run["out"] / "final")
    cfg = base_config(tiny_bases, vsr_data, tmp_path / "s2", gemma_model_name=None, cosmos_model_name=None,
                      world_image_size=None, init_from=stage1, freeze_preset="projector+lm", max_steps=1)
    trainer = Trainer(cfg)
    trainer.setup()
    start = trainer.model.state_dict()
    for k, v in trained_weights(stage1).items():
        assert torch.equal(start[k], v), k
    assert any(n.startswith("model.language_model.") for n in trainer.param_names)
    assert all(p.dtype == torch.float32 for _, p in trainer.named_trainable)
    summary = Trainer(cfg).train()
    saved = trained_weights(summary["final_checkpoint"])
    assert any(k.startswith("model.language_model.") for k in saved)


def test_bf16_autocast_keeps_fp32_master_weights(tiny_bases, vsr_data, tmp_path):
    trainer = Trainer(base_config(tiny_bases, vsr_data, tmp_path / "bf16", mixed_precision="bf16", max_steps=2,
                                  latent_cache_dir=str(tmp_path / "cache")))
    summary = trainer.train()
    assert summary["mixed_precision"] == "bf16" and torch.isfinite(torch.tensor(summary["final_loss"]))
    assert all(p.dtype == torch.float32 for _, p in trainer.named_trainable)
    assert all(v.dtype == torch.float32 for v in trained_weights(summary["final_checkpoint"]).values())


def test_gradient_checkpointing_gives_the_same_gradients(world_model_factory, vsr_data):
    from accelerate import Accelerator

    from theworld.data import VSRCollator, load_vsr_jsonl

    ds = load_vsr_jsonl(vsr_data["train"])
    acc = Accelerator(cpu=True)
    result = []
    for ckpt in (False, True):
        model = world_model_factory(freeze_gemma_language=False)
        if ckpt:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            assert model.model.language_model.layers[0].gradient_checkpointing
        model.train()
        batch = VSRCollator(model.processor)([ds[i] for i in range(3)])
        accumulate_gradients(model, [batch], acc, int((batch["labels"] != -100).sum()))
        result.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for k in result[0]:
        torch.testing.assert_close(result[0][k], result[1][k], rtol=1e-5, atol=1e-7)


def test_latent_cache_needs_a_frozen_vae(tiny_bases, vsr_data, tmp_path):
    cfg = base_config(tiny_bases, vsr_data, tmp_path / "v", freeze_preset="projector+vae", cache_world_latents=True)
    with pytest.raises(ValueError, match="cache_world_latents: true needs a frozen VAE"):
        Trainer(cfg).setup()


def test_optimizer_state_round_trips_through_safetensors_and_json():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    opt = torch.optim.AdamW([{"params": params[:1], "weight_decay": 0.1}, {"params": params[1:]}], lr=1e-2)
    for _ in range(2):
        sum((p**2).sum() for p in params).backward()
        opt.step()
    tensors, structure = optimizer_state_to_files(opt, ["a", "b"])
    json.dumps(structure)  # plain json
    restored = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=5.0)
    restored.load_state_dict(optimizer_state_from_files(tensors, structure, ["a", "b"]))
    s1, s2 = opt.state_dict(), restored.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for i in s1["state"]:
        for k in s1["state"][i]:
            assert torch.equal(s1["state"][i][k], s2["state"][i][k])
    with pytest.raises(ValueError, match="different trainable parameters"):
        optimizer_state_from_files(tensors, structure, ["a", "c"])


def test_baseline_trains_the_language_model_only(tiny_bases, vsr_data, tmp_path):
    cfg = base_config(tiny_bases, vsr_data, tmp_path / "base", enable_world=False, cosmos_model_name=None,
                      freeze_preset="lm", max_steps=1)
    trainer = Trainer(cfg)
    trainer.setup()
    assert not trainer.model.config.enable_world and trainer.cache is None
    assert all(n.startswith(("model.language_model.", "lm_head.")) for n in trainer.param_names)


def test_cached_latents_train_exactly_like_the_vae_with_rollout(tiny_bases, vsr_data, tmp_path):
    """Training on cached latents (here with one rollout step, latents (z, 2, h, w)) equals encoding every step."""
    from theworld.latent_cache import LatentCache

    runs = {}
    for cached in (True, False):
        t = Trainer(base_config(tiny_bases, vsr_data, tmp_path / str(cached), num_world_steps=1, max_steps=2,
                                rollout_num_inference_steps=3, rollout_guidance_scale=2.0,
                                cache_world_latents=cached, max_train_samples=8))
        summary = t.train()
        runs[cached] = trained_weights(summary["final_checkpoint"])
        if cached:
            assert summary["latent_cache"]["train_encoded"] == 8
            assert t.cache.fields["num_world_steps"] == 1 and "rollout_seed" in t.cache.fields
            # each rollout setting (and the rollout weights) is part of the namespace
            namespaces = {t.cache.namespace}
            assert (t.model.config.rollout_num_inference_steps, t.model.config.rollout_guidance_scale) == (3, 2.0)
            for key, value in (("rollout_mode", "autoregressive"), ("rollout_seed", 5),
                               ("rollout_num_inference_steps", 4), ("rollout_guidance_scale", 3.0)):
                setattr(t.model.config, key, value)
                namespaces.add(LatentCache(tmp_path / "ns", t.model).namespace)
            with torch.no_grad():
                next(t.model.model.world_rollout.parameters()).add_(1e-3)
            namespaces.add(LatentCache(tmp_path / "ns", t.model).namespace)
            assert len(namespaces) == 6
            z = t.model.config.latent_channels
            assert t.train_data[0]["world_latents"].shape == (z, 2, 8, 8)
        else:
            assert t.cache is None
    for k in runs[True]:
        torch.testing.assert_close(runs[True][k], runs[False][k], rtol=1e-4, atol=1e-6)


def test_latent_cache_keys_and_invalid_files(world_model, world_model_factory, vsr_data, tmp_path):
    from theworld.data import load_vsr_jsonl
    from theworld.latent_cache import LatentCache

    ds = load_vsr_jsonl(vsr_data["train"])
    cache = LatentCache(tmp_path, world_model)
    keys = cache.prepare([ds[i] for i in range(3)], world_model.processor)
    assert cache.stats["encoded"] == 3 and len(set(keys)) == 3
    # the key is the image content: a second cache over the same folder finds it without encoding
    again = LatentCache(tmp_path, world_model)
    assert again.prepare([ds[1]], world_model.processor) == [keys[1]] and again.stats["encoded"] == 0
    with torch.no_grad():
        direct = world_model.encode_world(world_model.processor.world_pixel_values([ds[1]["image"]]))[0]
    torch.testing.assert_close(again.get(keys[1]), direct)  # encoded in a batch of 3 there, alone here
    # another world setting (image size) lives in another namespace
    other = LatentCache(tmp_path, world_model_factory(world_image_size=32))
    assert other.namespace != cache.namespace and other.fields["world_image_size"] == 32
    assert cache.fields["cosmos_fingerprints"] == world_model.config.base_fingerprints["cosmos"]
    assert cache.fields["cosmos_fingerprints"]  # the recorded fingerprints of the Cosmos weights that were read
    # every other setting the latents depend on moves them to another namespace too
    seen = {other.namespace}
    for key, value in (("world_resize_mode", "center_crop"), ("legacy_preprocessing", True)):
        setattr(other.model.config, key, value)
        seen.add(LatentCache(tmp_path, other.model).namespace)
    other.model.config.world_config.latents_mean = [0.0] * other.model.config.latent_channels
    seen.add(LatentCache(tmp_path, other.model).namespace)
    encoder = other.model.model.world_encoder
    with torch.no_grad():
        next(encoder.parameters()).add_(1e-3)  # a fine-tuned encoder
    seen.add(LatentCache(tmp_path, other.model).namespace)
    encoder.to(torch.bfloat16)
    seen.add(LatentCache(tmp_path, other.model).namespace)
    assert len(seen) == 6
    # a corrupt file is never trusted: it is rejected and re-encoded
    before = cache.get(keys[0])
    path = cache.path(keys[0])
    with open(path, "wb") as f:
        f.write(b"garbage")
    fresh = LatentCache(tmp_path, world_model)
    fresh.prepare([ds[0]], world_model.processor)
    assert fresh.stats["encoded"] == 1
    assert fresh.stats["rejected"] >= 1
    torch.testing.assert_close(fresh.get(keys[0]), before)
