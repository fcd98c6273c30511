"""``theworld inspect``: describe a TheWorld checkpoint (local folder or hub repo) without loading its weights.

Example::

    theworld inspect ./checkpoints/run1
    theworld inspect user/theworld-vsr --checkpoint-name checkpoint-2 --revision main --json

It prints the checkpoint kind and format, the base sources and their pinned commits, the trained modules with their
parameter counts and bytes, the tensor dtypes, and whether the checkpoint's code files are byte-identical to the
installed ``theworld`` package (what ``trust_remote_code=True`` would run versus what ``import theworld`` runs). Only
the safetensors headers are read, so it is instant even for full checkpoints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

from . import echo as _echo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="TheWorld checkpoint: local folder or hub repo id")
    parser.add_argument("--checkpoint-name", default=None, help="a checkpoint-N/ subfolder of the folder or repo")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--cache-dir", default=None, help="hub cache folder (default: HF_HUB_CACHE)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def module_of(key: str) -> str:
    """The module a tensor belongs to, for grouping: ``model.language_model``, ``world_projector``, ..."""
    parts = key.split(".")
    depth = 2 if parts[0] in ("model", "cosmos_vae", "world_rollout") and len(parts) > 2 else 1
    return ".".join(parts[:depth])


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(
    source: str, checkpoint_name: str | None = None, revision: str | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """Everything ``theworld inspect`` prints, as a dict. Raises `FileNotFoundError` / `ValueError` with the fix."""
    import theworld
    from theworld.modeling_theworld import (
        DIGEST_KEY,
        REMOTE_CODE_FILES,
        read_safetensors_header,
        resolve_file,
        weight_files,
    )

    hub = {k: v for k, v in (("revision", revision), ("cache_dir", cache_dir)) if v is not None}
    subfolder = checkpoint_name or ""
    where = f"{source}/{subfolder}" if subfolder else source
    config_path = resolve_file(source, "config.json", subfolder, **hub)
    if config_path is None:
        raise FileNotFoundError(
            f"No config.json at {where}. Pass a TheWorld checkpoint folder or hub repo id (with --checkpoint-name for "
            "a checkpoint-N/ subfolder); with HF_HUB_OFFLINE=1 the repo must be in the hub cache."
        )
    with open(config_path) as f:
        config = json.load(f)
    model_type = config.get("model_type")
    if model_type not in ("theworld", "the_world"):
        raise ValueError(
            f"{where} has model_type {model_type!r}: not a TheWorld checkpoint. `theworld inspect` describes "
            "checkpoints written by TheWorld.save_pretrained (model_type 'theworld') or by the earlier research code "
            "('the_world')."
        )
    legacy = model_type == "the_world"

    files = weight_files(source, "model", subfolder, **hub)
    modules: dict[str, dict[str, Any]] = {}
    dtypes: dict[str, int] = {}
    metadata: dict[str, str] = {}
    file_info = []
    for path in files:
        header, data_offset = read_safetensors_header(path)
        meta = dict(header.pop("__metadata__", None) or {})
        file_info.append(
            {
                "file": os.path.basename(path),
                "bytes": os.path.getsize(path),
                "header_bytes": data_offset,
                "tensors": len(header),
                "checksum": DIGEST_KEY in meta,
            }
        )
        meta.pop(DIGEST_KEY, None)
        metadata.update(meta)
        for key, info in header.items():
            count = 1
            for dim in info["shape"]:
                count *= dim
            nbytes = info["data_offsets"][1] - info["data_offsets"][0]
            entry = modules.setdefault(module_of(key), {"tensors": 0, "parameters": 0, "bytes": 0, "dtypes": []})
            entry["tensors"] += 1
            entry["parameters"] += count
            entry["bytes"] += nbytes
            if info["dtype"] not in entry["dtypes"]:
                entry["dtypes"].append(info["dtype"])
            dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + count

    installed_dir = os.path.dirname(os.path.abspath(theworld.__file__))
    code = {}
    for name in REMOTE_CODE_FILES:
        shipped = resolve_file(source, name, subfolder, **hub)
        if shipped is None:
            code[name] = "missing"
            continue
        local = os.path.join(installed_dir, name)
        if not os.path.exists(local):
            code[name] = "not in the installed package"
        else:
            code[name] = "matches" if _sha256(shipped) == _sha256(local) else "differs"

    if legacy:
        kind = "partial (earlier research format, converted on load)"
    else:
        kind = config.get("checkpoint_kind") or metadata.get("checkpoint_kind") or "unknown"
    fingerprints = config.get("base_fingerprints") or {}
    return {
        "source": where,
        "config_path": config_path,
        "model_type": model_type,
        "kind": kind,
        "checkpoint_format_version": config.get("checkpoint_format_version"),
        "written_by_theworld": config.get("theworld_version"),
        "installed_theworld": theworld.__version__,
        "bases": {
            "gemma": {
                "source": config.get("gemma_model_name"),
                "revision": config.get("gemma_revision"),
                "fingerprinted_files": sorted(fingerprints.get("gemma") or {}),
            },
            "cosmos": {
                "source": config.get("cosmos_model_name"),
                "revision": config.get("cosmos_revision"),
                "fingerprinted_files": sorted(
                    name for part, names in fingerprints.items() if part.startswith("cosmos") for name in names
                ),
            },
        },
        "world": {
            "enable_world": config.get("enable_world", True),
            "world_projection_mode": config.get("world_projection_mode"),
            "projection_architecture": config.get("projection_architecture"),
            "world_image_size": config.get("world_image_size", 512 if legacy else None),
            "num_world_steps": config.get("num_world_steps", 0),
        },
        "freeze": {k: config.get(k) for k in ("freeze_gemma_vision", "freeze_gemma_language", "freeze_cosmos_vae")},
        "modules": dict(sorted(modules.items())),
        "parameters": sum(m["parameters"] for m in modules.values()),
        "tensor_bytes": sum(m["bytes"] for m in modules.values()),
        "dtypes": dtypes,
        "files": file_info,
        "code_files": code,
    }


def _pin(base: dict) -> str:
    if base["revision"]:
        return f"{base['source']} @ {base['revision']}"
    return f"{base['source']} (no commit pinned: a local path, or the hub revision was unknown)"


def format_report(info: dict[str, Any]) -> str:
    """The human-readable report of `describe`."""
    lines = [
        f"TheWorld checkpoint: {info['source']}",
        f"  kind: {info['kind']}",
        f"  format: {info['checkpoint_format_version']} (written by theworld {info['written_by_theworld']}, "
        f"installed {info['installed_theworld']})",
        f"  gemma base: {_pin(info['bases']['gemma'])}",
        f"  cosmos base: {_pin(info['bases']['cosmos'])}",
    ]
    fp = [f"{n} gemma" for n in [len(info["bases"]["gemma"]["fingerprinted_files"])] if n]
    fp += [f"{n} cosmos" for n in [len(info["bases"]["cosmos"]["fingerprinted_files"])] if n]
    lines.append(f"  base fingerprints: {', '.join(f + ' file(s)' for f in fp) if fp else 'none recorded'}")
    w = info["world"]
    lines.append(
        f"  world: enable_world={w['enable_world']} mode={w['world_projection_mode']} "
        f"projector={w['projection_architecture']} image={w['world_image_size']}px rollout_steps={w['num_world_steps']}"
    )
    lines.append("  frozen: " + ", ".join(f"{k.removeprefix('freeze_')}={v}" for k, v in info["freeze"].items()))
    dtypes = ", ".join(f"{d} ({n:,} params)" for d, n in sorted(info["dtypes"].items()))
    lines.append(f"  dtype: {dtypes or 'no tensors'}")
    lines.append(f"  saved modules ({info['parameters']:,} parameters, {info['tensor_bytes']:,} bytes):")
    width = max((len(m) for m in info["modules"]), default=10)
    for name, m in info["modules"].items():
        lines.append(
            f"    {name:<{width}}  {m['parameters']:>14,} params  {m['bytes']:>15,} bytes  {'/'.join(m['dtypes'])}"
        )
    lines.append("  files:")
    for f in info["files"]:
        check = "checksum recorded" if f["checksum"] else "no checksum"
        lines.append(f"    {f['file']}: {f['bytes']:,} bytes ({f['tensors']} tensors, header {f['header_bytes']:,}, {check})")
    lines.append(f"  code files vs installed theworld {info['installed_theworld']}:")
    for name, status in info["code_files"].items():
        lines.append(f"    {name}: {status}")
    if any(s == "differs" for s in info["code_files"].values()):
        lines.append(
            "  note: with `import theworld` the installed code runs; trust_remote_code=True without theworld runs the "
            "checkpoint's own files."
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        info = describe(args.source, args.checkpoint_name, args.revision, args.cache_dir)
    except (FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"theworld inspect: error: {err}\n")
        return 2
    if args.json:
        _echo(json.dumps(info, indent=2))
    else:
        _echo(format_report(info))
    return 0
