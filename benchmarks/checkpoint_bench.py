"""Checkpoint benchmark (issue 3, point 8), with the DESIGN §8 targets beside the numbers.

1. partial checkpoint bytes ÷ (trainable elements × element size): the floor, target <= 1.01 (header excluded from
   the floor, reported separately);
2. ``AutoModel.from_pretrained`` of a TheWorld checkpoint ÷ loading its base models directly
   (``Gemma3ForConditionalGeneration.from_pretrained`` + ``AutoencoderKLWan.from_pretrained(cosmos, subfolder="vae")``):
   wall time and peak RSS, target <= 1.10 each. Every load runs in its own fresh subprocess (imports done before the
   clock starts), variants interleaved, after one untimed warm-up each (so all read from the page cache); the median
   over ``--repeats`` is reported. Peak RSS is the process's ``VmHWM`` (its imports included, the same libraries in
   every variant; ``ru_maxrss`` is not used because Linux carries it over from the parent across fork + exec); the
   peak increase over the post-import RSS is shown too;
3. bytes read from the Cosmos source during a TheWorld checkpoint load ÷ the VAE encoder's tensor bytes, target
   <= 1.05: every file opened under the Cosmos folder is recorded (audit hook) and every byte read through Python file
   objects from it is counted.

The bases are generated locally (``theworld.tiny.build_tiny_bases(..., size="base100m")``: a ~110M-parameter Gemma 3
and a Cosmos pipeline with a 55 MB VAE), so nothing is downloaded.

    python benchmarks/checkpoint_bench.py [--out /tmp/ckpt_bench] [--repeats 5] [--size base100m]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

VARIANTS = {
    "direct": textwrap.dedent(
        """
        def load():
            gemma = Gemma3ForConditionalGeneration.from_pretrained(GEMMA)
            vae = AutoencoderKLWan.from_pretrained(COSMOS, subfolder="vae")
            return gemma, vae
        """
    ),
    "theworld_partial": textwrap.dedent(
        """
        import theworld
        def load():
            return AutoModel.from_pretrained(PARTIAL)
        """
    ),
    "theworld_full": textwrap.dedent(
        """
        import theworld
        def load():
            return AutoModel.from_pretrained(FULL)
        """
    ),
}

RUNNER = textwrap.dedent(
    """
    import json, os, sys, time, builtins
    import torch
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    GEMMA, COSMOS, PARTIAL, FULL = sys.argv[1:5]
    COUNT_COSMOS = sys.argv[5] == "1"
    # Every variant imports the same libraries before the clock starts (diffusers included: TheWorld imports it
    # lazily, at the first model build, which must not be charged to the load).
    from diffusers import AutoencoderKLWan
    from transformers import AutoModel, Gemma3ForConditionalGeneration
    {variant}

    def status_kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    opened, read_bytes = set(), {{}}
    if COUNT_COSMOS:
        root = os.path.realpath(COSMOS) + os.sep

        def audit(event, args):
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                path = os.path.realpath(os.fsdecode(args[0]))
                if path.startswith(root):
                    opened.add(path)
        sys.addaudithook(audit)

        real_open = builtins.open

        def counting_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if isinstance(file, (str, bytes, os.PathLike)):
                path = os.path.realpath(os.fsdecode(file))
                if path.startswith(root):
                    read_bytes.setdefault(path, 0)
                    return _Counter(f, path)
            return f

        class _Counter:
            def __init__(self, f, path):
                self._f, self._path = f, path
            def read(self, *a):
                data = self._f.read(*a)
                read_bytes[self._path] += len(data.encode() if isinstance(data, str) else data)
                return data
            def readinto(self, buf):
                n = self._f.readinto(buf)
                read_bytes[self._path] += n or 0
                return n
            def readline(self, *a):
                data = self._f.readline(*a)
                read_bytes[self._path] += len(data.encode() if isinstance(data, str) else data)
                return data
            def __iter__(self):
                for line in self._f:
                    read_bytes[self._path] += len(line.encode() if isinstance(line, str) else line)
                    yield line
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self._f.close()
            def __getattr__(self, name):
                return getattr(self._f, name)
        builtins.open = counting_open

    before = status_kb("VmRSS")
    start = time.perf_counter()
    model = load()
    wall = time.perf_counter() - start
    # The peak RSS of this process image: VmHWM. (ru_maxrss would be wrong here: Linux carries it over from the
    # parent across fork + exec, so a child of a large benchmark process reports the parent's peak.)
    peak = max(status_kb("VmHWM"), 0)
    print("RESULT " + json.dumps({{"wall": wall, "peak_kb": peak, "rss_before_kb": before,
                                   "opened": sorted(opened), "read": read_bytes}}))
    """
)


def run_variant(name: str, paths: list[str], count_cosmos: bool = False, threads: int = 2) -> dict:
    code = RUNNER.format(variant=textwrap.indent(VARIANTS[name], ""))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", BENCH_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-c", code, *paths, "1" if count_cosmos else "0"],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def vae_encoder_bytes(cosmos: str) -> tuple[int, int]:
    """(encoder tensor bytes, whole VAE file bytes) of the Cosmos VAE."""
    from theworld.modeling_theworld import VAE_ENCODER_PREFIXES, read_safetensors_header

    path = os.path.join(cosmos, "vae", "diffusion_pytorch_model.safetensors")
    header, _ = read_safetensors_header(path)
    enc = sum(
        v["data_offsets"][1] - v["data_offsets"][0]
        for k, v in header.items()
        if k != "__metadata__" and k.startswith(VAE_ENCODER_PREFIXES)
    )
    return enc, os.path.getsize(path)


def verdict(value: float, target: float) -> str:
    return "OK" if value <= target else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=None, help="folder for the bases and checkpoints, kept for reruns (default: a temporary one)"
    )
    parser.add_argument("--size", default="base100m", help="theworld.tiny preset of the bases (>= 100M: base100m)")
    parser.add_argument("--repeats", type=int, default=5, help="timed loads per variant (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each load process")
    args = parser.parse_args(argv)
    if args.out is None:
        with tempfile.TemporaryDirectory(prefix="theworld-ckpt-bench-") as tmp:
            return run(args, tmp)
    os.makedirs(args.out, exist_ok=True)
    return run(args, args.out)


def run(args: argparse.Namespace, out: str) -> int:
    import torch

    from theworld import TheWorld
    from theworld.modeling_theworld import read_safetensors_header
    from theworld.tiny import build_tiny_bases

    bases = build_tiny_bases(os.path.join(out, "bases"), size=args.size)
    partial, full = os.path.join(out, "partial"), os.path.join(out, "full")
    model = TheWorld.from_pretrained(bases.gemma, cosmos_model_name=bases.cosmos, world_image_size=64)
    gemma_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("model.", "lm_head.")))
    model.save_pretrained(partial)
    model.save_pretrained(full, save_full_model=True)

    # 1. partial size
    trainable = [p for p in model.parameters() if p.requires_grad]
    floor = sum(p.numel() * p.element_size() for p in trainable)
    path = os.path.join(partial, "model.safetensors")
    _, header = read_safetensors_header(path)
    size = os.path.getsize(path)
    del model, trainable
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    # 2. load time and memory, fresh processes, interleaved
    paths = [bases.gemma, bases.cosmos, partial, full]
    names = ["direct", "theworld_partial", "theworld_full"]
    for name in names:  # warm-up: page cache, compiled bytecode
        run_variant(name, paths, threads=args.threads)
    results: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            results[name].append(run_variant(name, paths, threads=args.threads))

    def med(name, key):
        return statistics.median(x[key] for x in results[name])

    def med_delta(name):
        return statistics.median(x["peak_kb"] - x["rss_before_kb"] for x in results[name])

    # 3. bytes read from the Cosmos source
    counted = run_variant("theworld_partial", paths, count_cosmos=True, threads=args.threads)
    enc_bytes, vae_file_bytes = vae_encoder_bytes(bases.cosmos)
    cosmos_read = sum(counted["read"].values())
    unaccounted = sorted(set(counted["opened"]) - set(counted["read"]))

    print(f"Checkpoint benchmark: bases '{args.size}' (Gemma {gemma_params / 1e6:.1f}M parameters), "
          f"{args.repeats} interleaved fresh-process loads per variant, median; torch threads {args.threads}")
    print()
    print(f"{'metric':<58} {'value':>12} {'target':>8}  verdict")
    ratio = (size - header) / floor
    print(f"{'partial bytes / floor (header excluded)':<58} {ratio:>12.4f} {'<= 1.01':>8}  {verdict(ratio, 1.01)}")
    print(f"{'  partial file bytes / floor (header included)':<58} {size / floor:>12.4f} {'':>8}  "
          f"({size:,} B = {floor:,} B tensors + {header:,} B header)")
    for name in ("theworld_partial", "theworld_full"):
        w = med(name, "wall") / med("direct", "wall")
        w_min = min(x["wall"] for x in results[name]) / min(x["wall"] for x in results["direct"])
        m = med(name, "peak_kb") / med("direct", "peak_kb")
        d = med_delta(name) / med_delta("direct")
        label = name.replace("theworld_", "")
        if label == "full":
            print("  (a full checkpoint reads and checksums every tensor itself; the target is for partial ones)")
        print(f"{f'AutoModel load ({label}) wall / direct bases':<58} {w:>12.3f} {'<= 1.10':>8}  {verdict(w, 1.10)}")
        print(f"{f'  fastest load ({label}) / fastest direct':<58} {w_min:>12.3f}")
        print(f"{f'AutoModel load ({label}) peak RSS / direct bases':<58} {m:>12.3f} {'<= 1.10':>8}  {verdict(m, 1.10)}")
        print(f"{f'  peak RSS increase over imports ({label}) / direct':<58} {d:>12.3f}")
    c = cosmos_read / enc_bytes
    print(f"{'bytes read from Cosmos / VAE encoder tensor bytes':<58} {c:>12.4f} {'<= 1.05':>8}  {verdict(c, 1.05)}")
    print()
    for name in names:
        print(f"  {name:<18} wall {med(name, 'wall'):7.3f} s   peak RSS {med(name, 'peak_kb') / 1024:8.1f} MiB   "
              f"(+{med_delta(name) / 1024:7.1f} MiB over imports)   all walls: "
              + ", ".join(f"{x['wall']:.3f}" for x in results[name]))
    print("  Cosmos files read: " + ", ".join(
        f"{os.path.relpath(p, bases.cosmos)} {n:,} B" for p, n in sorted(counted["read"].items())))
    print(f"  VAE encoder tensors {enc_bytes:,} B of a {vae_file_bytes:,} B VAE file; files opened without counted "
          f"reads: {unaccounted or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
