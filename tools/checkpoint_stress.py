"""Loads of one checkpoint folder while other processes keep saving into it (issue 9, "load during saves").

Two different checkpoints of tiny seeded models are used: ``A``, a partial checkpoint of model ``a``, and ``B``, a full
checkpoint (1 MB shards) of model ``b``, so that any mixture (one's config with the other's weights, shards of one
with the index of the other) cannot go unnoticed. ``--savers`` processes save into the folder in a loop, alternating
A and B (saver ``k`` starts with A when ``k`` is even). This process loads the folder for ``--seconds``, alternating
``TheWorld.from_pretrained`` and ``AutoModel.from_pretrained``, and compares every loaded model tensor by tensor with
``a`` and ``b``:

* ``equal_a`` / ``equal_b``: the load returned exactly one of the two checkpoints (its kind included);
* ``clear_errors``: the load raised one of the documented errors about a concurrent save (message counted);
* ``mixtures``: anything else that loaded; ``other_errors``: any other exception. Both must be 0.

At the end the savers are killed with SIGKILL at a random moment; the folder must then be byte-identical to A or B
(``after_kill``), and the next save must leave no staging folder behind (``leftovers_after_next_save``).

    python tools/checkpoint_stress.py                       # 60 s, one saver (the acceptance run)
    python tools/checkpoint_stress.py --seconds 8 --savers 2 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: Errors a load may raise when saves keep replacing the folder (each names the concurrent save).
CLEAR_ERRORS = ("was replaced by concurrent saves", "concurrent save replaced")


def folder_bytes(folder: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:
                out[name] = f.read()
    return out


def build_references(root: str, bases=None) -> tuple[str, str, dict]:
    """Save the two reference checkpoints under ``root`` (around ``bases``, built there when not given); return their
    folders (A partial, B full) and the two models' state dicts."""
    import torch

    from theworld import TheWorld
    from theworld.tiny import build_tiny_bases

    bases = bases or build_tiny_bases(os.path.join(root, "bases"), seed=0)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = TheWorld.from_pretrained(
            bases.gemma, cosmos_model_name=bases.cosmos, world_image_size=32, world_pooling=1
        )
        gen = torch.Generator().manual_seed(100 + seed)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(torch.randn(param.shape, generator=gen) * 0.05)
        models.append(model)
    ref_a, ref_b = os.path.join(root, "ref_a"), os.path.join(root, "ref_b")
    models[0].save_pretrained(ref_a)
    models[1].save_pretrained(ref_b, save_full_model=True, max_shard_size="1MB")
    return ref_a, ref_b, {"A": models[0].state_dict(), "B": models[1].state_dict()}


def saver(ref_a: str, ref_b: str, target: str, first: str) -> None:
    """Save A and B into ``target`` alternately until killed; print ``SAVED <n>`` after each save."""
    from theworld import TheWorld

    a, b = TheWorld.from_pretrained(ref_a), TheWorld.from_pretrained(ref_b)
    saves = [lambda: a.save_pretrained(target), lambda: b.save_pretrained(target, save_full_model=True,
                                                                           max_shard_size="1MB")]  # fmt: skip
    turn = 0 if first == "A" else 1
    count = 0
    print("READY", flush=True)
    while True:
        saves[turn]()
        count += 1
        print(f"SAVED {count}", flush=True)
        turn = 1 - turn


def _same(model, reference: dict) -> bool:
    import torch

    state = model.state_dict()
    return set(state) == set(reference) and all(torch.equal(state[k], reference[k]) for k in reference)


def run(seconds: float, savers: int, root: str, seed: int = 0, bases=None) -> dict:
    """Build the references (around ``bases`` when given), run the savers and the loads; return the counts."""
    import torch


    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(seconds, savers, root, seed, bases)
    finally:
        torch.set_num_threads(threads)  # the caller (a test session) keeps its own setting


