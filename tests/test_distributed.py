"""`theworld train` under `accelerate launch` with 2 CPU processes (gloo) matches 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(tiny_bases, tmp_path):
    from theworld.cli import main
    from theworld.data import generate_synthetic_vsr

    data = generate_synthetic_vsr(tmp_path / "data", num_train=12, num_val=0, num_test=0,
                                  relations=("left of", "far from"), seed=2)
    cfg = {
        "gemma_model_name": tiny_bases.gemma,
        "cosmos_model_name": tiny_bases.cosmos,
        "world_image_size": 64,
        "train_file": data["train"],
        "max_steps": 3,
        "gradient_accumulation_steps": 2,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_steps": 3,
        "progress_bar": False,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # one process: micro-batches of 4 (global batch 8)
    one = tmp_path / "one"
    assert main(["train", "--config", str(path), "--set", f"output_dir={one}", "--set", "per_device_batch_size=4"]) == 0
    # two processes: micro-batches of 2 each (global batch 8)
    two = tmp_path / "two"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "theworld.cli", "train", "--config",
         str(path), "--set", f"output_dir={two}", "--set", "per_device_batch_size=2"],
        capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1"),
    )
    errors = [line for line in proc.stderr.splitlines() if "Error" in line or "error" in line]
    assert proc.returncode == 0, "\n".join(errors[:20]) + "\n" + proc.stderr[-2000:]
    assert proc.stdout.count("trained 3 steps") == 1  # only the main process reports
    summary = json.loads((two / "train_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8
    state = two / "checkpoint-3" / "training_state"
    assert {"rng_state_0.safetensors", "rng_state_1.safetensors"} <= set(os.listdir(state))
    a, b = load_file(str(one / "final" / "model.safetensors")), load_file(str(two / "final" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # same losses step by step
    la = [json.loads(x)["loss"] for x in (one / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (two / "metrics.jsonl").read_text().splitlines()]
    assert la == pytest.approx(lb, rel=1e-5)
