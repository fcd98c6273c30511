"""Train TheWorld (or a Gemma-only baseline) on VSR-style data with ``accelerate``: ``theworld train --config FILE``.

The whole run is described by a :class:`TrainConfig` read from yaml or json (every field documented in
the README (section "Training and evaluating TheWorld") and in ``theworld train --list-fields``; unknown fields and bad values are errors). The same
command runs on one process or under ``accelerate launch`` (DDP; gloo on CPU).

Design (details in the README (section "Training and evaluating TheWorld")):

* **Data order** is a pure function of ``(seed, step)``: a seeded permutation per epoch, concatenated, cut into
  global batches of ``per_device_batch_size x gradient_accumulation_steps x num_processes`` examples. Process ``r``
  takes, for micro-step ``j``, the slice ``[(j * P + r) * b, (j * P + r + 1) * b)``. Resuming needs only the step, and
  the same global batch gives the same examples whatever the process count.
* **Loss** is the summed cross-entropy of the supervised (answer) tokens divided by the number of supervised tokens in
  the *whole* accumulated global batch (counted up front and all-reduced), times the process count to undo DDP's
  gradient averaging. ``k`` micro-batches therefore produce the gradient of one ``k``-times batch. Only the logits of
  supervised positions are computed (``logits_to_keep`` with a boolean mask).
* **Precision**: trainable parameters are kept in float32 (master weights); ``mixed_precision: bf16`` runs the
  forward under autocast; frozen base weights may be stored in ``dtype``.
* **Cached world latents**: while the VAE is frozen, every distinct image is encoded once into a
  :class:`~theworld.latent_cache.LatentCache` and training reads the latents.
* **Checkpoints**: ``output_dir/checkpoint-N/`` is a partial TheWorld checkpoint (``AutoModel.from_pretrained`` loads
  it) plus ``training_state/`` with everything needed to continue exactly: optimizer state tensors in
  ``optimizer.safetensors`` with their structure in ``trainer_state.json``, the scheduler state and step (json), and
  per-process RNG states (``rng_state_R.safetensors`` + ``.json``). Nothing is pickled, so resuming never unpickles
  data. The final model goes to ``output_dir/final/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .cli import echo as _echo

logger = logging.getLogger(__name__)

STATE_FORMAT_VERSION = 1
STATE_DIR = "training_state"
LR_SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("auto", "no", "bf16")
DTYPES = ("float32", "bfloat16", "float16")
PRESET_COMPONENTS = ("projector", "lm", "vision", "vae")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything one training run needs. Build it with :func:`load_train_config` (yaml/json) or directly."""

    # ------------------------------------------------------------------ model
    output_dir: str = _f(None, "Folder for checkpoints, metrics.jsonl, loss_curve.png and final/ (required).")
    gemma_model_name: str | None = _f(
        None, "Gemma 3 base model (hub id or folder) to build a fresh TheWorld around. Required unless init_from."
    )
    cosmos_model_name: str | None = _f(
        None, "Cosmos-Predict2 pipeline (hub id or folder) for the world VAE. Required for a fresh model with the world."
    )
    init_from: str | None = _f(
        None,
        "A TheWorld checkpoint (folder or hub id) to start from: stage 2 of a multi-stage run. Its weights are loaded "
        "with TheWorld.from_pretrained and the freeze flags of freeze_preset; optimizer and schedule start fresh.",
    )
    enable_world: bool | None = _f(
        None, "Use world tokens (False = Gemma-only baseline). Default: True for a fresh model, the checkpoint's value "
        "with init_from."
    )
    world_image_size: int | None = _f(None, "Side of the image fed to the VAE, in pixels (default: the model's, 512).")
    world_projection_mode: str | None = _f(None, "'spatial' or 'channel' (default: the model's, spatial).")
    projection_architecture: str | None = _f(None, "'mlp', 'mlp_no_final_gelu' or 'linear' (default: mlp).")
    world_pooling: int | None = _f(None, "Average-pooling factor of the latent grid before tokenisation (default 1).")
    num_world_steps: int | None = _f(None, "Future latent frames predicted by the Cosmos rollout (default 0).")
    random_projection_init: bool | None = _f(None, "Initialise the world projector with N(0, initializer_range).")
    freeze_preset: str = _f(
        "projector",
        "What trains, as '+'-joined parts of projector (world projector and boundary embeddings; always trained with "
        "the world), lm (language model and lm_head), vision (SigLIP and its projector), vae (Cosmos VAE encoder), or "
        "'all'. Examples: projector, projector+lm, lm (a Gemma-only baseline).",
    )
    dtype: str = _f("float32", "Storage dtype of the frozen base weights: float32, bfloat16 or float16. Trainable "
                    "parameters are always float32.")
    # ------------------------------------------------------------------ data
    train_file: str | None = _f(None, "Training data: a VSR jsonl file (rows with image, caption, label[, relation]).")
    hub_dataset: str | None = _f(
        None, "Training data through `datasets` instead: a hub id (e.g. cambridgeltl/vsr_random) or local folder."
    )
    hub_split: str = _f("train", "Split of hub_dataset used for training.")
    image_dir: str | None = _f(
        None, "Folder the rows' image paths / image_link file names are resolved in (default: the jsonl's folder)."
    )
    max_train_samples: int | None = _f(None, "Use only the first N training examples.")
    eval_file: str | None = _f(None, "Validation jsonl, scored every eval_steps and at the end.")
    eval_hub_split: str | None = _f(None, "Validation split of hub_dataset (instead of eval_file).")
    max_eval_samples: int | None = _f(None, "Use only the first N validation examples.")
    eval_steps: int = _f(0, "Evaluate (score mode) every N optimizer steps; 0 = only at the end (if there is data).")
    supervise_end_of_turn: bool = _f(False, "Also put loss on <end_of_turn> after the answer (default: answer only).")
    # ------------------------------------------------------------------ optimisation
    max_steps: int | None = _f(None, "Optimizer steps to run. Exactly one of max_steps and num_epochs is required.")
    num_epochs: float | None = _f(None, "Epochs to run (converted to ceil(epochs * N / global batch) steps).")
    per_device_batch_size: int = _f(8, "Examples per micro-batch on each process.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(1e-4, "Peak learning rate (AdamW).")
    weight_decay: float = _f(0.0, "AdamW weight decay (matrices only; biases, norms and embeddings get none).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.999, "AdamW beta2.")
    adam_epsilon: float = _f(1e-8, "AdamW epsilon.")
    lr_scheduler: str = _f("cosine", "Decay after warmup: cosine, linear or constant.")
    warmup_steps: int = _f(0, "Linear warmup steps (from 0 to learning_rate).")
    warmup_ratio: float = _f(0.0, "Warmup as a fraction of the steps (use warmup_steps or warmup_ratio, not both).")
    min_lr_ratio: float = _f(0.0, "Final learning rate as a fraction of learning_rate (cosine / linear).")
    max_grad_norm: float | None = _f(1.0, "Clip the global gradient norm to this value; null or 0 disables clipping.")
    mixed_precision: str = _f("auto", "auto (bf16 on GPUs that support it, else no), no, or bf16 (autocast).")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    seed: int = _f(0, "Seed of the model init, the data order and all RNGs.")
    # ------------------------------------------------------------------ world latents
    cache_world_latents: bool | str = _f(
        "auto", "Encode each distinct image once and train on cached latents: auto (when the VAE is frozen), true "
        "(error if the VAE trains) or false."
    )
    latent_cache_dir: str | None = _f(None, "Where cached latents live (default: output_dir/latent_cache).")
    encode_batch_size: int = _f(32, "Images per VAE call when filling the latent cache.")
    # ------------------------------------------------------------------ output
    logging_steps: int = _f(10, "Write a metrics.jsonl record every N steps (and at the last step).")
    save_steps: int = _f(0, "Save a resumable checkpoint-N every N steps and at the last step; 0 = only final/.")
    save_total_limit: int | None = _f(None, "Keep only the newest N checkpoint-* folders.")
    save_full_model: bool = _f(False, "Save final/ with every weight (independent of the base models).")
    resume_from: str | None = _f(None, "'latest' or a checkpoint-N folder of this run to continue exactly from.")
    overwrite_output_dir: bool = _f(False, "Allow starting a new run in an output_dir that already has checkpoints.")
    num_workers: int = _f(0, "DataLoader worker processes that build batches (0 = in the training process).")
    progress_bar: bool = _f(True, "Show a tqdm progress bar on the main process.")
    push_to_hub: bool = _f(False, "Upload final/ to the hub at the end (needs hub_model_id and a login).")
    hub_model_id: str | None = _f(None, "Hub repo id for push_to_hub, e.g. user/theworld-vsr.")
    hub_private: bool = _f(True, "Create the hub repo as private.")

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the field for any wrong type or invalid / contradictory value."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "output_dir" and value is None:
                raise ValueError("output_dir is required: the folder for checkpoints and metrics.")
            if not _type_ok(value, hints[f.name]):
                raise ValueError(f"{f.name} must be {_type_name(hints[f.name])}, got {value!r} ({type(value).__name__}).")
        if self.init_from is None and self.gemma_model_name is None:
            raise ValueError("Set gemma_model_name (a Gemma 3 base to build from) or init_from (a TheWorld checkpoint).")
        if self.init_from is not None and self.gemma_model_name is not None:
            raise ValueError(
                "Set only one of gemma_model_name and init_from: a checkpoint already names its Gemma base."
            )
        if self.init_from is None and self.enable_world is not False and self.cosmos_model_name is None:
            raise ValueError("cosmos_model_name is required to build a fresh model with the world (enable_world).")
        if (self.train_file is None) == (self.hub_dataset is None):
            raise ValueError("Set exactly one of train_file (a jsonl) and hub_dataset (a `datasets` source).")
        if self.eval_hub_split is not None and self.hub_dataset is None:
            raise ValueError("eval_hub_split needs hub_dataset.")
        if self.eval_file is not None and self.eval_hub_split is not None:
            raise ValueError("Set only one of eval_file and eval_hub_split.")
        if (self.max_steps is None) == (self.num_epochs is None):
            raise ValueError("Set exactly one of max_steps and num_epochs.")
        positive = ["per_device_batch_size", "gradient_accumulation_steps", "encode_batch_size", "logging_steps"]
        positive += [k for k in ("max_steps", "max_train_samples", "max_eval_samples", "world_image_size",
                                 "world_pooling", "save_total_limit") if getattr(self, k) is not None]
        for k in positive:
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)!r}.")
        for k in ("warmup_steps", "save_steps", "eval_steps", "num_workers", "seed"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)!r}.")
        if self.num_epochs is not None and not self.num_epochs > 0:
            raise ValueError(f"num_epochs must be > 0, got {self.num_epochs!r}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}.")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}.")
        for k in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"{k} must be in [0, 1), got {getattr(self, k)!r}.")
        if not self.adam_epsilon > 0:
            raise ValueError(f"adam_epsilon must be > 0, got {self.adam_epsilon!r}.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ValueError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}.")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.warmup_ratio > 0 and self.warmup_steps > 0:
            raise ValueError("Set only one of warmup_steps and warmup_ratio.")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}.")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 or null, got {self.max_grad_norm!r}.")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISIONS}, got {self.mixed_precision!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}.")
        if isinstance(self.cache_world_latents, str) and self.cache_world_latents != "auto":
            raise ValueError(f"cache_world_latents must be true, false or 'auto', got {self.cache_world_latents!r}.")
        preset_components(self.freeze_preset)
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub: true needs hub_model_id (e.g. user/theworld-vsr).")
        if self.world_projection_mode is not None and self.world_projection_mode not in ("spatial", "channel"):
            raise ValueError(f"world_projection_mode must be 'spatial' or 'channel', got {self.world_projection_mode!r}.")

    @property
    def max_grad_norm_enabled(self) -> bool:
        return bool(self.max_grad_norm)


