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
from typing import Any

from . import echo as _echo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="TheWorld checkpoint: local folder or hub repo id")
    parser.add_argument("--checkpoint-name", default=None, help="a checkpoint-N/ subfolder of the folder or repo")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--cache-dir", default=None, help="hub cache folder (default: HF_HUB_CACHE)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


#: Bytes per element of each safetensors dtype.
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}  # fmt: skip


def module_of(key: str) -> str:
    """The module a tensor belongs to, for grouping: ``model.language_model``, ``model.world_projector``, ``lm_head``..."""
    parts = key.split(".")
    depth = 2 if parts[0] == "model" and len(parts) > 2 else 1
    return ".".join(parts[:depth])


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class NotTheWorldError(ValueError):
    """A ``config.json`` of another model type."""


def read_config(config_path: str, where: str):
    """``(raw config dict, TheWorldConfig)`` of a checkpoint's ``config.json`` (0.1.0 and research formats upgraded).

    Nothing from the checkpoint is executed: the json is read and validated by the installed `TheWorldConfig`.
    """
    from theworld.checkpoint_theworld import read_json, research_config
    from theworld.configuration_theworld import TheWorldConfig

    try:
        raw = read_json(config_path)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: config.json is not valid json ({err}); the checkpoint is damaged.") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: config.json holds a {type(raw).__name__}, not a json object; the checkpoint is damaged.")
    model_type = raw.get("model_type")
    if model_type not in ("theworld", "the_world"):
        raise NotTheWorldError(
            f"{where} has model_type {model_type!r}: not a TheWorld checkpoint (model_type 'theworld', or "
            "'the_world' from the earlier research code)."
        )
    try:
        config = research_config(raw) if model_type == "the_world" else TheWorldConfig.from_dict(dict(raw))
    except (TypeError, KeyError) as err:
        raise ValueError(f"{where}: config.json does not describe a valid TheWorld model ({err}).") from None
    return raw, config


def require_checkpoint(source: str, command: str, checkpoint_name: str | None = None, revision: str | None = None) -> None:
    """Refuse, before anything loads, a ``source`` whose ``config.json`` is not a TheWorld checkpoint's (a Gemma 3 base,
    another model, damaged json). A source without ``config.json`` is left to the loader, which names what is missing.
    """
    from theworld.checkpoint_theworld import resolve_file

    hub = {"revision": revision} if revision else {}
    config_path = resolve_file(source, "config.json", checkpoint_name or "", **hub)
    if config_path is None:
        return
    try:
        read_config(config_path, f"{source}/{checkpoint_name}" if checkpoint_name else source)
    except NotTheWorldError as err:
        raise NotTheWorldError(
            f"{err} `theworld {command}` takes TheWorld checkpoints; to start from a Gemma 3 base, build the model in "
            "Python with TheWorld.from_pretrained(gemma, cosmos_model_name=...) and save it."
        ) from None