def _run(seconds: float, savers: int, root: str, seed: int, bases) -> dict:
    from transformers import AutoModel

    from theworld import TheWorld

    rng = random.Random(seed)
    ref_a, ref_b, states = build_references(root, bases)
    expected = {"A": folder_bytes(ref_a), "B": folder_bytes(ref_b)}
    kinds = {"A": "partial", "B": "full"}
    target = os.path.join(root, "ckpt")
    procs = []
    for k in range(savers):
        procs.append(
            subprocess.Popen(
                [sys.executable, __file__, "--saver", ref_a, ref_b, target, "A" if k % 2 == 0 else "B"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        line = proc.stdout.readline()
        if line.strip() != "READY":
            raise RuntimeError(f"a saver failed to start: {line}{proc.stderr.read()[-3000:]}")
    while not os.path.isdir(target):
        time.sleep(0.01)
    result = {"seconds": seconds, "savers": savers, "loads": 0, "equal_a": 0, "equal_b": 0, "mixtures": 0,
              "clear_errors": {}, "other_errors": {}}  # fmt: skip
    start = time.monotonic()
    loaders = (TheWorld.from_pretrained, AutoModel.from_pretrained)
    while time.monotonic() - start < seconds:
        load = loaders[result["loads"] % 2]
        result["loads"] += 1
        try:
            model = load(target)
        except Exception as err:  # noqa: BLE001 - every outcome is classified
            message = f"{type(err).__name__}: {err}"
            bucket = "clear_errors" if any(c in message for c in CLEAR_ERRORS) else "other_errors"
            key = message.split(":")[0] + ": " + message.split(": ", 1)[1][:160]
            result[bucket][key] = result[bucket].get(key, 0) + 1
            continue
        for name in ("A", "B"):
            if model.config.checkpoint_kind == kinds[name] and _same(model, states[name]):
                result[f"equal_{name.lower()}"] += 1
                break
        else:
            result["mixtures"] += 1
    result["load_seconds"] = round(time.monotonic() - start, 1)
    time.sleep(rng.uniform(0.0, 0.3))  # kill -9 at a random moment of the savers' loops
    alive = [proc.poll() is None for proc in procs]
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
    saves, failures = 0, []
    for proc, was_alive in zip(procs, alive):
        out, err = proc.communicate()
        saves += max([int(line.split()[1]) for line in out.splitlines() if line.startswith("SAVED")] or [0])
        if not was_alive:
            failures.append(err[-2000:])
    result["saves"] = saves
    result["saver_failures"] = failures  # a saver that stopped before the kill (a save raised)
    now = folder_bytes(target)
    result["after_kill"] = next((name for name, files in expected.items() if files == now), "MIXED")
    parent = os.path.dirname(target)
    result["leftovers_after_kill"] = sorted(n for n in os.listdir(parent) if n.startswith(".ckpt."))
    TheWorld.from_pretrained(ref_a).save_pretrained(target)
    result["leftovers_after_next_save"] = sorted(n for n in os.listdir(parent) if n.startswith(".ckpt."))
    result["after_next_save"] = "A" if folder_bytes(target) == expected["A"] else "MIXED"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to keep loading (default 60)")
    parser.add_argument("--savers", type=int, default=1, help="concurrent saving processes (default 1)")
    parser.add_argument("--out", default=None, help="work folder, kept (default: a temporary folder, removed)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random kill moment")
    parser.add_argument("--json", action="store_true", help="print only the result as one JSON line")
    parser.add_argument("--saver", nargs=4, metavar=("REF_A", "REF_B", "TARGET", "FIRST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.saver:
        saver(*args.saver)
        return 0
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        result = run(args.seconds, args.savers, args.out, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="theworld-stress-") as root:
            result = run(args.seconds, args.savers, root, args.seed)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        for key, value in result.items():
            print(f"{key:28s} {value}")
    ok = (
        result["mixtures"] == 0
        and not result["other_errors"]
        and not result["saver_failures"]
        and result["after_kill"] in ("A", "B")
        and not result["leftovers_after_next_save"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
