"""Train TheWorld (or a Gemma-only baseline) on VSR-style data with ``accelerate``: ``theworld train --config FILE``.

The whole run is described by a `TrainConfig` read from yaml or json (every field documented in the README, section
"Config fields", and in ``theworld train --list-fields``; unknown fields and bad values are errors). The same command
runs on one process or under ``accelerate launch`` (DDP; gloo on CPU).

One module per concept:

* `theworld.training.config`: `TrainConfig`, its validation, the freeze presets (``freeze_preset`` -> the model
  config's ``freeze_gemma_language`` / ``freeze_gemma_vision`` / ``freeze_cosmos_vae``), yaml/json loading.
* `theworld.training.data_order`: the data order, a pure function of ``(seed, step)`` (resuming needs only the step;
  the same global batch gives the same examples on any number of processes).
* `theworld.training.loss`: the summed answer-token cross-entropy divided by the supervised tokens of the whole
  accumulated global batch, so ``k`` micro-batches give the gradient of one ``k``-times batch.
* `theworld.training.schedule`: AdamW and the warmup + cosine/linear/constant learning-rate schedule.
* `theworld.training.state`: the resume files (safetensors + json, never pickle).
* `theworld.training.plots`: the loss curve.
* `theworld.training.model`: the model a config describes (fresh around Gemma 3, or ``init_from`` a checkpoint),
  with its LoRA adapter (``lora:``, `add_lora`), trainable parameters in float32.
* `theworld.training.loop`: `Trainer` / `train` (cached world latents while the VAE is frozen, checkpoints
  ``output_dir/checkpoint-N/`` = a partial TheWorld checkpoint + ``training_state/``, ``final/``).
"""

from .config import (
    DEFAULT_LORA_TARGETS,
    LORA_KEYS,
    MODEL_FIELDS,
    RESUME_FREE_FIELDS,
    TrainConfig,
    config_fields,
    config_from_dict,
    load_train_config,
    preset_components,
    preset_freeze_flags,
)
from .data_order import DataOrder, StepBatches, dataset_fingerprint, load_dataset
from .loop import Trainer, train
from .loss import accumulate_gradients, micro_batch_loss_sum, supervised_mask
from .model import add_lora, build_model, trainable_named_parameters
from .plots import plot_loss_curve
from .schedule import build_optimizer, build_scheduler, lr_factor
from .state import (
    STATE_DIR,
    STATE_FORMAT_VERSION,
    find_checkpoint,
    optimizer_state_from_files,
    optimizer_state_to_files,
    rng_state_from_files,
    rng_state_to_files,
)

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "LORA_KEYS",
    "MODEL_FIELDS",
    "RESUME_FREE_FIELDS",
    "STATE_DIR",
    "STATE_FORMAT_VERSION",
    "DataOrder",
    "StepBatches",
    "TrainConfig",
    "Trainer",
    "accumulate_gradients",
    "add_lora",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "config_fields",
    "config_from_dict",
    "dataset_fingerprint",
    "find_checkpoint",
    "load_dataset",
    "load_train_config",
    "lr_factor",
    "micro_batch_loss_sum",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
    "plot_loss_curve",
    "preset_components",
    "preset_freeze_flags",
    "rng_state_from_files",
    "rng_state_to_files",
    "supervised_mask",
    "train",
    "trainable_named_parameters",
]
