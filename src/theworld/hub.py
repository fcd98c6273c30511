"""``theworld push``: upload a saved TheWorld checkpoint folder to the Hugging Face Hub.

Example::

    theworld push ./checkpoints/run1 user/theworld-vsr --private
    theworld push ./checkpoints/run1/checkpoint-2 user/theworld-vsr --path-in-repo checkpoint-2

The folder is checked first (a TheWorld ``config.json``, readable safetensors weights, no pickle files), then uploaded
as one commit with huggingface_hub's ``HfApi.upload_folder``, exactly as ``TheWorld.push_to_hub`` does. Log in with
``hf auth login`` or pass ``--token`` / set ``HF_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .cli import echo as _echo

#: Files never uploaded: pickled weights (TheWorld only ever reads safetensors) and leftovers of interrupted saves.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a checkpoint folder written by TheWorld.save_pretrained")
    parser.add_argument("repo_id", help="hub repo id, e.g. user/theworld-vsr (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (default main)")
    parser.add_argument("--path-in-repo", default=None, help="upload into this subfolder, e.g. checkpoint-2")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--token", default=None, help="hub token (default: the logged-in token / HF_TOKEN)")


def check_checkpoint_folder(folder: str) -> list[str]:
    """Validate a checkpoint folder before upload; return the files that will be uploaded.

    Raises `FileNotFoundError` / `ValueError` naming the problem: no folder, no or foreign ``config.json``, missing or
    corrupt safetensors weights.
    """
    from theworld.modeling_theworld import STAGING_PREFIX, read_safetensors_header, weight_files

    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder; pass the folder that TheWorld.save_pretrained wrote.")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder} has no config.json; it is not a saved TheWorld checkpoint.")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type")
    if model_type not in ("theworld", "the_world"):
        raise ValueError(
            f"{config_path} has model_type {model_type!r}, not 'theworld'; `theworld push` uploads TheWorld checkpoints."
        )
    for path in weight_files(folder, "model"):
        read_safetensors_header(path)  # raises on truncated or corrupt files
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(STAGING_PREFIX))
        for name in sorted(names):
            rel = os.path.relpath(os.path.join(root, name), folder)
            if name.endswith(PICKLE_SUFFIXES):
                continue
            files.append(rel)
    return files


def push_folder(
    folder: str,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    path_in_repo: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
):
    """Check ``folder`` and upload it to ``repo_id`` as one commit; return huggingface_hub's ``CommitInfo``."""
    from theworld.modeling_theworld import upload_checkpoint_folder

    check_checkpoint_folder(folder)
    return upload_checkpoint_folder(
        folder,
        repo_id,
        private=private,
        revision=revision,
        path_in_repo=path_in_repo,
        commit_message=commit_message,
        create_pr=create_pr,
        token=token,
        ignore_patterns=[f"*{suffix}" for suffix in PICKLE_SUFFIXES],
    )


def run(args: argparse.Namespace) -> int:
    try:
        files = check_checkpoint_folder(args.folder)
    except (FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"theworld push: error: {err}\n")
        return 2
    info = push_folder(
        args.folder,
        args.repo_id,
        private=args.private or None,
        revision=args.revision,
        path_in_repo=args.path_in_repo,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        token=args.token,
    )
    _echo(f"Uploaded {len(files)} files from {args.folder} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0
