"""`theworld demo` end to end on a reduced budget (the full default run is measured separately, not here)."""

from __future__ import annotations

import json
import os

from theworld.cli import main
from theworld.demo import RESULT_KEYS


def test_demo_cli_writes_results_report_and_reloads_identically(tiny_bases, tmp_path, capsys):
    out = tmp_path / "demo"
    bases = os.path.dirname(tiny_bases.gemma)  # reuse the session's tiny bases (same seed and size)
    rc = main(["demo", "--out", str(out), "--bases", bases, "--num-train", "48", "--num-test", "16", "--steps", "4",
               "--batch-size", "8", "--eval-batch-size", "16", "--warmup-steps", "1"])
    stdout = capsys.readouterr().out
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert tuple(results) == RESULT_KEYS
    for key in RESULT_KEYS[:-1]:
        assert isinstance(results[key], float) and 0.0 <= results[key] <= 1.0, key
    assert results["majority_rate"] == 0.5  # the generator balances labels
    # the checkpoint's own remote code, loaded without theworld, predicts exactly like the trained model
    assert results["reload_identical"] is True
    details = json.loads((out / "details.json").read_text())
    assert details["reload"]["theworld_imported"] is False
    assert details["reload"]["model_class"].startswith("transformers_modules.")
    assert details["reload"]["num_predictions"] == 16
    assert details["theworld_train"]["global_step"] == 4 and details["baseline_train"]["global_step"] == 4
    report = (out / "report.md").read_text()
    assert "theworld_loss.png" in report and "baseline_loss.png" in report and "left of" in report
    for png in ("theworld_loss.png", "baseline_loss.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    for line in ("majority class", "Gemma-only baseline", "world features zeroed", "world features shuffled"):
        assert line in stdout
    # the saved checkpoint is the one the reload used, and AutoModel loads it here too
    from transformers import AutoModel

    from theworld.checkpoint_theworld import parameter_counts

    model = AutoModel.from_pretrained(details["checkpoint"])
    assert model.config.enable_world and parameter_counts(model)[0] > 0
    # the world settings the demo relies on are set explicitly, whatever the model's defaults
    cfg = model.config
    assert (cfg.world_image_size, cfg.world_pooling, cfg.world_projection_mode) == (64, 1, "channel")
    assert (cfg.world_placement, cfg.world_attention, cfg.num_world_tokens) == ("after_image", "bidirectional", 16)
    assert set(details["targets"]) == {"theworld_vs_majority", "zero_drop", "shuffle_drop"}
    assert "checks: theworld_vs_majority" in stdout
