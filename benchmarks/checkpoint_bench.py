"""Checkpoint benchmark (DESIGN §8 targets beside the numbers).

1. partial checkpoint bytes / floor: the stored tensor bytes of a partial checkpoint over (trainable elements x element
   size), target <= 1.01 (the file with its header is reported beside it);
2. ``AutoModel.from_pretrained`` of a TheWorld checkpoint / loading its base models directly
   (``Gemma3ForConditionalGeneration.from_pretrained`` + ``AutoencoderKLWan.from_pretrained(cosmos, subfolder="vae")``):
   wall time and peak RSS, target <= 1.10 each. Every load runs in its own fresh subprocess (imports done before the
   clock starts), variants interleaved, after one untimed warm-up each (so all read from the page cache); the median
   over ``--repeats`` is reported. Peak RSS is the process's ``VmHWM`` (its imports included, the same libraries in
   every variant; ``ru_maxrss`` is not used because Linux carries it over from the parent across fork + exec); the
   peak increase over the post-import RSS is shown too;
3. bytes read from the Cosmos source during a TheWorld checkpoint load / the VAE encoder's tensor bytes, target
   <= 1.05. Every read goes through the safetensors library (memory-mapped), so reads are measured in the page cache:
   each file under the Cosmos folder is evicted (``posix_fadvise(DONTNEED)``) before the load, and what is resident
   afterwards (``mincore``) was read by the load (kernel read-ahead included). The DiT, the text encoder and the rest
   must stay at 0 bytes.

The bases are generated locally (``theworld.tiny.build_tiny_bases(..., size="base100m")``: a ~116M-parameter Gemma 3
and a Cosmos pipeline with a 14M-parameter VAE), so nothing is downloaded.

    python benchmarks/checkpoint_bench.py [--out /tmp/ckpt_bench] [--repeats 5] [--size base100m]
"""

from __future__ import annotations

