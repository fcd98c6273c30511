"""Configuration of TheWorld: Gemma 3 fused with a Cosmos world model.

This file is shipped next to every checkpoint as remote code. It is flat and self-contained: it imports only
``transformers`` (and the standard library).
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import Gemma3Config
from transformers.generation import GenerationConfig

logger = logging.getLogger(__name__)

#: Version of the checkpoint format this code reads and writes. A config with a larger value was written by a newer,
#: incompatible major version of theworld and is refused.
CHECKPOINT_FORMAT_VERSION = 1
#: Package version written into every config (kept in sync with ``theworld.__version__``).
THEWORLD_VERSION = "0.1.0"

WORLD_PROJECTION_MODES = ("spatial", "channel")
PROJECTION_ARCHITECTURES = ("mlp", "mlp_no_final_gelu", "linear")
CHECKPOINT_KINDS = ("partial", "full")

DEFAULT_GEMMA = "google/gemma-3-4b-it"
DEFAULT_COSMOS = "nvidia/Cosmos-Predict2-2B-Video2World"

# Keys that transformers itself may write into / pass through a config, on top of the declared fields.
_TRANSFORMERS_EXTRA_KEYS = {
    "torch_dtype",
    "name_or_path",
    "output_attentions",
    "attn_implementation",
    "experts_implementation",
    "per_layer_config",
    "auto_map",
    "num_labels",
    "rope_scaling",
    "rope_theta",
    "use_cache",
    "pad_token_id",
    "bos_token_id",
    "eos_token_id",
    "model_type",
    "custom_pipelines",
    "base_model_tp_plan",
    "base_model_pp_plan",
}


def _vae_geometry(vae_config: dict[str, Any] | None) -> tuple[int, int]:
    """Return ``(z_dim, spatial_compression)`` of a Wan VAE config dict (diffusers defaults when absent)."""
    vae_config = vae_config or {}
    z_dim = int(vae_config.get("z_dim", 16))
    downsample = vae_config.get("temperal_downsample", [False, True, True])
    factor = vae_config.get("scale_factor_spatial") or 2 ** len(downsample)
    patch = vae_config.get("patch_size") or 1
    return z_dim, int(factor) * int(patch)


class TheWorldConfig(Gemma3Config):
    r"""Configuration of [`TheWorld`]: a Gemma 3 vision-language model that reads "world tokens" made from Cosmos latents.

    It is a [`Gemma3Config`] (``text_config``, ``vision_config``, image-token fields) plus the world-model parts, so
    that the whole skeleton can be built from ``config.json`` alone, on the meta device, with no network.

    Args:
        gemma_model_name (`str`): hub id or local path of the Gemma 3 base weights.
        gemma_revision (`str`, *optional*): resolved commit of ``gemma_model_name`` when it came from the hub.
        cosmos_model_name (`str`): hub id or local path of the Cosmos-Predict2 pipeline (a diffusers folder).
        cosmos_revision (`str`, *optional*): resolved commit of ``cosmos_model_name`` when it came from the hub.
        base_fingerprints (`dict`, *optional*): ``{"gemma": {file: sha256}, "cosmos": {file: sha256}}`` of the base
            weight files used when the model was built; checked on load.
        enable_world (`bool`): when ``False`` the model is exactly Gemma 3.
        load_full_cosmos_pipeline (`bool`): also load the Cosmos DiT and scheduler when ``num_world_steps == 0``.
        freeze_gemma_vision (`bool`): freeze SigLIP and the multimodal projector.
        freeze_gemma_language (`bool`): freeze the language model (embeddings included) and ``lm_head``.
        freeze_cosmos_vae (`bool`): freeze the Cosmos VAE encoder.
        num_world_steps (`int`): future latent frames predicted by the Cosmos DiT (0 = current frame only).
        max_world_steps (`int`): upper bound for ``num_world_steps``.
        random_projection_init (`bool`): initialise the world projector with plain ``N(0, initializer_range)``
            instead of the default Xavier-uniform init.
        world_projection_mode (`str`): ``"spatial"`` (one token per latent position, ``z`` dims each) or
            ``"channel"`` (one token per latent channel, ``h*w`` dims each).
        projection_architecture (`str`): ``"mlp"``, ``"mlp_no_final_gelu"`` or ``"linear"``.
        world_image_size (`int`): side of the square image fed to the VAE, in pixels.
        world_pooling (`int`): average-pooling factor applied to the latent grid before tokenisation.
        vae_config (`dict`): the diffusers ``AutoencoderKLWan`` config of the Cosmos VAE.
        transformer_config (`dict`, *optional*): the diffusers ``CosmosTransformer3DModel`` config (rollout only).
        scheduler_config (`dict`, *optional*): the diffusers scheduler config (rollout only).
        rollout_num_inference_steps (`int`): denoising steps per predicted frame in rollout.
        rollout_seed (`int`): seed of the rollout noise, so that rollout is deterministic.
        start_of_world_token / end_of_world_token / world_token (`str`): the marker and placeholder strings.
        start_of_world_token_id / end_of_world_token_id / world_token_id (`int`): their tokenizer ids.
        checkpoint_kind (`str`, *optional*): ``"partial"`` or ``"full"``, set by ``save_pretrained``.
        checkpoint_format_version (`int`): format of the checkpoint; newer than this code is an error.
        theworld_version (`str`): version of the package that wrote the config.
    """

    model_type = "theworld"

    gemma_model_name: str = DEFAULT_GEMMA
    gemma_revision: str | None = None
    cosmos_model_name: str = DEFAULT_COSMOS
    cosmos_revision: str | None = None
    base_fingerprints: dict | None = None
    enable_world: bool = True
    load_full_cosmos_pipeline: bool = False
    freeze_gemma_vision: bool = True
    freeze_gemma_language: bool = True
    freeze_cosmos_vae: bool = True
    num_world_steps: int = 0
    max_world_steps: int = 16
    random_projection_init: bool = False
    world_projection_mode: str = "spatial"
    projection_architecture: str = "mlp"
    world_image_size: int = 512
    world_pooling: int = 1
    vae_config: dict | None = None
    transformer_config: dict | None = None
    scheduler_config: dict | None = None
    rollout_num_inference_steps: int = 4
    rollout_seed: int = 0
    start_of_world_token: str = "<start_of_world>"
    end_of_world_token: str = "<end_of_world>"
    world_token: str = "<world_soft_token>"
    start_of_world_token_id: int | None = None
    end_of_world_token_id: int | None = None
    world_token_id: int | None = None
    checkpoint_kind: str | None = None
    checkpoint_format_version: int = CHECKPOINT_FORMAT_VERSION
    theworld_version: str = THEWORLD_VERSION

    def __post_init__(self, **kwargs):
        unknown = sorted(
            k
            for k in kwargs
            if not k.startswith("_")
            and k not in _TRANSFORMERS_EXTRA_KEYS
            and k not in GenerationConfig._get_default_generation_params()
        )
        if unknown:
            raise ValueError(
                f"TheWorldConfig got unknown field(s) {unknown}. Remove them from config.json, or upgrade theworld "
                "if the checkpoint was written by a newer version."
            )
        super().__post_init__(**kwargs)
        self.validate_world()

    # ------------------------------------------------------------------ validation
    def validate_world(self) -> None:
        """Raise `ValueError` naming the field when the world settings are invalid or contradictory."""
        if self.checkpoint_format_version > CHECKPOINT_FORMAT_VERSION:
            raise ValueError(
                f"checkpoint_format_version={self.checkpoint_format_version} was written by a newer major version of "
                f"theworld (this one reads format {CHECKPOINT_FORMAT_VERSION}, version {THEWORLD_VERSION}). "
                "Upgrade with `pip install -U theworld`, or load it with trust_remote_code=True in a process that does "
                "not import theworld, so that the checkpoint's own code is used."
            )
        if self.world_projection_mode not in WORLD_PROJECTION_MODES:
            raise ValueError(
                f"world_projection_mode must be one of {WORLD_PROJECTION_MODES}, got {self.world_projection_mode!r}."
            )
        if self.projection_architecture not in PROJECTION_ARCHITECTURES:
            raise ValueError(
                f"projection_architecture must be one of {PROJECTION_ARCHITECTURES}, "
                f"got {self.projection_architecture!r}."
            )
        if self.checkpoint_kind is not None and self.checkpoint_kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint_kind must be one of {CHECKPOINT_KINDS} or None, got {self.checkpoint_kind!r}.")
        if not self.enable_world and not self.freeze_cosmos_vae:
            raise ValueError(
                "freeze_cosmos_vae=False contradicts enable_world=False: without the world there is no VAE to train. "
                "Set enable_world=True or freeze_cosmos_vae=True."
            )
        if not isinstance(self.max_world_steps, int) or self.max_world_steps < 0:
            raise ValueError(f"max_world_steps must be a non-negative int, got {self.max_world_steps!r}.")
        if not isinstance(self.num_world_steps, int) or not 0 <= self.num_world_steps <= self.max_world_steps:
            raise ValueError(
                f"num_world_steps must be an int in [0, max_world_steps={self.max_world_steps}], "
                f"got {self.num_world_steps!r}. Lower num_world_steps (future latent frames to predict) or raise "
                "max_world_steps."
            )
        if not isinstance(self.world_pooling, int) or self.world_pooling < 1:
            raise ValueError(f"world_pooling must be an int >= 1, got {self.world_pooling!r}.")
        if not isinstance(self.rollout_num_inference_steps, int) or self.rollout_num_inference_steps < 1:
            raise ValueError(
                f"rollout_num_inference_steps must be an int >= 1, got {self.rollout_num_inference_steps!r}."
            )
        _, factor = _vae_geometry(self.vae_config)
        if not isinstance(self.world_image_size, int) or self.world_image_size < 16:
            raise ValueError(f"world_image_size must be an int >= 16 pixels, got {self.world_image_size!r}.")
        if self.world_image_size % (factor * self.world_pooling) != 0:
            raise ValueError(
                f"world_image_size={self.world_image_size} must be divisible by the VAE's spatial compression "
                f"({factor}) times world_pooling ({self.world_pooling})."
            )
        if len({self.start_of_world_token, self.end_of_world_token, self.world_token}) != 3:
            raise ValueError("start_of_world_token, end_of_world_token and world_token must be three distinct strings.")

    # ------------------------------------------------------------------ derived geometry
    @property
    def latent_channels(self) -> int:
        """Channels ``z`` of one Cosmos latent frame."""
        return _vae_geometry(self.vae_config)[0]

    @property
    def latent_grid_size(self) -> int:
        """Side of the (pooled) latent grid: ``world_image_size / (spatial compression * world_pooling)``."""
        _, factor = _vae_geometry(self.vae_config)
        return self.world_image_size // (factor * self.world_pooling)

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
        """Number of ``<world_soft_token>`` placeholders between ``<start_of_world>`` and ``<end_of_world>``."""
        if not self.enable_world:
            return 0
        return self.num_world_frames * self.world_tokens_per_frame

    @property
    def rollout_enabled(self) -> bool:
        """Whether the Cosmos DiT is part of the model (``num_world_steps > 0`` or ``load_full_cosmos_pipeline``)."""
        return self.enable_world and (self.num_world_steps > 0 or self.load_full_cosmos_pipeline)

    def trainable_prefixes(self) -> list[str]:
        """State-dict prefixes that training may change, derived from the freeze flags; what a partial checkpoint saves.

        With ``num_world_steps > 0`` it also lists the buffer ``world_rollout.prompt_embeds``: not trained, but the
        fixed rollout prompt embedding computed once at the fresh build, which partial checkpoints carry so that loading
        never needs the Cosmos text encoder (a buffer, so freeze flags and parameter counts are unaffected).
        """
        prefixes = []
        if self.enable_world:
            prefixes += ["world_projector.", "world_boundary_embeddings."]
            if self.num_world_steps > 0:
                prefixes += ["world_step_embeddings.", "world_rollout.prompt_embeds"]
            if not self.freeze_cosmos_vae:
                prefixes += ["cosmos_vae.encoder.", "cosmos_vae.quant_conv."]
        if not self.freeze_gemma_vision:
            prefixes += ["model.vision_tower.", "model.multi_modal_projector."]
        if not self.freeze_gemma_language:
            prefixes += ["model.language_model.", "lm_head."]
        return prefixes


__all__ = ["TheWorldConfig"]