# Fields that may differ between a run and its resumption (they do not change the trajectory).
RESUME_FREE_FIELDS = frozenset(
    {
        "output_dir", "resume_from", "overwrite_output_dir", "logging_steps", "save_steps", "save_total_limit",
        "num_workers", "progress_bar", "push_to_hub", "hub_model_id", "hub_private", "eval_file", "eval_hub_split",
        "max_eval_samples", "eval_steps", "latent_cache_dir", "encode_batch_size", "save_full_model",
    }
)


def _type_ok(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    return {type(None): "null", bool: "a bool", int: "an int", float: "a number", str: "a string"}.get(hint, str(hint))


def config_fields() -> list[tuple[str, str, Any]]:
    """``[(name, help, default), ...]`` of every :class:`TrainConfig` field, in order."""
    return [(f.name, f.metadata["help"], f.default) for f in dataclasses.fields(TrainConfig)]


def preset_components(preset: str) -> set[str]:
    """The parts a freeze preset trains, e.g. ``"projector+lm"`` -> ``{"projector", "lm"}``."""
    if not isinstance(preset, str) or not preset.strip():
        raise ValueError(f"freeze_preset must be a non-empty string such as 'projector' or 'projector+lm', got {preset!r}.")
    if preset.strip() == "all":
        return set(PRESET_COMPONENTS)
    parts = [p.strip() for p in preset.split("+")]
    unknown = [p for p in parts if p not in PRESET_COMPONENTS]
    if unknown:
        raise ValueError(
            f"freeze_preset {preset!r} has unknown part(s) {unknown}; use '+'-joined parts of {PRESET_COMPONENTS} or "
            "'all' (e.g. 'projector+lm')."
        )
    return set(parts)


def preset_freeze_flags(preset: str, enable_world: bool) -> dict[str, bool]:
    """Freeze flags of a preset for a model with or without the world (see the ``freeze_preset`` field)."""
    parts = preset_components(preset)
    if preset.strip() == "all" and not enable_world:
        parts -= {"projector", "vae"}
    if enable_world and "projector" not in parts:
        raise ValueError(
            f"freeze_preset {preset!r}: with enable_world the world projector always trains; write "
            f"'projector+{preset}' (or set enable_world: false for a Gemma-only baseline)."
        )
    if not enable_world and parts & {"projector", "vae"}:
        raise ValueError(
            f"freeze_preset {preset!r} trains {sorted(parts & {'projector', 'vae'})}, which a Gemma-only model "
            "(enable_world: false) does not have; use lm, vision or lm+vision."
        )
    if not enable_world and not parts:
        raise ValueError("freeze_preset trains nothing for a Gemma-only model; use lm, vision or lm+vision.")
    return {
        "freeze_gemma_language": "lm" not in parts,
        "freeze_gemma_vision": "vision" not in parts,
        "freeze_cosmos_vae": "vae" not in parts,
    }


def load_train_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a yaml (``.yaml``/``.yml``) or json config and apply ``key=value`` overrides (values parsed as yaml)."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Config file {path} does not exist.")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        try:
            if path.endswith(".json"):
                data = json.loads(text)
            elif path.endswith((".yaml", ".yml")):
                data = yaml.safe_load(text) or {}
            else:
                raise ValueError(f"Config file {path} must end in .yaml, .yml or .json.")
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"Config file {path} is not valid {'json' if path.endswith('.json') else 'yaml'}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"Config file {path} must hold a mapping of field: value, got {type(data).__name__}.")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key=value.")
        key, value = item.split("=", 1)
        data[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return config_from_dict(data, source=path)


def config_from_dict(data: dict[str, Any], source: str | None = None) -> TrainConfig:
    """A validated :class:`TrainConfig`; unknown fields are an error that suggests the closest known one."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = [k for k in data if k not in names]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), names, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        where = f" in {source}" if source else ""
        raise ValueError(
            f"Unknown config field(s){where}: {', '.join(hints)}. Run `theworld train --list-fields` for the fields."
        )
    # YAML 1.1 reads 3e-4 (no dot) as a string; accept such numbers for float fields.
    hints = typing.get_type_hints(TrainConfig)
    for k, v in list(data.items()):
        if isinstance(v, str) and _type_ok(1.5, hints[k]) and not _type_ok(v, hints[k]):
            try:
                data[k] = float(v)
            except ValueError:
                pass
    return TrainConfig(**data)


# ----------------------------------------------------------------------------------------------------------------------
# Data order and batches
# ----------------------------------------------------------------------------------------------------------------------


class DataOrder:
    """Example index at every position of the infinite stream: epoch ``e`` is a permutation seeded by ``(seed, e)``."""

    def __init__(self, num_examples: int, seed: int) -> None:
        if num_examples < 1:
            raise ValueError("The training set is empty.")
        self.n = num_examples
        self.seed = seed
        self._perms: dict[int, torch.Tensor] = {}

    def perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}  # a batch may straddle two epochs
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> list[int]:
        return [int(self.perm(p // self.n)[p % self.n]) for p in range(start, start + count)]


class StepBatches(torch.utils.data.Dataset):
    """Micro-batch ``i`` (``step = i // k``, ``micro = i % k``) of this process, collated."""

    def __init__(self, dataset, collator, order: DataOrder, batch_size: int, accum: int, rank: int, world: int):
        self.dataset, self.collator, self.order = dataset, collator, order
        self.batch_size, self.accum, self.rank, self.world = batch_size, accum, rank, world
        self.global_batch = batch_size * accum * world

    def indices(self, i: int) -> list[int]:
        step, micro = divmod(i, self.accum)
        start = step * self.global_batch + (micro * self.world + self.rank) * self.batch_size
        return self.order.indices(start, self.batch_size)

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.collator([self.dataset[j] for j in self.indices(i)])


def supervised_mask(labels: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` bool: True at positions whose logits predict a supervised token (``labels[:, t+1] != -100``)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def micro_batch_loss_sum(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """``(sum of token cross-entropies, number of supervised tokens)`` of one micro-batch.

    Only the logits at supervised positions are computed: ``logits_to_keep`` is the boolean mask of
    :func:`supervised_mask`, so the model returns ``(K, V)`` logits for the ``K`` supervised tokens.
    """
    labels = batch["labels"]
    keep = supervised_mask(labels)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs, logits_to_keep=keep, use_cache=False)
    targets = labels[:, 1:][keep[:, :-1]]
    logits = out.logits.reshape(-1, out.logits.shape[-1]).float()
    loss_sum = torch.nn.functional.cross_entropy(logits, targets.to(logits.device), reduction="sum")
    return loss_sum, int(targets.numel())


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def accumulate_gradients(
    model, micro_batches: list[dict], accelerator, num_tokens_global: int, autocast_dtype: torch.dtype | None = None
) -> float:
    """Backward over one optimizer step's micro-batches; return this process's summed loss.

    Each micro-batch's loss is ``loss_sum * num_processes / num_tokens_global``, so that after DDP averages the
    gradients across processes they are the gradient of (summed loss / supervised tokens) over the whole global batch.
    """
    total = 0.0
    scale = accelerator.num_processes / max(num_tokens_global, 1)
    for j, batch in enumerate(micro_batches):
        sync = j == len(micro_batches) - 1
        ctx = accelerator.no_sync(model) if not sync else contextlib.nullcontext()
        with ctx:
            with torch.autocast(accelerator.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                loss_sum, _ = micro_batch_loss_sum(model, batch)
            accelerator.backward(loss_sum * scale)
        total += float(loss_sum.detach())
    return total


# ----------------------------------------------------------------------------------------------------------------------
# Learning-rate schedule
# ----------------------------------------------------------------------------------------------------------------------


def lr_factor(step: int, *, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warmup, then cosine/linear/constant decay."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if kind == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def build_scheduler(optimizer, config: TrainConfig, total_steps: int):
    warmup = config.warmup_steps or int(round(config.warmup_ratio * total_steps))
    fn = functools.partial(
        lr_factor, warmup=warmup, total=total_steps, kind=config.lr_scheduler, min_ratio=config.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


# ----------------------------------------------------------------------------------------------------------------------
# Training state (safetensors + json; never pickle)
# ----------------------------------------------------------------------------------------------------------------------


def _jsonable(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, torch.Tensor):
        raise TypeError("tensors go to safetensors")
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    return x


def optimizer_state_to_files(optimizer, param_names: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer ``state_dict`` into safetensors tensors and a json structure (keys use parameter names)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        name = param_names[int(idx)]
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}::{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(name, {})[key] = _jsonable(value)
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: _jsonable(v) for k, v in g.items()})
    return tensors, {"param_names": param_names, "param_groups": groups, "scalars": scalars}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], structure: dict[str, Any], param_names: list[str]):
    """Rebuild an optimizer ``state_dict`` from :func:`optimizer_state_to_files` output, checking the parameters."""
    if structure["param_names"] != param_names:
        missing = sorted(set(structure["param_names"]) ^ set(param_names))
        raise ValueError(
            "The checkpoint's optimizer was built for different trainable parameters "
            f"(differences: {missing[:10]}); resume with the same freeze_preset and model settings."
        )
    index = {name: i for i, name in enumerate(param_names)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, sub = key.rpartition("::")
        state.setdefault(index[name], {})[sub] = value
    for name, values in structure["scalars"].items():
        state.setdefault(index[name], {}).update(values)
    groups = []
    for g in structure["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


def rng_state_to_files() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: torch (CPU and CUDA) and numpy as tensors, Python's ``random`` as json."""
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    np_state = np.random.get_state()
    tensors["numpy_keys"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.uint32).astype(np.int64))
    py_state = random.getstate()
    meta = {
        "numpy": {"algorithm": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }
    return tensors, meta


def rng_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("torch_cuda_"))]
        if states and len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    n = meta["numpy"]
    np.random.set_state(
        (n["algorithm"], tensors["numpy_keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    py = meta["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def load_safetensors_copy(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, each copied out of the memory map (no pickle; later changes to the file can
    never reach tensors that were loaded)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k).clone() for k in f.keys()}


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def find_checkpoint(output_dir: str, which: str) -> str:
    """Resolve ``resume_from``: ``"latest"`` (the newest complete ``checkpoint-N``) or a folder path."""
    if which == "latest":
        done = []
        if os.path.isdir(output_dir):
            for d in os.listdir(output_dir):
                if (
                    d.startswith("checkpoint-")
                    and d.split("-", 1)[1].isdigit()
                    and os.path.isfile(os.path.join(output_dir, d, STATE_DIR, "trainer_state.json"))
                ):
                    done.append(d)
        if not done:
            raise FileNotFoundError(f"resume_from: latest found no complete checkpoint-N folder in {output_dir}.")
        return os.path.join(output_dir, max(done, key=lambda d: int(d.split("-", 1)[1])))
    if not os.path.isfile(os.path.join(which, STATE_DIR, "trainer_state.json")):
        raise FileNotFoundError(
            f"resume_from: {which} is not a complete training checkpoint (no {STATE_DIR}/trainer_state.json); pass a "
            "checkpoint-N folder written by `theworld train` or 'latest'."
        )
    return which


# ----------------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------------


def _load_dataset(config: TrainConfig, split: str, file: str | None, max_samples: int | None):
    from theworld.data import load_vsr_hub, load_vsr_jsonl

    if file is not None:
        ds = load_vsr_jsonl(file, image_dir=config.image_dir)
    else:
        ds = load_vsr_hub(config.hub_dataset, split=split, image_dir=config.image_dir)
    if max_samples is not None:
        ds.examples = ds.examples[:max_samples]
    return ds


def dataset_fingerprint(dataset) -> str:
    h = hashlib.sha256()
    for ex in dataset.examples:
        h.update(json.dumps([os.path.basename(ex.image_path), ex.caption, ex.label]).encode())
    return h.hexdigest()


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def build_model(config: TrainConfig):
    """The model the config describes, with its freeze flags applied and trainable parameters in float32."""
    from theworld import TheWorld
    from theworld.modeling_theworld import resolve_file

    arch = {
        k: getattr(config, k)
        for k in ("world_image_size", "world_projection_mode", "projection_architecture", "world_pooling",
                  "num_world_steps", "random_projection_init")
        if getattr(config, k) is not None
    }
    dtype = _torch_dtype(config.dtype)
    if config.init_from is not None:
        cfg_path = resolve_file(config.init_from, "config.json")
        if cfg_path is None:
            raise FileNotFoundError(f"init_from: no config.json at {config.init_from}; pass a TheWorld checkpoint.")
        enable_world = bool(_read_json(cfg_path).get("enable_world", True))
        if config.enable_world is not None and config.enable_world != enable_world:
            raise ValueError(
                f"enable_world: {config.enable_world} contradicts the init_from checkpoint ({enable_world}); drop it."
            )
        flags = preset_freeze_flags(config.freeze_preset, enable_world)
        kw = {**arch, **flags}
        if config.cosmos_model_name is not None:
            kw["cosmos_model_name"] = config.cosmos_model_name
        model = TheWorld.from_pretrained(config.init_from, dtype=dtype, **kw)
    else:
        enable_world = True if config.enable_world is None else config.enable_world
        flags = preset_freeze_flags(config.freeze_preset, enable_world)
        kw = {**arch, **flags, "enable_world": enable_world}
        if config.cosmos_model_name is not None:
            kw["cosmos_model_name"] = config.cosmos_model_name
        model = TheWorld.from_pretrained(config.gemma_model_name, dtype=dtype, **kw)
    model.apply_freeze_flags()
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def trainable_named_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def _param_groups(named: list[tuple[str, torch.nn.Parameter]], weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named:
        if weight_decay > 0 and p.ndim >= 2 and "embed" not in name and "embedding" not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": no_decay, "weight_decay": 0.0}]
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    return groups


def _resolve_mixed_precision(value: str) -> str:
    if value == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return value


def _resolve_cache(config: TrainConfig, model) -> bool:
    if not model.config.enable_world:
        return False
    vae_trains = any(p.requires_grad for p in model.cosmos_vae.parameters())
    if config.cache_world_latents is True and vae_trains:
        raise ValueError(
            "cache_world_latents: true needs a frozen VAE, but freeze_preset trains it ('vae' / 'all'); set "
            "cache_world_latents: false or auto."
        )
    if config.cache_world_latents == "auto":
        return not vae_trains
    return bool(config.cache_world_latents)


def plot_loss_curve(metrics_path: str, png_path: str, title: str = "training loss") -> bool:
    """Write a loss-curve PNG from ``metrics.jsonl`` (train records; eval accuracy on a second axis if present)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    if os.path.isfile(metrics_path):
        with open(metrics_path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    if rec.get("type") == "train":
                        train.append((rec["step"], rec["loss"]))
                    elif rec.get("type") == "eval" and "accuracy" in rec:
                        evals.append((rec["step"], rec["accuracy"]))
    if not train:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot([s for s, _ in train], [v for _, v in train], label="train loss", color="tab:blue")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if evals:
        ax2 = ax.twinx()
        ax2.plot([s for s, _ in evals], [v for _, v in evals], "o-", color="tab:orange", label="eval accuracy")
        ax2.set_ylabel("eval accuracy")
        ax2.set_ylim(0, 1)
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png_path)
    return True


class Trainer:
    """One training run (see the module docs). ``Trainer(config).train()`` returns a summary dict."""

    def __init__(self, config: TrainConfig, accelerator=None) -> None:
        from accelerate import Accelerator

        config.validate()
        self.config = config
        self.mixed_precision = _resolve_mixed_precision(config.mixed_precision)
        if accelerator is None:
            # accelerate sets up gloo (MULTI_CPU) for several processes only when asked to run on the CPU.
            distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
            # Mixed precision is applied here with torch.autocast (see micro_batch_loss_sum), not through accelerate,
            # whose process-wide state cannot change precision between runs in one process.
            accelerator = Accelerator(cpu=distributed and not torch.cuda.is_available())
        self.accelerator = accelerator
        self.is_main = self.accelerator.is_main_process
        self.output_dir = os.path.abspath(config.output_dir)
        self.metrics_path = os.path.join(self.output_dir, "metrics.jsonl")

    # ------------------------------------------------------------------ helpers
    def log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _check_output_dir(self) -> None:
        if self.config.resume_from is None and os.path.isdir(self.output_dir) and not self.config.overwrite_output_dir:
            existing = [d for d in os.listdir(self.output_dir) if d.startswith("checkpoint-") or d == "final"]
            if existing:
                raise FileExistsError(
                    f"output_dir {self.output_dir} already holds {sorted(existing)[:3]} from an earlier run. Set "
                    "resume_from: latest to continue it, overwrite_output_dir: true to start over, or pick another "
                    "output_dir."
                )

    def _plot_title(self) -> str:
        kind = "TheWorld" if self.model.config.enable_world else "Gemma only"
        return f"{kind} ({self.config.freeze_preset}): training loss, {os.path.basename(self.output_dir)}"

    def _state_dict_trainable(self) -> dict[str, torch.Tensor]:
        return self.model.trainable_state_dict()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from accelerate.utils import set_seed

        from theworld.data.collator import VSRCollator
        from theworld.latent_cache import CachedLatentDataset, LatentCache

        cfg, acc = self.config, self.accelerator
        self._check_output_dir()
        if self.is_main:
            os.makedirs(self.output_dir, exist_ok=True)
            if cfg.resume_from is None and os.path.exists(self.metrics_path):
                os.remove(self.metrics_path)
        acc.wait_for_everyone()
        set_seed(cfg.seed)
        self.model = build_model(cfg)
        model = self.model
        if cfg.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:  # transformers < 5.2x
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.to(acc.device)
        self.named_trainable = trainable_named_parameters(model)
        if not self.named_trainable:
            raise ValueError(f"freeze_preset {cfg.freeze_preset!r} leaves nothing to train.")
        self.param_names = [n for n, _ in self.named_trainable]

        self.train_set = _load_dataset(cfg, cfg.hub_split, cfg.train_file, cfg.max_train_samples)
        if len(self.train_set) == 0:
            raise ValueError(f"The training data has no usable examples ({self.train_set.summary()['skipped']}).")
        eval_file = cfg.eval_file
        self.eval_set = None
        if eval_file is not None or cfg.eval_hub_split is not None:
            self.eval_set = _load_dataset(cfg, cfg.eval_hub_split, eval_file, cfg.max_eval_samples)

        self.use_cache = _resolve_cache(cfg, model)
        self.cache = None
        train_data = self.train_set
        if self.use_cache:
            cache_dir = cfg.latent_cache_dir or os.path.join(self.output_dir, "latent_cache")
            self.cache = LatentCache(cache_dir, model)
            model.eval()
            keys = self.cache.prepare(
                self.train_set, model.processor, cfg.encode_batch_size, acc, progress=cfg.progress_bar and self.is_main
            )
            train_data = CachedLatentDataset(self.train_set, self.cache, keys)
            self.cache_train_info = {"train_distinct_images": len(set(keys)), "train_encoded": self.cache.stats["encoded"]}
            if self.eval_set is not None:
                ekeys = self.cache.prepare(self.eval_set, model.processor, cfg.encode_batch_size, acc)
                self.eval_data = CachedLatentDataset(self.eval_set, self.cache, ekeys)
        if self.eval_set is not None and not self.use_cache:
            self.eval_data = self.eval_set
        self.train_data = train_data

        self.global_batch = cfg.per_device_batch_size * cfg.gradient_accumulation_steps * acc.num_processes
        if cfg.max_steps is not None:
            self.max_steps = cfg.max_steps
        else:
            self.max_steps = max(1, math.ceil(cfg.num_epochs * len(self.train_set) / self.global_batch))
        self.collator = VSRCollator(model.processor, train=True, supervise_end_of_turn=cfg.supervise_end_of_turn)
        self.order = DataOrder(len(self.train_set), cfg.seed)

        groups = _param_groups(self.named_trainable, cfg.weight_decay)
        optimizer = torch.optim.AdamW(
            groups, lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon
        )
        self.scheduler = build_scheduler(optimizer, cfg, self.max_steps)
        self.ddp_model, self.optimizer = acc.prepare(model, optimizer)
        self.start_step = 0
        if cfg.resume_from is not None:
            self.resume(find_checkpoint(self.output_dir, cfg.resume_from))
        self._is_setup = True

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int) -> str:
        """Write ``checkpoint-{step}`` (partial model + training state) atomically; return its path."""
        acc = self.accelerator
        final = os.path.join(self.output_dir, f"checkpoint-{step}")
        tmp = os.path.join(self.output_dir, f".checkpoint-{step}.incomplete")
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            os.makedirs(os.path.join(tmp, STATE_DIR), exist_ok=True)
        acc.wait_for_everyone()
        from safetensors.torch import save_file

        state_dir = os.path.join(tmp, STATE_DIR)
        rng_tensors, rng_meta = rng_state_to_files()
        save_file(rng_tensors, os.path.join(state_dir, f"rng_state_{acc.process_index}.safetensors"))
        _write_json(os.path.join(state_dir, f"rng_state_{acc.process_index}.json"), rng_meta)
        if self.is_main:
            opt_tensors, opt_structure = optimizer_state_to_files(self.optimizer, self.param_names)
            save_file(opt_tensors, os.path.join(state_dir, "optimizer.safetensors"))
            state = {
                "format": STATE_FORMAT_VERSION,
                "global_step": step,
                "max_steps": self.max_steps,
                "global_batch_size": self.global_batch,
                "num_processes": acc.num_processes,
                "dataset_fingerprint": dataset_fingerprint(self.train_set),
                "num_examples": len(self.train_set),
                "config": dataclasses.asdict(self.config),
                "optimizer": opt_structure,
                "scheduler": _jsonable(self.scheduler.state_dict()),
            }
        acc.wait_for_everyone()
        if self.is_main:
            _write_json(os.path.join(state_dir, "trainer_state.json"), state)  # written last: marks completeness
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._rotate_checkpoints()
        acc.wait_for_everyone()
        return final

    def _rotate_checkpoints(self) -> None:
        limit = self.config.save_total_limit
        if not limit:
            return
        ckpts = sorted(
            (d for d in os.listdir(self.output_dir) if d.startswith("checkpoint-") and d.split("-", 1)[1].isdigit()),
            key=lambda d: int(d.split("-", 1)[1]),
        )
        for d in ckpts[:-limit]:
            shutil.rmtree(os.path.join(self.output_dir, d), ignore_errors=True)

    def resume(self, path: str) -> None:
        """Restore weights, optimizer, scheduler, RNG and step from a ``checkpoint-N`` folder."""
        acc = self.accelerator
        state_dir = os.path.join(path, STATE_DIR)
        state = _read_json(os.path.join(state_dir, "trainer_state.json"))
        if state.get("format") != STATE_FORMAT_VERSION:
            raise ValueError(f"{path}: training state format {state.get('format')} is not {STATE_FORMAT_VERSION}.")
        saved = state["config"]
        now = dataclasses.asdict(self.config)
        changed = sorted(k for k in now if k not in RESUME_FREE_FIELDS and saved.get(k) != now[k])
        if changed:
            diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
            raise ValueError(
                f"Cannot resume from {path}: these settings differ from the run that wrote it ({diffs}). Resuming "
                "continues the same run; start a new run (init_from) to change them."
            )
        if state["global_batch_size"] != self.global_batch:
            raise ValueError(
                f"Cannot resume from {path}: its global batch was {state['global_batch_size']} examples, now it is "
                f"{self.global_batch} (per_device_batch_size x gradient_accumulation_steps x processes). Keep the "
                "global batch the same."
            )
        if state["dataset_fingerprint"] != dataset_fingerprint(self.train_set):
            raise ValueError(f"Cannot resume from {path}: the training data changed since the checkpoint was written.")
        # weights: the partial checkpoint holds exactly the trainable tensors
        weights = load_safetensors_copy(os.path.join(path, "model.safetensors"))
        expected = self._state_dict_trainable()
        if set(weights) != set(expected):
            raise ValueError(
                f"{path}/model.safetensors holds {sorted(set(weights) ^ set(expected))[:10]} that do not match the "
                "trainable parameters; resume with the same freeze_preset."
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                target = params[name] if name in params else dict(self.model.named_buffers())[name]
                target.copy_(value.to(target.device, target.dtype))
        opt_tensors = load_safetensors_copy(os.path.join(state_dir, "optimizer.safetensors"))
        self.optimizer.load_state_dict(optimizer_state_from_files(opt_tensors, state["optimizer"], self.param_names))
        self.scheduler.load_state_dict(state["scheduler"])
        rank = acc.process_index
        rng_file = os.path.join(state_dir, f"rng_state_{rank}.safetensors")
        if os.path.isfile(rng_file):
            rng_state_from_files(load_safetensors_copy(rng_file), _read_json(os.path.join(state_dir, f"rng_state_{rank}.json")))
        else:
            logger.warning("No RNG state for process %d in %s (different process count); RNGs are reseeded.", rank, path)
        self.start_step = int(state["global_step"])
        if self.is_main and os.path.isfile(self.metrics_path):  # drop records written after the checkpoint
            with open(self.metrics_path, encoding="utf-8") as f:
                lines = [ln for ln in f if ln.strip() and json.loads(ln).get("step", 0) <= self.start_step]
            with open(self.metrics_path, "w", encoding="utf-8") as f:
                f.writelines(lines)
        logger.info("Resumed from %s at step %d", path, self.start_step)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, step: int) -> dict[str, Any] | None:
        if self.eval_set is None:
            return None
        from theworld.evaluation import evaluate

        result = None
        if self.is_main:
            self.model.eval()
            result = evaluate(self.model, self.eval_data, mode="score", batch_size=self.config.per_device_batch_size * 2)
            self.model.train()
            rec = {"type": "eval", "step": step, **{k: result[k] for k in ("accuracy", "macro_f1", "n")}}
            self.log(rec)
        self.accelerator.wait_for_everyone()
        return result

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        from tqdm.auto import tqdm

        if not getattr(self, "_is_setup", False):
            self.setup()
        cfg, acc, model = self.config, self.accelerator, self.ddp_model
        accum = cfg.gradient_accumulation_steps
        batches = StepBatches(
            self.train_data, self.collator, self.order, cfg.per_device_batch_size, accum, acc.process_index,
            acc.num_processes,
        )
        sampler = range(self.start_step * accum, self.max_steps * accum)
        loader = torch.utils.data.DataLoader(
            batches, batch_size=None, sampler=sampler, num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
        )
        iterator = iter(loader)
        params = [p for _, p in self.named_trainable]
        bar = tqdm(
            total=self.max_steps, initial=self.start_step, desc="training", disable=not (cfg.progress_bar and self.is_main),
            dynamic_ncols=True,
        )
        self.model.train()
        t_start = time.perf_counter()
        window: list[tuple[float, float, int]] = []  # (loss, seconds, samples)
        step_times: list[float] = []
        last_loss = float("nan")
        last_eval = None
        for step in range(self.start_step, self.max_steps):
            t0 = time.perf_counter()
            micro = [_to_device(next(iterator), acc.device) for _ in range(accum)]
            local_tokens = sum(int((b["labels"] != -100).sum()) for b in micro)
            tokens = int(acc.reduce(torch.tensor([local_tokens], device=acc.device), "sum").item())
            if tokens == 0:
                raise RuntimeError(f"Step {step}: the global batch has no supervised tokens.")
            loss_local = accumulate_gradients(
                model, micro, acc, tokens, torch.bfloat16 if self.mixed_precision == "bf16" else None
            )
            if cfg.max_grad_norm_enabled:
                grad_norm = acc.clip_grad_norm_(params, cfg.max_grad_norm)
            else:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss = float(acc.reduce(torch.tensor([loss_local], device=acc.device), "sum").item()) / tokens
            dt = time.perf_counter() - t0
            step_times.append(dt)
            window.append((loss, dt, self.global_batch))
            last_loss = loss
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if done % cfg.logging_steps == 0 or done == self.max_steps:
                seconds = sum(w[1] for w in window)
                self.log(
                    {
                        "type": "train",
                        "step": done,
                        "epoch": done * self.global_batch / len(self.train_set),
                        "loss": sum(w[0] for w in window) / len(window),
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "supervised_tokens": tokens,
                        "samples_per_s": sum(w[2] for w in window) / max(seconds, 1e-9),
                        "step_time_s": seconds / len(window),
                        "elapsed_s": time.perf_counter() - t_start,
                    }
                )
                window = []
            if cfg.eval_steps and done % cfg.eval_steps == 0 and done != self.max_steps:
                last_eval = self.evaluate(done)
            if cfg.save_steps and (done % cfg.save_steps == 0 or done == self.max_steps):
                self.save_checkpoint(done)
                if self.is_main:
                    plot_loss_curve(self.metrics_path, os.path.join(self.output_dir, "loss_curve.png"), self._plot_title())
        bar.close()
        if self.eval_set is not None:
            last_eval = self.evaluate(self.max_steps)
        final_dir = os.path.join(self.output_dir, "final")
        if self.is_main:
            self.model.save_pretrained(final_dir, save_full_model=cfg.save_full_model)
            plot_loss_curve(self.metrics_path, os.path.join(self.output_dir, "loss_curve.png"), self._plot_title())
        acc.wait_for_everyone()
        steady = step_times[2:] if len(step_times) > 4 else step_times
        summary = {
            "output_dir": self.output_dir,
            "final_checkpoint": final_dir,
            "global_step": self.max_steps,
            "start_step": self.start_step,
            "num_processes": acc.num_processes,
            "global_batch_size": self.global_batch,
            "mixed_precision": self.mixed_precision,
            "train_examples": len(self.train_set),
            "train_skipped": self.train_set.num_skipped,
            "final_loss": last_loss,
            "cached_world_latents": self.use_cache,
            "latent_cache": {**self.cache.stats, **self.cache_train_info} if self.cache is not None else None,
            "trainable_parameters": self.model.get_trainable_parameters()[0],
            "step_time_s": (sum(steady) / len(steady)) if steady else None,
            "samples_per_s": (self.global_batch * len(steady) / sum(steady)) if steady and sum(steady) > 0 else None,
            "train_seconds": time.perf_counter() - t_start,
            "eval": {k: last_eval[k] for k in ("accuracy", "macro_f1", "n")} if last_eval else None,
        }
        if self.is_main:
            _write_json(os.path.join(self.output_dir, "train_summary.json"), summary)
            if cfg.push_to_hub:
                self.model.push_to_hub(cfg.hub_model_id, private=cfg.hub_private)
                summary["pushed_to"] = cfg.hub_model_id
        acc.wait_for_everyone()
        return summary


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training job; return its summary (also written to ``output_dir/train_summary.json``)."""
    return Trainer(config).train()


# ----------------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="yaml or json file with TrainConfig fields (see --list-fields)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field (value parsed as yaml); repeatable",
    )
    parser.add_argument("--list-fields", action="store_true", help="print every config field with its help and exit")
    parser.add_argument("--print-config", action="store_true", help="print the validated config as json and exit")


def run(args) -> int:
    if args.list_fields:
        for name, help_text, default in config_fields():
            _echo(f"{name} (default {default!r}): {help_text}")
        return 0
    if args.config is None and not args.overrides:
        raise SystemExit("theworld train: pass --config FILE (yaml or json); see --list-fields for the fields.")
    try:
        config = load_train_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"theworld train: invalid config: {e}\n")
        return 2
    if args.print_config:
        _echo(json.dumps(dataclasses.asdict(config), indent=2))
        return 0
    trainer = Trainer(config)
    summary = trainer.train()
    if trainer.is_main:
        _echo(
            f"trained {summary['global_step']} steps; final loss {summary['final_loss']:.4f}; "
            f"checkpoint {summary['final_checkpoint']}"
            + (f"; eval accuracy {summary['eval']['accuracy']:.3f}" if summary.get("eval") else "")
        )
    return 0


__all__ = [
    "DataOrder",
    "TrainConfig",
    "Trainer",
    "add_arguments",
    "build_model",
    "config_fields",
    "load_train_config",
    "lr_factor",
    "plot_loss_curve",
    "preset_freeze_flags",
    "run",
    "train",
]
