"""The training run's configuration: `TrainConfig`, its validation, the freeze presets and yaml/json loading.

Every field is documented in the README (section "Config fields") and printed by ``theworld train --list-fields``;
unknown fields and wrong or contradictory values are errors that name the field.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from theworld.configuration_theworld import (
    PROJECTION_ARCHITECTURES,
    ROLLOUT_MODES,
    WORLD_ATTENTIONS,
    WORLD_PLACEMENTS,
    WORLD_PROJECTION_MODES,
    WORLD_RESIZE_MODES,
)

LR_SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("auto", "no", "bf16")
DTYPES = ("float32", "bfloat16", "float16")
PRESET_COMPONENTS = ("projector", "lm", "vision", "vae")

#: Keys of the ``lora:`` section and what each means (see `TrainConfig.lora`).
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
#: The default ``lora.target_modules``: the attention projections of Gemma's language model. A regex is matched
#: against whole module names (``model.language_model.layers.0.self_attn.q_proj``), so SigLIP's own ``q_proj`` layers
#: (``model.vision_tower...``) and the world encoder stay out.
DEFAULT_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"

#: TrainConfig fields that become `TheWorldConfig` fields of a fresh model (``None`` keeps the model's default).
MODEL_FIELDS = (
    "world_image_size",
    "world_projection_mode",
    "projection_architecture",
    "world_pooling",
    "world_placement",
    "world_attention",
    "world_resize_mode",
    "num_world_steps",
    "rollout_mode",
    "rollout_num_inference_steps",
    "rollout_guidance_scale",
    "rollout_seed",
    "random_projection_init",
)


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything one training run needs. Build it with `load_train_config` (yaml/json) or directly."""

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
    world_pooling: int | None = _f(
        None, "Average-pooling factor of the latent grid before tokenisation (default: the model's, 4)."
    )
    world_placement: str | None = _f(
        None, "Where the world block goes: 'after_image' (right after the image, the default) or 'after_bos' "
        "(theworld 0.1.0)."
    )
    world_attention: str | None = _f(
        None, "'bidirectional' (world tokens of a block see each other, the default) or 'causal' (theworld 0.1.0)."
    )
    world_resize_mode: str | None = _f(
        None, "How an image becomes the square world image: 'squash' (the default), 'letterbox' or 'center_crop' "
        "(theworld 0.1.0)."
    )
    num_world_steps: int | None = _f(None, "Future latent frames predicted by the Cosmos rollout (default 0).")
    rollout_mode: str | None = _f(
        None, "With num_world_steps: 'joint' (the frames denoised together, like the Video2World pipeline; the "
        "default) or 'autoregressive' (one frame at a time, theworld 0.1.0)."
    )
    rollout_num_inference_steps: int | None = _f(
        None, "With num_world_steps: denoising steps per rollout (default: the model's, 35)."
    )
    rollout_guidance_scale: float | None = _f(
        None, "With num_world_steps: classifier-free guidance of the rollout (default: the model's, 7.0; 1.0 = none)."
    )
    rollout_seed: int | None = _f(None, "With num_world_steps: seed of the rollout noise (default 0).")
    random_projection_init: bool | None = _f(None, "Initialise the world projector with N(0, initializer_range).")
    freeze_preset: str = _f(
        "projector",
        "What trains, as '+'-joined parts of projector (world projector and boundary embeddings; always trained with "
        "the world), lm (language model and lm_head), vision (SigLIP and its projector), vae (Cosmos VAE encoder), or "
        "'all'. Examples: projector, projector+lm, lm (a Gemma-only baseline).",
    )
    dtype: str = _f("float32", "Storage dtype of the frozen base weights: float32, bfloat16 or float16. Trainable "
                    "parameters are always float32.")
    lora: dict | None = _f(
        None,
        "A LoRA adapter (PEFT; pip install 'theworld[peft]') on Gemma's frozen language model, trained with the world "
        "projector: a mapping with r (rank, default 16), alpha (default 2 x r), dropout (default 0.0) and "
        "target_modules (a regex matched against whole module names, or a list of module names; every match must "
        f"lie in the language model; default {DEFAULT_LORA_TARGETS!r}). freeze_preset must not train lm. Checkpoints "
        "hold the adapter; `theworld export --merge-lora` merges it.",
    )
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
        if self.num_world_steps is not None and self.num_world_steps < 0:
            raise ValueError(f"num_world_steps must be >= 0, got {self.num_world_steps!r}.")
        if self.rollout_num_inference_steps is not None and self.rollout_num_inference_steps < 2:
            raise ValueError(f"rollout_num_inference_steps must be >= 2, got {self.rollout_num_inference_steps!r}.")
        if self.rollout_guidance_scale is not None and not self.rollout_guidance_scale > 0:
            raise ValueError(f"rollout_guidance_scale must be > 0, got {self.rollout_guidance_scale!r}.")
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
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}.")
        if self.warmup_ratio > 0 and self.warmup_steps > 0:
            raise ValueError("Set only one of warmup_steps and warmup_ratio.")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}.")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 or null, got {self.max_grad_norm!r}.")
        choices = {
            "lr_scheduler": LR_SCHEDULERS,
            "mixed_precision": MIXED_PRECISIONS,
            "dtype": DTYPES,
            "world_projection_mode": WORLD_PROJECTION_MODES,
            "projection_architecture": PROJECTION_ARCHITECTURES,
            "world_placement": WORLD_PLACEMENTS,
            "world_attention": WORLD_ATTENTIONS,
            "world_resize_mode": WORLD_RESIZE_MODES,
            "rollout_mode": ROLLOUT_MODES,
        }
        for k, allowed in choices.items():
            value = getattr(self, k)
            if value is not None and value not in allowed:
                raise ValueError(f"{k} must be one of {allowed}, got {value!r}.")
        if isinstance(self.cache_world_latents, str) and self.cache_world_latents != "auto":
            raise ValueError(f"cache_world_latents must be true, false or 'auto', got {self.cache_world_latents!r}.")
        preset_components(self.freeze_preset)
        if self.lora is not None:
            self.lora_settings()
            if "lm" in preset_components(self.freeze_preset):
                raise ValueError(
                    f"lora: the adapter trains on Gemma's frozen language model, but freeze_preset "
                    f"{self.freeze_preset!r} trains the whole language model; drop lm from freeze_preset (e.g. "
                    "'projector') or drop the lora section."
                )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub: true needs hub_model_id (e.g. user/theworld-vsr).")

    @property
    def max_grad_norm_enabled(self) -> bool:
        return bool(self.max_grad_norm)

    def lora_settings(self) -> dict[str, Any] | None:
        """The ``lora:`` section with its defaults filled in: ``{"r", "alpha", "dropout", "target_modules"}``, or
        ``None`` without one. `ValueError` naming the key for an unknown key or a bad value."""
        if self.lora is None:
            return None
        unknown = [k for k in self.lora if k not in LORA_KEYS]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), LORA_KEYS, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"lora: unknown key(s) {', '.join(hints)}; the keys are {', '.join(LORA_KEYS)}.")
        r = self.lora.get("r", 16)
        if not _type_ok(r, int) or r < 1:
            raise ValueError(f"lora.r must be an int >= 1, got {r!r}.")
        alpha = self.lora.get("alpha", 2 * r)
        if not _type_ok(alpha, float) or not alpha > 0:
            raise ValueError(f"lora.alpha must be a number > 0, got {alpha!r}.")
        dropout = self.lora.get("dropout", 0.0)
        if not _type_ok(dropout, float) or not 0 <= dropout < 1:
            raise ValueError(f"lora.dropout must be a number in [0, 1), got {dropout!r}.")
        targets = self.lora.get("target_modules", DEFAULT_LORA_TARGETS)
        if isinstance(targets, str):
            try:
                re.compile(targets)
            except re.error as e:
                raise ValueError(f"lora.target_modules {targets!r} is not a valid regular expression ({e}).") from e
        elif not (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
            raise ValueError(
                f"lora.target_modules must be a regex string or a non-empty list of module names, got {targets!r}."
            )
        return {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": targets}

    def model_overrides(self) -> dict[str, Any]:
        """The `TheWorldConfig` fields this config sets (`MODEL_FIELDS` that are not ``None``)."""
        return {k: getattr(self, k) for k in MODEL_FIELDS if getattr(self, k) is not None}


#: Fields that may differ between a run and its resumption (they do not change the trajectory).
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
    if hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    names = {type(None): "null", bool: "a bool", int: "an int", float: "a number", str: "a string", dict: "a mapping"}
    return names.get(hint, str(hint))


def config_fields() -> list[tuple[str, str, Any]]:
    """``[(name, help, default), ...]`` of every `TrainConfig` field, in order."""
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


def preset_freeze_flags(preset: str, enable_world: bool, adapter: bool = False) -> dict[str, bool]:
    """The `TheWorldConfig` freeze flags of a preset for a model with or without the world (see ``freeze_preset``).

    ``adapter``: a LoRA adapter trains as well (``lora:``); a Gemma-only model may then train nothing else, which
    the default preset ``projector`` (a part it does not have) stands for.

    Returns:
        ``{"freeze_gemma_language", "freeze_gemma_vision", "freeze_cosmos_vae"}``: ``False`` for each part the preset
        trains. The world projector and boundary embeddings have no flag: they always train with the world.
    """
    parts = preset_components(preset)
    if preset.strip() == "all" and not enable_world:
        parts -= {"projector", "vae"}
    if enable_world and "projector" not in parts:
        raise ValueError(
            f"freeze_preset {preset!r}: with enable_world the world projector always trains; write "
            f"'projector+{preset}' (or set enable_world: false for a Gemma-only baseline)."
        )
    # CODEPATH: a Gemma-only model with a LoRA adapter: the default preset trains only the adapter.
    if not enable_world and adapter and parts == {"projector"}:
        parts = set()
    if not enable_world and parts & {"projector", "vae"}:
        raise ValueError(
            f"freeze_preset {preset!r} trains {sorted(parts & {'projector', 'vae'})}, which a Gemma-only model "
            "(enable_world: false) does not have; use lm, vision or lm+vision."
        )
    if not enable_world and not parts and not adapter:
        raise ValueError("freeze_preset trains nothing for a Gemma-only model; use lm, vision or lm+vision.")
    return {
        "freeze_gemma_language": "lm" not in parts,
        "freeze_gemma_vision": "vision" not in parts,
        "freeze_cosmos_vae": "vae" not in parts,
    }


def load_train_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a yaml (``.yaml``/``.yml``) or json config and apply ``key=value`` overrides (values parsed as yaml).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not valid yaml/json or not a mapping, an override is not ``key=value``, or a field is
            unknown, of the wrong type or invalid.
    """
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Config file {path} does not exist.")
        if not path.endswith((".json", ".yaml", ".yml")):
            raise ValueError(f"Config file {path} must end in .yaml, .yml or .json.")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"Config file {path} is not a UTF-8 text file ({e}).") from e
        try:
            data = json.loads(text) if path.endswith(".json") else (yaml.safe_load(text) or {})
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ValueError(f"Config file {path} is not valid {'json' if path.endswith('.json') else 'yaml'}: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"Config file {path} must hold a mapping of field: value, got {type(data).__name__}.")
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"Override {item!r} must look like key=value.")
        key, value = item.split("=", 1)
        try:
            data[key.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError as e:
            raise ValueError(f"Override {item!r}: the value is not valid yaml ({e}).") from e
    return config_from_dict(data, source=path)


def config_from_dict(data: dict[str, Any], source: str | None = None) -> TrainConfig:
    """A validated `TrainConfig`; unknown fields are an error that suggests the closest known one."""
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
    data = dict(data)
    for k, v in list(data.items()):
        if isinstance(v, str) and _type_ok(1.5, hints[k]) and not _type_ok(v, hints[k]):
            try:
                data[k] = float(v)
            except ValueError:
                pass
    return TrainConfig(**data)


__all__ = [
    "DEFAULT_LORA_TARGETS",
    "LORA_KEYS",
    "MODEL_FIELDS",
    "RESUME_FREE_FIELDS",
    "TrainConfig",
    "config_fields",
    "config_from_dict",
    "load_train_config",
    "preset_components",
    "preset_freeze_flags",
]