import argparse
import json
import math
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
    import ctypes, ctypes.util, json, mmap, os, sys, time
    import torch
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    GEMMA, COSMOS, PARTIAL, FULL = sys.argv[1:5]
    COUNT_COSMOS = sys.argv[5] == "1"
    # Every variant imports the same libraries before the clock starts.
    from diffusers import AutoencoderKLWan
    from transformers import AutoModel, Gemma3ForConditionalGeneration
    {variant}

    def status_kb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]

    def resident_bytes(path):
        size = os.path.getsize(path)
        if size == 0:
            return 0
        fd = os.open(path, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            libc.munmap(ctypes.c_void_p(addr), size)
            return min(size, sum(v & 1 for v in vec) * mmap.PAGESIZE)
        finally:
            os.close(fd)

    cosmos_files, requested, opened, RECORDING = [], {{}}, set(), False
    if COUNT_COSMOS:
        root = os.path.realpath(COSMOS) + os.sep
        for folder, _, names in os.walk(root):
            cosmos_files += [os.path.join(folder, n) for n in names]
        for path in cosmos_files:
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # out of the page cache: what comes back was read
            os.close(fd)

        def audit(event, args):
            if RECORDING and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                path = os.path.realpath(os.fsdecode(args[0]))
                if path.startswith(root):
                    opened.add(path)
        sys.addaudithook(audit)
        # Which tensors the load asks safetensors for (every read of TheWorld goes through safe_open in
        # checkpoint_theworld): recorded by a pass-through wrapper, nothing else changed.
        import theworld.checkpoint_theworld as ckpt
        real_safe_open = ckpt.safe_open

        class Recorded:
            def __init__(self, path, *args, **kwargs):
                self._handle, self._path = real_safe_open(path, *args, **kwargs), os.path.realpath(path)
            def get_slice(self, key):
                if RECORDING:
                    requested.setdefault(self._path, set()).add(key)
                return self._handle.get_slice(key)
            def get_tensor(self, key):
                if RECORDING:
                    requested.setdefault(self._path, set()).add(key)
                return self._handle.get_tensor(key)
            def __getattr__(self, name):
                return getattr(self._handle, name)
        ckpt.safe_open = Recorded
    evicted = {{p: resident_bytes(p) for p in cosmos_files}}

    before = status_kb("VmRSS")
    RECORDING = COUNT_COSMOS
    start = time.perf_counter()
    model = load()
    wall = time.perf_counter() - start
    RECORDING = False
    # The peak RSS of this process image: VmHWM. (ru_maxrss would be wrong here: Linux carries it over from the
    # parent across fork + exec, so a child of a large benchmark process reports the parent's peak.)
    peak = max(status_kb("VmHWM"), 0)
    read = {{p: resident_bytes(p) for p in cosmos_files}}
    requested = {{p: sorted(keys) for p, keys in requested.items() if p.startswith(os.path.realpath(COSMOS))}}
    print("RESULT " + json.dumps({{"wall": wall, "peak_kb": peak, "rss_before_kb": before, "read": read,
                                   "resident_before": evicted, "requested": requested, "opened": sorted(opened)}}))
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


def requested_bytes(counted: dict) -> tuple[int, dict[str, int]]:
    """Bytes the load asked for from the Cosmos folder: the whole of every non-safetensors file it opened (json
    configs), and for each safetensors file its header plus the tensors it requested."""
    from theworld.checkpoint_theworld import SafetensorsFile

    sizes = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
    per_file = {}
    for path in counted["opened"]:
        if not path.endswith(".safetensors"):
            per_file[path] = os.path.getsize(path)
    for path in set(counted["opened"]) | set(counted["requested"]):
        if path.endswith(".safetensors"):
            f = SafetensorsFile(path)
            nbytes = {k: math.prod(f.shape(k)) * sizes[f.dtype(k)] for k in f.keys()}
            header = os.path.getsize(path) - sum(nbytes.values())
            per_file[path] = header + sum(nbytes[k] for k in counted["requested"].get(path, []))
    return sum(per_file.values()), per_file


def vae_encoder_bytes(cosmos: str) -> tuple[int, int]:
    """(bytes of the VAE encoder tensors TheWorld uses, whole VAE file bytes) of the Cosmos VAE."""
    from theworld.checkpoint_theworld import SafetensorsFile
    from theworld.world_encoder_theworld import is_unused_diffusers_key

    sizes = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
    path = os.path.join(cosmos, "vae", "diffusion_pytorch_model.safetensors")
    f = SafetensorsFile(path)
    enc = 0
    for key in f.keys():
        if key.startswith(("encoder.", "quant_conv.")) and not is_unused_diffusers_key(key):
            enc += math.prod(f.shape(key)) * sizes[f.dtype(key)]
    return enc, os.path.getsize(path)


def read_ahead_kb() -> str:
    """The largest block-device read-ahead setting (what the kernel reads around a memory-mapped page fault)."""
    values = []
    for name in os.listdir("/sys/block") if os.path.isdir("/sys/block") else []:
        try:
            with open(f"/sys/block/{name}/queue/read_ahead_kb") as f:
                values.append(int(f.read()))
        except (OSError, ValueError):
            continue
    return str(max(values)) if values else "unknown"


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
    from theworld.checkpoint_theworld import SafetensorsFile
    from theworld.tiny import build_tiny_bases

    bases = build_tiny_bases(os.path.join(out, "bases"), size=args.size)
    partial, full = os.path.join(out, "partial"), os.path.join(out, "full")
    model = TheWorld.from_pretrained(bases.gemma, cosmos_model_name=bases.cosmos, world_image_size=64)
    gemma_params = sum(
        p.numel() for n, p in model.named_parameters() if n.startswith(("model.language_model.", "model.vision_tower."))
    )
    model.save_pretrained(partial)
    model.save_pretrained(full, save_full_model=True)

    # 1. partial size
    trainable = [p for p in model.parameters() if p.requires_grad]
    floor = sum(p.numel() * p.element_size() for p in trainable)
    path = os.path.join(partial, "model.safetensors")
    stored = SafetensorsFile(path)
    element = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
    data = sum(math.prod(stored.shape(k)) * element[stored.dtype(k)] for k in stored.keys())
    size = os.path.getsize(path)
    header = size - data
    del model, trainable, stored
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
    cosmos_requested, requested_per_file = requested_bytes(counted)
    cosmos_read = sum(counted["read"].values())
    not_evicted = sum(counted["resident_before"].values())

    print(f"Checkpoint benchmark: bases '{args.size}' (Gemma {gemma_params / 1e6:.1f}M parameters), "
          f"{args.repeats} interleaved fresh-process loads per variant, median; torch threads {args.threads}")
    print()
    print(f"{'metric':<58} {'value':>12} {'target':>8}  verdict")
    ratio = (size - header) / floor
    print(f"{'partial tensor bytes / floor':<58} {ratio:>12.4f} {'<= 1.01':>8}  {verdict(ratio, 1.01)}")
    print(f"{'  partial file bytes / floor (header included)':<58} {size / floor:>12.4f} {'':>8}  "
          f"({size:,} B = {floor:,} B tensors + {header:,} B header)")
    for name in ("theworld_partial", "theworld_full"):
        w = med(name, "wall") / med("direct", "wall")
        w_min = min(x["wall"] for x in results[name]) / min(x["wall"] for x in results["direct"])
        m = med(name, "peak_kb") / med("direct", "peak_kb")
        d = med_delta(name) / med_delta("direct")
        label = name.replace("theworld_", "")
        if label == "full":
            print("  (a full checkpoint is every weight checked for NaN/Inf on load; the target is for partial ones)")
        print(f"{f'AutoModel load ({label}) wall / direct bases':<58} {w:>12.3f} {'<= 1.10':>8}  {verdict(w, 1.10)}")
        print(f"{f'  fastest load ({label}) / fastest direct':<58} {w_min:>12.3f}")
        print(f"{f'AutoModel load ({label}) peak RSS / direct bases':<58} {m:>12.3f} {'<= 1.10':>8}  {verdict(m, 1.10)}")
        print(f"{f'  peak RSS increase over imports ({label}) / direct':<58} {d:>12.3f}")
    c = cosmos_requested / enc_bytes
    print(f"{'bytes read from Cosmos / VAE encoder tensor bytes':<58} {c:>12.4f} {'<= 1.05':>8}  {verdict(c, 1.05)}")
    print(f"{'  page cache filled from Cosmos / encoder bytes':<58} {cosmos_read / enc_bytes:>12.4f}           "
          f"(kernel read-ahead included: {read_ahead_kb()} kB here)")
    print()
    for name in names:
        print(f"  {name:<18} wall {med(name, 'wall'):7.3f} s   peak RSS {med(name, 'peak_kb') / 1024:8.1f} MiB   "
              f"(+{med_delta(name) / 1024:7.1f} MiB over imports)   all walls: "
              + ", ".join(f"{x['wall']:.3f}" for x in results[name]))
    print("  Cosmos bytes requested: " + ", ".join(
        f"{os.path.relpath(p, os.path.realpath(bases.cosmos))} {n:,} B" for p, n in sorted(requested_per_file.items())))
    print("  Cosmos files in the page cache after the load: " + ", ".join(
        f"{os.path.relpath(p, os.path.realpath(bases.cosmos))} {n:,} B" for p, n in sorted(counted["read"].items())))
    print(f"  VAE encoder tensors {enc_bytes:,} B of a {vae_file_bytes:,} B VAE file; resident before the load "
          f"(after eviction): {not_evicted:,} B")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
