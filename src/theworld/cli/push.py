"""``theworld push``: upload a saved TheWorld checkpoint folder to the Hugging Face Hub.

Examples::

    theworld push ./checkpoints/run1 user/theworld-vsr --private
    theworld push ./checkpoints/run1/checkpoint-2 user/theworld-vsr --path-in-repo checkpoint-2

The folder is checked first (a TheWorld ``config.json``, readable safetensors weights, no pickle files), then uploaded
as one commit with huggingface_hub's ``HfApi.upload_folder`` (`theworld.hub.push_folder`). Log in with
``hf auth login`` or pass ``--token`` / set ``HF_TOKEN``.
"""

from __future__ import annotations

import argparse

from . import echo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a checkpoint folder written by TheWorld.save_pretrained")
    parser.add_argument("repo_id", help="hub repo id, e.g. user/theworld-vsr (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (default main)")
    parser.add_argument("--path-in-repo", default=None, help="upload into this subfolder, e.g. checkpoint-2")
    parser.add_argument("--commit-message", default=None, help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--token", default=None, help="hub token (default: the logged-in token / HF_TOKEN)")


def run(args: argparse.Namespace) -> int:
    from theworld.hub import check_checkpoint_folder, push_folder

    files = check_checkpoint_folder(args.folder)
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
    echo(f"Uploaded {len(files)} files from {args.folder} to {args.repo_id}: {getattr(info, 'commit_url', info)}")
    return 0


__all__ = ["add_arguments", "run"]
