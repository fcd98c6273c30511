"""Training benchmarks on the tiny bases (offline).

1. Training-step time with cached world latents / without (VAE frozen, same model, data and batch). Target <= 0.5.
   The cached run's one-time encoding pass is reported separately.
2. Samples per second of `theworld train` on 1 process and under `accelerate launch` with 2 processes (same global
   batch), each in its own subprocess.

    python benchmarks/train_bench.py [--steps 12] [--batch-size 16] [--threads 1] [--skip-processes] [--json out.json]

Step times are medians over the steps after ``--warmup`` (from ``metrics.jsonl``, one record per step).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _step_times(output_dir: str, warmup: int) -> list[float]:
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as f:
        recs = [json.loads(line) for line in f if line.strip()]
    times = [r["step_time_s"] for r in recs if r.get("type") == "train"]
    return times[warmup:] if len(times) > warmup else times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=16, help="global batch")
    parser.add_argument("--image-size", type=int, default=64, help="world image size (the VAE's input)")
    parser.add_argument("--world-pooling", type=int, default=1, help="world_pooling (1: 64 world tokens at 64 px)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPU cores)")
    parser.add_argument("--skip-processes", action="store_true", help="skip the 1 vs 2 process comparison")
    parser.add_argument("--json", default=None, help="also write the numbers to this json file")
    args = parser.parse_args(argv)

    import torch

    from theworld.data import generate_synthetic_vsr
    from theworld.tiny import build_tiny_bases
    from theworld.training import TrainConfig, Trainer

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    work = args.work or tempfile.mkdtemp(prefix="theworld-train-bench-")
    bases = build_tiny_bases(os.path.join(work, "bases"))
    n = args.steps * args.batch_size
    data = generate_synthetic_vsr(
        os.path.join(work, "data"), num_train=n, num_val=0, num_test=0, image_size=args.image_size,
        relations=("left of",), fixed_objects=("red circle", "blue square"),
    )
    common = dict(
        gemma_model_name=bases.gemma, cosmos_model_name=bases.cosmos, world_image_size=args.image_size,
        world_pooling=args.world_pooling, train_file=data["train"], max_steps=args.steps, learning_rate=1e-3, logging_steps=1, progress_bar=False,
        overwrite_output_dir=True,
    )
    results: dict = {"device": "cpu", "threads": torch.get_num_threads(), "global_batch": args.batch_size}

    # ---------------------------------------------------------------- cached vs uncached latents
    medians = {}
    for cached in (False, True):
        out = os.path.join(work, f"cache_{cached}")
        cfg = TrainConfig(output_dir=out, per_device_batch_size=args.batch_size, cache_world_latents=cached,
                          latent_cache_dir=os.path.join(work, f"latents_{time.time_ns()}"), **common)
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        trainer.setup()
        setup_s = time.perf_counter() - t0
        trainer.train()
        medians[cached] = statistics.median(_step_times(out, args.warmup))
        if cached:
            results["encode_once_s"] = setup_s
            results["encoded_images"] = trainer.cache.stats["encoded"]
    results["step_s_uncached"] = medians[False]
    results["step_s_cached"] = medians[True]
    results["cached_over_uncached"] = medians[True] / medians[False]

    # ---------------------------------------------------------------- 1 vs 2 processes
    if not args.skip_processes:
        import yaml

        cfg_path = os.path.join(work, "proc.yaml")
        with open(cfg_path, "w", encoding="utf-8") as f:
            yaml.safe_dump({**common, "output_dir": os.path.join(work, "p1"),
                            "latent_cache_dir": os.path.join(work, "latents_proc")}, f)
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        runs = {
            1: [sys.executable, "-m", "theworld.cli", "train", "--config", cfg_path,
                "--set", f"per_device_batch_size={args.batch_size}"],
            2: [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                str(_free_port()), "-m", "theworld.cli", "train", "--config", cfg_path,
                "--set", f"per_device_batch_size={args.batch_size // 2}", "--set", f"output_dir={os.path.join(work, 'p2')}"],
        }
        # warm the latent cache once so that both runs time training only
        subprocess.run(runs[1] + ["--set", "max_steps=1", "--set", f"output_dir={os.path.join(work, 'p0')}"],
                       check=True, env=env, capture_output=True)
        for procs, cmd in runs.items():
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"{procs}-process run failed:\n{proc.stderr[-3000:]}")
            out = os.path.join(work, "p1" if procs == 1 else "p2")
            step = statistics.median(_step_times(out, args.warmup))
            results[f"samples_per_s_{procs}proc"] = args.batch_size / step
        results["two_over_one_process"] = results["samples_per_s_2proc"] / results["samples_per_s_1proc"]

    ratio = results["cached_over_uncached"]
    lines = [
        f"training step, cached latents:   {results['step_s_cached'] * 1000:8.1f} ms  (global batch {args.batch_size})",
        f"training step, VAE every step:   {results['step_s_uncached'] * 1000:8.1f} ms",
        f"cached / uncached:               {ratio:8.3f}   target <= 0.5   {'OK' if ratio <= 0.5 else 'MISSED'}",
        f"  one-time encoding pass: {results['encode_once_s']:.1f} s for {results['encoded_images']} images",
    ]
    if "two_over_one_process" in results:
        lines += [
            f"samples/s, 1 process:            {results['samples_per_s_1proc']:8.1f}",
            f"samples/s, 2 processes (gloo):   {results['samples_per_s_2proc']:8.1f}",
            f"2 processes / 1 process:         {results['two_over_one_process']:8.3f}   (informational, no target: "
            f"both runs share this machine's {os.cpu_count()} CPU cores (1 process x {os.cpu_count()} threads vs 2 "
            "processes x 1 thread), so this compares threading with process parallelism; with one GPU per process "
            "expect close to 2)",
        ]
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
