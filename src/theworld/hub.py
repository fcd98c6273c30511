"""The hub side of TheWorld checkpoints that is not shipped as remote code: the model card and folder uploads.

* `model_card` / `write_model_card`: the ``README.md`` written into every checkpoint (registered by
  ``import theworld`` as a `theworld.checkpoint_theworld.SAVE_HOOKS` entry, so the card stays out of the
  remote-code files; a checkpoint saved by remote code alone has no card).
* `check_checkpoint_folder` / `push_folder` / `upload_checkpoint_folder`: validate a saved folder (a TheWorld
  ``config.json``, readable safetensors weights, no pickle files) and upload it as one commit with huggingface_hub's
  ``HfApi.upload_folder``. ``theworld push`` (`theworld.cli.push`) and ``TheWorld.push_to_hub`` use them.

Example::

    theworld push ./checkpoints/run1 user/theworld-vsr --private

Log in with ``hf auth login`` or pass ``--token`` / set ``HF_TOKEN``.
"""

from __future__ import annotations

import json
import logging
import os

from . import checkpoint_theworld

logger = logging.getLogger(__name__)

#: Files never uploaded: pickled weights (TheWorld only ever reads safetensors) and leftovers of interrupted saves.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_checkpoint_folder(folder: str) -> list[str]:
    """Validate a checkpoint folder before upload; return the files that will be uploaded.

    Raises `FileNotFoundError` / `ValueError` naming the problem: no folder, no or foreign ``config.json``, missing or
    corrupt safetensors weights.
    """
    from theworld.checkpoint_theworld import SafetensorsFile, weight_files

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
        SafetensorsFile(path)  # raises on truncated or corrupt files
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
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


def upload_checkpoint_folder(
    folder: str,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    path_in_repo: str | None = None,
    ignore_patterns: list[str] | None = None,
    tags: list[str] | None = None,
):
    """Create ``repo_id`` (if needed) and upload ``folder`` as one commit through huggingface_hub; return its
    ``CommitInfo``. Hidden entries (leftovers of interrupted saves) are never uploaded. ``tags`` are accepted for
    `PreTrainedModel.push_to_hub`'s signature; TheWorld's model card carries its own tags."""
    from huggingface_hub import HfApi

    if tags:
        logger.info("push_to_hub(tags=%s): TheWorld's model card carries its own tags; not sent separately.", tags)
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or "Upload TheWorld checkpoint",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
        path_in_repo=path_in_repo,
        ignore_patterns=[".*", ".*/**", *(ignore_patterns or [])],
    )


def model_card(model, kind: str, saved: dict) -> str:
    """A ``README.md`` model card: base models, what was trained, parameter counts and how to load it."""
    from theworld.checkpoint_theworld import parameter_counts

    cfg = model.config
    trainable, total = parameter_counts(model)
    pct = 100.0 * trainable / max(total, 1)
    nbytes = sum(t.numel() * t.element_size() for t in saved.values())
    modules: dict[str, int] = {}
    for key, tensor in saved.items():
        parts = key.split(".")
        top = ".".join(parts[:2]) if parts[0] == "model" else parts[0]
        modules[top] = modules.get(top, 0) + tensor.numel()
    rows = "\n".join(f"| `{m}` | {n:,} |" for m, n in sorted(modules.items())) or "| (every weight: full checkpoint) | |"
    return f"""---
library_name: transformers
pipeline_tag: image-text-to-text
base_model:
- {cfg.gemma_model_name}
- {cfg.cosmos_model_name}
tags:
- theworld
- world-model
- custom_code
---

# TheWorld checkpoint ({kind})

Gemma 3 fused with the Cosmos-Predict2 world model: Cosmos latents of each input image become
{cfg.num_world_tokens} world tokens between `<start_of_world>` and `<end_of_world>`.

| | |
|---|---|
| Gemma base | `{cfg.gemma_model_name}` @ `{cfg.gemma_revision or "local"}` |
| Cosmos base | `{cfg.cosmos_model_name}` @ `{cfg.cosmos_revision or "local"}` |
| world tokens | {cfg.world_projection_mode} / {cfg.projection_architecture}, image {cfg.world_image_size}px, pooling {cfg.world_pooling}, rollout steps {cfg.num_world_steps}, {cfg.world_attention} attention, placed {cfg.world_placement} |
| frozen | vision={cfg.freeze_gemma_vision}, language={cfg.freeze_gemma_language}, cosmos_vae={cfg.freeze_cosmos_vae} |
| trainable parameters | {trainable:,} of {total:,} ({pct:.4f}%) |
| saved tensors | {sum(t.numel() for t in saved.values()):,} elements, {nbytes:,} bytes |

## What was trained

| module | parameters saved |
|---|---|
{rows}

## Load

```python
from transformers import AutoModel, AutoProcessor

# Pin the revision: trust_remote_code runs this repository's Python code.
model = AutoModel.from_pretrained("REPO_OR_DIR", trust_remote_code=True, revision="COMMIT_SHA")
processor = AutoProcessor.from_pretrained("REPO_OR_DIR", trust_remote_code=True, revision="COMMIT_SHA")
```

With `pip install theworld`, no remote code is needed: `import theworld`, then `AutoModel.from_pretrained("REPO_OR_DIR")`.
A partial checkpoint loads its base models (`{cfg.gemma_model_name}` and the VAE encoder of
`{cfg.cosmos_model_name}`) at the pinned revisions and checks their fingerprints.
"""


def write_model_card(model, folder: str, kind: str, saved: dict) -> None:
    """Write ``README.md`` into a checkpoint folder being saved (registered as a save hook by ``import theworld``)."""
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(model, kind, saved))


# save_pretrained(push_to_hub=True) and push_to_hub upload through this module (hub upload lives outside the
# remote-code files); it is imported by the first save, whose model-card hook lives here.
if upload_checkpoint_folder not in checkpoint_theworld.UPLOAD_HOOKS:
    checkpoint_theworld.UPLOAD_HOOKS.append(upload_checkpoint_folder)
