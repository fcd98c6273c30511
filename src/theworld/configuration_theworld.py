# Copyright 2026 The TheWorld Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Configuration of TheWorld: Gemma 3 fused with the Cosmos-Predict2 world model.

Shipped next to every checkpoint as remote code: flat, importing only ``transformers`` and ``huggingface_hub``.

A `TheWorldConfig` is a composite configuration with three sub-configs (``text_config``: Gemma 3's language model,
``vision_config``: SigLIP, ``world_config``: the Wan 2.1 image encoder of Cosmos-Predict2), the world settings beside
them, and the provenance of the base weights (``base_models``, ``checkpoint_kind``) kept apart from the architecture.
"""

from __future__ import annotations

import copy
import difflib
import logging
from typing import Any, ClassVar

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import auto_docstring

logger = logging.getLogger(__name__)

#: Checkpoint format this code writes. 1: theworld 0.1.0 (flat config, ``cosmos_vae.*`` keys); 2: this version.
CHECKPOINT_FORMAT_VERSION = 2
#: Package version written into every config (kept in sync with ``theworld.__version__``).
THEWORLD_VERSION = "0.2.0"

WORLD_PROJECTION_MODES = ("spatial", "channel")
PROJECTION_ARCHITECTURES = ("mlp", "mlp_no_final_gelu", "linear")
WORLD_ATTENTIONS = ("bidirectional", "causal")
WORLD_PLACEMENTS = ("after_image", "after_bos")
WORLD_RESIZE_MODES = ("squash", "letterbox", "center_crop")
ROLLOUT_MODES = ("joint", "autoregressive")
#: ``"float32"``: the world encoder stays float32 (transformers' ``_keep_in_fp32_modules_strict``); ``None``: it follows
#: the model's dtype.
WORLD_ENCODER_DTYPES = ("float32", None)
CHECKPOINT_KINDS = ("partial", "full")

DEFAULT_GEMMA = "google/gemma-3-4b-it"
DEFAULT_COSMOS = "nvidia/Cosmos-Predict2-2B-Video2World"

#: The Wan 2.1 VAE's per-channel latent statistics (``AutoencoderKLWan`` defaults, identical in Cosmos-Predict2).
WAN_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.916,
]  # fmt: skip

#: What theworld 0.1.0 (checkpoint format 1) did where today's defaults differ; applied to format-1 configs, whose
#: ``config.json`` omits every value that equalled a 0.1.0 default.
FORMAT_1_DEFAULTS = {
    "world_pooling": 1,
    "world_image_size": 512,
    "world_projection_mode": "spatial",
    "world_attention": "causal",
    "world_placement": "after_bos",
    "world_resize_mode": "center_crop",
    "world_encoder_dtype": None,
    "rollout_mode": "autoregressive",
    "rollout_num_inference_steps": 4,
    "rollout_guidance_scale": 1.0,
}


#: Keyword arguments every `PreTrainedConfig` takes that are no dataclass field of `TheWorldConfig` (some are close
#: to a TheWorld field, e.g. ``bos_token_id`` to ``boi_token_index``): never treated as misspellings.
STANDARD_CONFIG_KWARGS = frozenset(
    {
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
        "sep_token_id",
        "decoder_start_token_id",
        "torch_dtype",
        "name_or_path",
        "attn_implementation",
        "experts_implementation",
        "output_attentions",
        "num_labels",
        "use_cache",
        "per_layer_config",
        "base_fingerprints",
        "checkpoint_name",  # a loading option of TheWorld's from_pretrained, close to checkpoint_kind
    }
)


def _closest(name: str, candidates) -> str | None:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.8)
    return match[0] if match else None


@auto_docstring(checkpoint="nvidia/Cosmos-Predict2-2B-Video2World")
@strict
class TheWorldEncoderConfig(PreTrainedConfig):
    r"""
    base_dim (`int`, *optional*, defaults to 96):
        Channels of the first stage of the Wan 2.1 image encoder of Cosmos-Predict2.
    z_dim (`int`, *optional*, defaults to 16):
        Latent channels.
    dim_mult (`list[int]`, *optional*, defaults to `[1, 2, 4, 4]`):
        Channel multiplier of each stage.
    num_res_blocks (`int`, *optional*, defaults to 2):
        Residual blocks per stage.
    attn_scales (`list[float]`, *optional*, defaults to `[]`):
        Scales with an attention block in the down path (none in Wan 2.1).
    temperal_downsample (`list[bool]`, *optional*, defaults to `[False, True, True]`):
        Which down-sampling stages also halve time. One image never reaches a temporal down-sampling, but the field
        fixes the layer layout (diffusers' spelling).
    dropout (`float`, *optional*, defaults to 0.0):
        Dropout in the residual blocks.
    in_channels (`int`, *optional*, defaults to 3):
        Image channels.
    latents_mean (`list[float]`, *optional*):
        Per-channel mean of the latents (Wan 2.1's by default); world latents are `(mu - latents_mean) / latents_std`.
    latents_std (`list[float]`, *optional*):
        Per-channel standard deviation of the latents (Wan 2.1's by default).

    The field names are those of diffusers' `AutoencoderKLWan` config, so a Cosmos `vae/config.json` maps onto it with
    `from_vae_config` (decoder-only keys are dropped).
    """

    model_type = "theworld_world_encoder"
    base_config_key = "world_config"

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: list[int] | None = None
    num_res_blocks: int = 2
    attn_scales: list[float] | None = None
    temperal_downsample: list[bool] | None = None
    dropout: float = 0.0
    in_channels: int = 3
    latents_mean: list[float] | None = None
    latents_std: list[float] | None = None

    def __post_init__(self, **kwargs):
        if self.dim_mult is None:
            self.dim_mult = [1, 2, 4, 4]
        if self.attn_scales is None:
            self.attn_scales = []
        if self.temperal_downsample is None:
            self.temperal_downsample = [False, True, True]
        if self.latents_mean is None:
            self.latents_mean = list(WAN_LATENTS_MEAN)
        if self.latents_std is None:
            self.latents_std = list(WAN_LATENTS_STD)
        super().__post_init__(**kwargs)
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample has {len(self.temperal_downsample)} entries but dim_mult "
                f"{self.dim_mult} needs {len(self.dim_mult) - 1} (one per down-sampling stage)."
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(
                f"latents_mean and latents_std need z_dim={self.z_dim} values, got {len(self.latents_mean)} and "
                f"{len(self.latents_std)}."
            )

    @property
    def spatial_compression(self) -> int:
        """Pixels per latent position along each side (8 for Wan 2.1)."""
        return 2 ** len(self.temperal_downsample)

    @classmethod
    def from_vae_config(cls, vae_config: dict[str, Any]) -> TheWorldEncoderConfig:
        """Build from a diffusers ``AutoencoderKLWan`` config dict (a Cosmos ``vae/config.json``).

        Raises `ValueError` for VAE variants whose image encoder differs from Wan 2.1's (Wan 2.2's residual VAE,
        patchified input).
        """
        if vae_config.get("is_residual"):
            raise ValueError(
                "The VAE config has is_residual=True (the Wan 2.2 VAE); TheWorld's world encoder implements the Wan "
                "2.1 VAE of Cosmos-Predict2. Point cosmos_model_name at a Cosmos-Predict2 pipeline."
            )
        if vae_config.get("patch_size"):
            raise ValueError(
                f"The VAE config has patch_size={vae_config['patch_size']}; TheWorld's world encoder implements the "
                "unpatchified Wan 2.1 VAE of Cosmos-Predict2."
            )
        keys = ("base_dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample", "dropout")
        values = {k: vae_config[k] for k in keys if vae_config.get(k) is not None}
        for key in ("latents_mean", "latents_std"):
            if vae_config.get(key) is not None:
                values[key] = [float(v) for v in vae_config[key]]
        if vae_config.get("in_channels") is not None:
            values["in_channels"] = int(vae_config["in_channels"])
        return cls(**values)


#: Fields of `TheWorldConfig` that define the world architecture and cannot change when a checkpoint is loaded.
ARCHITECTURE_FIELDS = (
    "enable_world",
    "world_image_size",
    "world_pooling",
    "world_projection_mode",
    "projection_architecture",
    "num_world_steps",
    "max_world_steps",
    "load_full_cosmos_pipeline",
)
#: Fields that may differ from the checkpoint at load time (multi-stage training, another copy of the bases).
LOAD_TIME_FIELDS = (
    "freeze_gemma_vision",
    "freeze_gemma_language",
    "freeze_cosmos_vae",
    "gemma_model_name",
    "gemma_revision",
    "cosmos_model_name",
    "cosmos_revision",
    "world_attention",
    "world_resize_mode",
    "world_encoder_dtype",
    "legacy_preprocessing",
    "rollout_num_inference_steps",
    "rollout_seed",
    "rollout_guidance_scale",
)
#: Provenance keys, stored in ``config.base_models`` and reachable as attributes (``config.gemma_model_name`` ...).
PROVENANCE_ATTRIBUTES = {
    "gemma_model_name": ("gemma", "name"),
    "gemma_revision": ("gemma", "revision"),
    "cosmos_model_name": ("cosmos", "name"),
    "cosmos_revision": ("cosmos", "revision"),
}


def default_base_models() -> dict[str, Any]:
    """Provenance of a config that was not built from base weights: the real default bases, nothing pinned."""
    return {
        "gemma": {"name": DEFAULT_GEMMA, "revision": None, "fingerprints": {}},
        "cosmos": {"name": DEFAULT_COSMOS, "revision": None, "fingerprints": {}},
    }


@auto_docstring(checkpoint="google/gemma-3-4b-it")
@strict
class TheWorldConfig(PreTrainedConfig):
    r"""
    world_config (`TheWorldEncoderConfig` or `dict`, *optional*):
        The Wan 2.1 image encoder of Cosmos-Predict2 (the world encoder).
    mm_tokens_per_image (`int`, *optional*, defaults to 256):
        SigLIP tokens per image.
    boi_token_index (`int`, *optional*, defaults to 255999):
        Id of `<start_of_image>`.
    eoi_token_index (`int`, *optional*, defaults to 256000):
        Id of `<end_of_image>`.
    enable_world (`bool`, *optional*, defaults to `True`):
        `False` gives exactly Gemma 3.
    world_image_size (`int`, *optional*, defaults to 512):
        Side of the square image the world encoder sees, in pixels.
    world_pooling (`int`, *optional*, defaults to 4):
        Average-pooling factor of the latent grid before tokenisation (512 px, pooling 4: 16 x 16 = 256 tokens).
    world_projection_mode (`str`, *optional*, defaults to `"spatial"`):
        `"spatial"`: one token per latent position of `z` dims; `"channel"`: one token per latent channel of `h*w`
        dims.
    projection_architecture (`str`, *optional*, defaults to `"mlp"`):
        `"mlp"`, `"mlp_no_final_gelu"` or `"linear"`.
    world_attention (`str`, *optional*, defaults to `"bidirectional"`):
        `"bidirectional"`: the world tokens of one block attend to each other, like Gemma 3's image tokens;
        `"causal"`: left to right (theworld 0.1.0).
    world_placement (`str`, *optional*, defaults to `"after_image"`):
        Where the processor puts a world block: `"after_image"` (right after the image's SigLIP block, next to the
        question) or `"after_bos"` (theworld 0.1.0).
    world_resize_mode (`str`, *optional*, defaults to `"squash"`):
        How the processor fits an image to the square world image: `"squash"` (the whole picture, like Gemma's own
        resize), `"letterbox"` (padded to a square) or `"center_crop"` (theworld 0.1.0).
    world_encoder_dtype (`str`, *optional*, defaults to `"float32"`):
        `"float32"`: the world encoder is loaded in float32 whatever the model's `dtype` (the Wan VAE's recommended
        precision); `None`: it follows the model's dtype. (`model.to(dtype)` casts every module, as in transformers.)
    legacy_preprocessing (`bool`, *optional*, defaults to `False`):
        The earlier research code's input path: [0, 255] pixels squashed to 512 px, unnormalised latents.
    num_world_steps (`int`, *optional*, defaults to 0):
        Future latent frames predicted by the Cosmos DiT (0: the current frame only).
    max_world_steps (`int`, *optional*, defaults to 16):
        Upper bound for `num_world_steps`.
    load_full_cosmos_pipeline (`bool`, *optional*, defaults to `False`):
        Hold the Cosmos DiT even when `num_world_steps == 0`.
    freeze_gemma_vision (`bool`, *optional*, defaults to `True`):
        Keep SigLIP and the multimodal projector frozen.
    freeze_gemma_language (`bool`, *optional*, defaults to `True`):
        Keep the language model, its embeddings and `lm_head` frozen.
    freeze_cosmos_vae (`bool`, *optional*, defaults to `True`):
        Keep the world encoder frozen.
    random_projection_init (`bool`, *optional*, defaults to `False`):
        Initialise the world projector with `N(0, initializer_range)` instead of Xavier-uniform.
    rollout_transformer_config (`dict`, *optional*):
        The Cosmos Video2World DiT's diffusers config (rollout only).
    rollout_scheduler_config (`dict`, *optional*):
        The Cosmos scheduler's diffusers config (rollout only).
    rollout_num_inference_steps (`int`, *optional*, defaults to 35):
        Denoising steps of a rollout (the pipeline's default).
    rollout_guidance_scale (`float`, *optional*, defaults to 7.0):
        Classifier-free guidance of a rollout, with the pipeline's default negative prompt (1.0: none).
    rollout_seed (`int`, *optional*, defaults to 0):
        Seed of the rollout noise (rollouts are deterministic).
    rollout_mode (`str`, *optional*, defaults to `"joint"`):
        `"joint"`: the predicted frames are denoised together, as the Video2World pipeline does for
        `num_frames = 1 + 4k`; `"autoregressive"`: one frame at a time (theworld 0.1.0).
    start_of_world_token (`str`, *optional*, defaults to `"<start_of_world>"`):
        Marker opening a world block.
    end_of_world_token (`str`, *optional*, defaults to `"<end_of_world>"`):
        Marker closing a world block.
    world_token (`str`, *optional*, defaults to `"<world_soft_token>"`):
        Placeholder of one world token.
    start_of_world_token_id (`int`, *optional*, defaults to 262145):
        Id of `<start_of_world>` (a spare row of Gemma 3's embedding matrix).
    end_of_world_token_id (`int`, *optional*, defaults to 262146):
        Id of `<end_of_world>`.
    world_token_id (`int`, *optional*, defaults to 262147):
        Id of `<world_soft_token>`.
    base_models (`dict`, *optional*):
        Provenance, not architecture: `{"gemma": {"name", "revision", "fingerprints"}, "cosmos": {...}}`, where the
        base weights come from, pinned (fingerprints map each weight file, relative to the repo, to a content
        fingerprint). Also reachable as `gemma_model_name`, `gemma_revision`, `cosmos_model_name`,
        `cosmos_revision` and `base_fingerprints`.
    checkpoint_kind (`str`, *optional*):
        Provenance: `"partial"` (only what training changed) or `"full"`, set by `save_pretrained`.
    checkpoint_format_version (`int`, *optional*, defaults to 2):
        Provenance: the checkpoint format (1: theworld 0.1.0).
    theworld_version (`str`, *optional*):
        Provenance: the theworld version that wrote the config.

    Unknown keyword arguments are kept as extra attributes, like any `PreTrainedConfig`; one that is a near-miss of a
    TheWorld field (`world_pooing`) is refused with the field's name.

    Example:

    ```python
    >>> from theworld import TheWorldConfig, TheWorldForConditionalGeneration

    >>> configuration = TheWorldConfig()  # Gemma 3 and Cosmos-Predict2 2B geometry, 256 world tokens
    >>> configuration.num_world_tokens
    256
    ```
    """

    model_type = "theworld"
    attribute_map: ClassVar[dict[str, str]] = {
        "image_token_id": "image_token_index",
        "boi_token_id": "boi_token_index",
        "eoi_token_id": "eoi_token_index",
    }
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="gemma3_text"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="siglip_vision_model"),
        "world_config": TheWorldEncoderConfig,
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    world_config: dict | PreTrainedConfig | None = None
    mm_tokens_per_image: int = 256
    boi_token_index: int = 255_999
    eoi_token_index: int = 256_000
    image_token_index: int = 262_144
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True

    enable_world: bool = True
    world_image_size: int = 512
    world_pooling: int = 4
    world_projection_mode: str = "spatial"
    projection_architecture: str = "mlp"
    world_attention: str = "bidirectional"
    world_placement: str = "after_image"
    world_resize_mode: str = "squash"
    world_encoder_dtype: str | None = "float32"
    legacy_preprocessing: bool = False
    num_world_steps: int = 0
    max_world_steps: int = 16
    load_full_cosmos_pipeline: bool = False
    freeze_gemma_vision: bool = True
    freeze_gemma_language: bool = True
    freeze_cosmos_vae: bool = True
    random_projection_init: bool = False
    rollout_transformer_config: dict | None = None
    rollout_scheduler_config: dict | None = None
    rollout_num_inference_steps: int = 35
    rollout_guidance_scale: float = 7.0
    rollout_seed: int = 0
    rollout_mode: str = "joint"
    start_of_world_token: str = "<start_of_world>"
    end_of_world_token: str = "<end_of_world>"
    world_token: str = "<world_soft_token>"
    start_of_world_token_id: int | None = 262_145
    end_of_world_token_id: int | None = 262_146
    world_token_id: int | None = 262_147

    base_models: dict | None = None
    checkpoint_kind: str | None = None
    checkpoint_format_version: int = CHECKPOINT_FORMAT_VERSION
    theworld_version: str = THEWORLD_VERSION

    def __post_init__(self, **kwargs):
        if self.base_models is None:
            self.base_models = default_base_models()
        provenance = {k: kwargs.pop(k) for k in list(kwargs) if k in PROVENANCE_ATTRIBUTES or k == "base_fingerprints"}
        for key in kwargs:
            if (close := self.closest_field(key)) is not None:
                raise ValueError(
                    f"TheWorldConfig got the unknown field {key!r}; did you mean {close!r}? Fix the spelling (unknown "
                    "fields that are not near-misses are kept as extra attributes)."
                )
        super().__post_init__(**kwargs)
        for key, value in provenance.items():
            setattr(self, key, value)
        self.check_world()

    @classmethod
    def closest_field(cls, name: str) -> str | None:
        """The TheWorld field that ``name`` looks like a misspelling of, or ``None``.

        ``None`` for the name of a field itself, a private name, an `attribute_map` alias (``image_token_id``), a
        keyword argument every config takes (``bos_token_id`` ...) and names close to no TheWorld field (those are kept
        as extra attributes). Candidates are TheWorld's own fields and the provenance accessors, not the generic
        `PreTrainedConfig` ones.
        """
        fields = cls.__dataclass_fields__
        if name.startswith("_") or name in fields or name in cls.attribute_map or name in STANDARD_CONFIG_KWARGS:
            return None
        own = [f for f in fields if f not in PreTrainedConfig.__dataclass_fields__ and not f.startswith("_")]
        return _closest(name, own + list(PROVENANCE_ATTRIBUTES))

    # ------------------------------------------------------------------ provenance accessors
    def __getattr__(self, key: str) -> Any:
        # Only reached when normal lookup fails: provenance lives in ``base_models``.
        if key in PROVENANCE_ATTRIBUTES:
            base, field = PROVENANCE_ATTRIBUTES[key]
            return (self.__dict__.get("base_models") or default_base_models())[base].get(field)
        if key == "base_fingerprints":
            models = self.__dict__.get("base_models") or {}
            return {base: dict(entry.get("fingerprints") or {}) for base, entry in models.items()}
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def __setattr__(self, key: str, value: Any) -> None:
        if key in PROVENANCE_ATTRIBUTES:
            base, field = PROVENANCE_ATTRIBUTES[key]
            models = copy.deepcopy(self.__dict__.get("base_models") or default_base_models())
            models.setdefault(base, {})[field] = value
            super().__setattr__("base_models", models)
            return
        if key == "base_fingerprints":
            models = copy.deepcopy(self.__dict__.get("base_models") or default_base_models())
            for base, prints in (value or {}).items():
                models.setdefault(base, {"name": None, "revision": None})["fingerprints"] = dict(prints or {})
            super().__setattr__("base_models", models)
            return
        super().__setattr__(key, value)

    # ------------------------------------------------------------------ validation
    def check_world(self) -> None:
        """Raise `ValueError` naming the field when the world settings are invalid or contradictory."""
        if self.checkpoint_format_version > CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"checkpoint_format_version={self.checkpoint_format_version} was written by a newer theworld (this "
                f"one, {THEWORLD_VERSION}, reads formats up to {CHECKPOINT_FORMAT_VERSION}). Upgrade with "
                "`pip install -U theworld`, or load it with trust_remote_code=True in a process that does not import "
                "theworld, so that the checkpoint's own code is used."
            )
        choices = {
            "world_projection_mode": WORLD_PROJECTION_MODES,
            "projection_architecture": PROJECTION_ARCHITECTURES,
            "world_attention": WORLD_ATTENTIONS,
            "world_placement": WORLD_PLACEMENTS,
            "world_resize_mode": WORLD_RESIZE_MODES,
            "rollout_mode": ROLLOUT_MODES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}.")
        if self.checkpoint_kind is not None and self.checkpoint_kind not in CHECKPOINT_KINDS:
            raise ValueError(
                f"checkpoint_kind must be one of {CHECKPOINT_KINDS} or None, got {self.checkpoint_kind!r}."
            )
        if self.world_encoder_dtype not in WORLD_ENCODER_DTYPES:
            raise ValueError(
                f"world_encoder_dtype must be 'float32' (the world encoder stays float32 whatever dtype the model loads "
                f"in) or None (it follows the model's dtype), got {self.world_encoder_dtype!r}."
            )
        if not self.enable_world and not self.freeze_cosmos_vae:
            raise ValueError(
                "freeze_cosmos_vae=False contradicts enable_world=False: without the world there is no encoder to "
                "train. Set enable_world=True or freeze_cosmos_vae=True."
            )
        if self.max_world_steps < 0:
            raise ValueError(f"max_world_steps must be >= 0, got {self.max_world_steps}.")
        if not 0 <= self.num_world_steps <= self.max_world_steps:
            raise ValueError(
                f"num_world_steps must lie in [0, max_world_steps={self.max_world_steps}], got {self.num_world_steps}. "
                "Lower num_world_steps (future latent frames to predict) or raise max_world_steps."
            )
        if self.world_pooling < 1:
            raise ValueError(f"world_pooling must be >= 1, got {self.world_pooling}.")
        if self.rollout_num_inference_steps < 2:
            raise ValueError(
                f"rollout_num_inference_steps must be >= 2 (the last Euler step of the Video2World schedule is a "
                f"no-op), got {self.rollout_num_inference_steps}."
            )
        if self.world_image_size < 16:
            raise ValueError(f"world_image_size must be >= 16 pixels, got {self.world_image_size}.")
        factor = self.world_config.spatial_compression
        if self.world_image_size % (factor * self.world_pooling) != 0:
            raise ValueError(
                f"world_image_size={self.world_image_size} must be divisible by the world encoder's spatial "
                f"compression ({factor}) times world_pooling ({self.world_pooling})."
            )
        if len({self.start_of_world_token, self.end_of_world_token, self.world_token}) != 3:
            raise ValueError("start_of_world_token, end_of_world_token and world_token must be three distinct strings.")

    def validate_world(self):
        """Part of the ``@strict`` validation run at save time."""
        self.check_world()

    # ------------------------------------------------------------------ derived geometry
    @property
    def latent_channels(self) -> int:
        """Channels ``z`` of one latent frame."""
        return self.world_config.z_dim

    @property
    def latent_grid_size(self) -> int:
        """Side of the (pooled) latent grid: ``world_image_size / (spatial compression * world_pooling)``."""
        return self.world_image_size // (self.world_config.spatial_compression * self.world_pooling)

    @property
    def num_world_frames(self) -> int:
        """Latent frames that become world tokens: the current frame plus ``num_world_steps`` predicted ones."""
        return 1 + self.num_world_steps

    @property
    def world_tokens_per_frame(self) -> int:
        """World tokens of one latent frame: ``h*w`` in spatial mode, ``z`` in channel mode."""
        if self.world_projection_mode == "spatial":
            return self.latent_grid_size**2
        return self.latent_channels

    @property
    def world_token_dim(self) -> int:
        """Input width of the world projector: ``z`` in spatial mode, ``h*w`` in channel mode."""
        if self.world_projection_mode == "spatial":
            return self.latent_channels
        return self.latent_grid_size**2

    @property
    def num_world_tokens(self) -> int:
        """``<world_soft_token>`` placeholders between ``<start_of_world>`` and ``<end_of_world>`` per world block."""
        if not self.enable_world:
            return 0
        return self.num_world_frames * self.world_tokens_per_frame

    @property
    def rollout_enabled(self) -> bool:
        """Whether the Cosmos DiT is part of the model (``num_world_steps > 0`` or ``load_full_cosmos_pipeline``)."""
        return self.enable_world and (self.num_world_steps > 0 or self.load_full_cosmos_pipeline)

    @property
    def world_token_ids(self) -> tuple[int, int, int]:
        """``(start_of_world_token_id, end_of_world_token_id, world_token_id)``."""
        return (self.start_of_world_token_id, self.end_of_world_token_id, self.world_token_id)

    def trainable_prefixes(self) -> list[str]:
        """State-dict prefixes that training may change, from the freeze flags: what a partial checkpoint saves.

        With rollout it also lists the fixed text embeddings ``model.world_rollout.prompt_embeds`` and
        ``negative_prompt_embeds`` (buffers computed once from the Cosmos T5 encoder), so that loading a partial
        checkpoint never needs T5.
        """
        prefixes = []
        if self.enable_world:
            prefixes += ["model.world_projector.", "model.world_boundary_embeddings."]
            if self.num_world_steps > 0:
                prefixes += ["model.world_step_embeddings."]
            if self.rollout_enabled:
                prefixes += ["model.world_rollout.prompt_embeds", "model.world_rollout.negative_prompt_embeds"]
            if not self.freeze_cosmos_vae:
                prefixes += ["model.world_encoder."]
        if not self.freeze_gemma_vision:
            prefixes += ["model.vision_tower.", "model.multi_modal_projector."]
        if not self.freeze_gemma_language:
            prefixes += ["model.language_model.", "lm_head."]
        return prefixes

    # ------------------------------------------------------------------ serialisation
    def to_diff_dict(self) -> dict[str, Any]:
        """The diff dict, always with the format version and provenance (a reader must know which format it has)."""
        out = super().to_diff_dict()
        out["checkpoint_format_version"] = self.checkpoint_format_version
        out["theworld_version"] = self.theworld_version
        out["base_models"] = copy.deepcopy(self.base_models)
        return out

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> TheWorldConfig:
        """`PreTrainedConfig.from_dict`, reading theworld 0.1.0 configs (format 1) too."""
        return super().from_dict(upgrade_config_dict(config_dict), **kwargs)


def upgrade_config_dict(config_dict: dict[str, Any]) -> dict[str, Any]:
    """Turn a theworld 0.1.0 ``config.json`` (checkpoint format 1) into today's layout; other dicts pass unchanged.

    Format 1 wrote Gemma 3's fields flat, the Wan VAE config as ``vae_config``, the DiT and scheduler configs as
    ``transformer_config`` / ``scheduler_config``, and the provenance as flat fields; it omitted every value equal to
    its default, so the 0.1.0 defaults (`FORMAT_1_DEFAULTS`) fill the gaps.
    """
    if config_dict.get("model_type") != "theworld" or int(config_dict.get("checkpoint_format_version", 1)) >= 2:
        return config_dict
    data = copy.deepcopy(config_dict)
    for key, value in FORMAT_1_DEFAULTS.items():
        data.setdefault(key, value)
    vae = data.pop("vae_config", None)
    if vae is not None and "world_config" not in data:
        data["world_config"] = TheWorldEncoderConfig.from_vae_config(vae).to_dict()
    if "transformer_config" in data:
        data["rollout_transformer_config"] = data.pop("transformer_config")
    if "scheduler_config" in data:
        data["rollout_scheduler_config"] = data.pop("scheduler_config")
    base_models = default_base_models()
    for key, (base, field) in PROVENANCE_ATTRIBUTES.items():
        if key in data:
            base_models[base][field] = data.pop(key)
    subfolders = {
        "gemma": "",
        "cosmos_vae": "vae/",
        "cosmos_transformer": "transformer/",
        "cosmos_text_encoder": "text_encoder/",
    }
    for part, prints in (data.pop("base_fingerprints", None) or {}).items():
        base = "gemma" if part == "gemma" else "cosmos"
        for name, value in (prints or {}).items():
            base_models[base]["fingerprints"][subfolders.get(part, part + "/") + name] = value
    data["base_models"] = base_models
    for key in ("architectures", "auto_map"):
        data.pop(key, None)
    data["checkpoint_format_version"] = CHECKPOINT_FORMAT_VERSION
    return data


__all__ = ["TheWorldConfig", "TheWorldEncoderConfig"]