def describe(
    source: str, checkpoint_name: str | None = None, revision: str | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """Everything ``theworld inspect`` prints, as a dict. Raises `FileNotFoundError` / `ValueError` with the fix."""
    import theworld
    from theworld.checkpoint_theworld import DIGEST_KEY, REMOTE_CODE_FILES, SafetensorsFile, resolve_file, weight_files

    hub = {k: v for k, v in (("revision", revision), ("cache_dir", cache_dir)) if v is not None}
    subfolder = checkpoint_name or ""
    where = f"{source}/{subfolder}" if subfolder else source
    config_path = resolve_file(source, "config.json", subfolder, **hub)
    if config_path is None:
        raise FileNotFoundError(
            f"No config.json at {where}. Pass a TheWorld checkpoint folder or hub repo id (with --checkpoint-name for "
            "a checkpoint-N/ subfolder); with HF_HUB_OFFLINE=1 the repo must be in the hub cache."
        )
    raw, config = read_config(config_path, where)
    legacy = raw.get("model_type") == "the_world"

    modules: dict[str, dict[str, Any]] = {}
    dtypes: dict[str, int] = {}
    metadata: dict[str, str] = {}
    file_info = []
    for path in weight_files(source, "model", subfolder, **hub):
        weights = SafetensorsFile(path)
        meta = weights.metadata()
        tensor_bytes = 0
        for key in weights.keys():
            dtype, shape = weights.dtype(key), weights.shape(key)
            count = 1
            for dim in shape:
                count *= dim
            nbytes = count * DTYPE_BYTES.get(dtype, 0)
            tensor_bytes += nbytes
            entry = modules.setdefault(module_of(key), {"tensors": 0, "parameters": 0, "bytes": 0, "dtypes": []})
            entry["tensors"] += 1
            entry["parameters"] += count
            entry["bytes"] += nbytes
            if dtype not in entry["dtypes"]:
                entry["dtypes"].append(dtype)
            dtypes[dtype] = dtypes.get(dtype, 0) + count
        size = os.path.getsize(path)
        file_info.append(
            {
                "file": os.path.basename(path),
                "bytes": size,
                "header_bytes": size - tensor_bytes,  # the 8-byte length plus the json header
                "tensors": len(weights.keys()),
                "checksum": DIGEST_KEY in meta,
            }
        )
        meta.pop(DIGEST_KEY, None)
        metadata.update(meta)

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
        kind = raw.get("checkpoint_kind") or metadata.get("checkpoint_kind") or "unknown"
    bases = {
        base: {
            "source": entry.get("name"),
            "revision": entry.get("revision"),
            "fingerprinted_files": sorted(entry.get("fingerprints") or {}),
        }
        for base, entry in sorted(config.base_models.items())
    }
    return {
        "source": where,
        "config_path": config_path,
        "model_type": raw.get("model_type"),
        "kind": kind,
        "checkpoint_format_version": None if legacy else int(raw.get("checkpoint_format_version", 1)),
        "written_by_theworld": raw.get("theworld_version"),
        "installed_theworld": theworld.__version__,
        "bases": bases,
        "world": {
            "enable_world": config.enable_world,
            "world_projection_mode": config.world_projection_mode,
            "projection_architecture": config.projection_architecture,
            "world_image_size": config.world_image_size,
            "world_pooling": config.world_pooling,
            "num_world_tokens": config.num_world_tokens,
            "world_placement": config.world_placement,
            "world_attention": config.world_attention,
            "world_resize_mode": config.world_resize_mode,
            "num_world_steps": config.num_world_steps,
        },
        "freeze": {k: getattr(config, k) for k in ("freeze_gemma_vision", "freeze_gemma_language", "freeze_cosmos_vae")},
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
        f"  format: {info['checkpoint_format_version'] or 'earlier research code'} (written by theworld "
        f"{info['written_by_theworld'] or 'unknown'}, installed {info['installed_theworld']})",
        *(f"  {name} base: {_pin(base)}" for name, base in info["bases"].items()),
    ]
    fp = [f"{len(b['fingerprinted_files'])} {name} file(s)" for name, b in info["bases"].items() if b["fingerprinted_files"]]
    lines.append(f"  base fingerprints: {', '.join(fp) if fp else 'none recorded'}")
    w = info["world"]
    lines.append(
        f"  world: enable_world={w['enable_world']} mode={w['world_projection_mode']} "
        f"projector={w['projection_architecture']} image={w['world_image_size']}px pooling={w['world_pooling']} "
        f"tokens={w['num_world_tokens']} placement={w['world_placement']} attention={w['world_attention']} "
        f"resize={w['world_resize_mode']} rollout_steps={w['num_world_steps']}"
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
    info = describe(args.source, args.checkpoint_name, args.revision, args.cache_dir)
    if args.json:
        _echo(json.dumps(info, indent=2))
    else:
        _echo(format_report(info))
    return 0
