"""The published configs of TheWorld's two real base models, shipped as package data (no weights, no network).

* ``google/gemma-3-4b-it``: ``config.json`` (exactly as published: minimal, the rest are transformers' defaults) and
  ``processor_facts.json`` (tokenizer and processor facts: embedding rows, special token ids, 256 SigLIP tokens per
  896 px image, the chat template's pieces around an image and a question, the world token ids).
* ``nvidia/Cosmos-Predict2-2B-Video2World``: ``model_index.json``, ``vae/config.json`` (the Wan 2.1 VAE),
  ``transformer/config.json`` (the 2B Video2World DiT) and ``scheduler/scheduler_config.json``.

Where every value comes from is in ``SOURCES.md`` next to this file. They let the real architectures be built on the
meta device (``theworld plan``, tests, ``benchmarks/real_shape_bench.py``) without the gated hub repos.

Each repo lives in a folder named like the hub cache names it (``google--gemma-3-4b-it``), holding the files at their
paths in the repo.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = [
    "KNOWN_REPOS",
    "has_real_config",
    "load_real_config",
    "real_config_files",
    "gemma_processor_facts",
]

#: Hub repo ids whose configs ship with the package.
KNOWN_REPOS: tuple[str, ...] = ("google/gemma-3-4b-it", "nvidia/Cosmos-Predict2-2B-Video2World")


def _canonical(repo_id: str) -> str | None:
    """The shipped spelling of ``repo_id`` (hub ids are case-insensitive), or ``None``."""
    if not isinstance(repo_id, str):
        return None
    for known in KNOWN_REPOS:
        if repo_id.strip().lower() == known.lower():
            return known
    return None


def _folder(repo_id: str):
    known = _canonical(repo_id)
    if known is None:
        raise KeyError(
            f"No shipped config for {repo_id!r}; the package ships the configs of {', '.join(KNOWN_REPOS)}. Pass a "
            "local folder or a repo in the hub cache instead."
        )
    return resources.files(__name__).joinpath(known.replace("/", "--"))


def has_real_config(repo_id: str) -> bool:
    """Whether the configs of hub repo ``repo_id`` ship with the package."""
    return _canonical(repo_id) is not None


def real_config_files(repo_id: str) -> list[str]:
    """The shipped files of ``repo_id``, as paths inside the repo (``"vae/config.json"`` ...), sorted."""
    root = _folder(repo_id)
    found: list[str] = []

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}{child.name}"
            if child.is_dir():
                walk(child, name + "/")
            elif child.name.endswith(".json"):
                found.append(name)

    walk(root, "")
    return sorted(found)


def load_real_config(repo_id: str, filename: str = "config.json", subfolder: str = "") -> dict[str, Any]:
    """A shipped JSON file of ``repo_id`` (``filename`` inside ``subfolder``), as a fresh dict.

    Raises:
        KeyError: ``repo_id`` is not one of `KNOWN_REPOS`.
        FileNotFoundError: the repo has no such shipped file (the message lists those it has).
    """
    path = _folder(repo_id)
    for part in [p for p in subfolder.split("/") if p] + [filename]:
        path = path.joinpath(part)
    if not path.is_file():
        inside = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
        raise FileNotFoundError(
            f"{_canonical(repo_id)} ships no {inside}; shipped files: {', '.join(real_config_files(repo_id))}."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def gemma_processor_facts(repo_id: str = "google/gemma-3-4b-it") -> dict[str, Any]:
    """Tokenizer and processor facts of a shipped Gemma 3 repo (``processor_facts.json``; see its ``_comment``)."""
    return load_real_config(repo_id, "processor_facts.json")
