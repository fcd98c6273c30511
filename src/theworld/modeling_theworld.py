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
"""TheWorld: Gemma 3 that reads world tokens made from Cosmos-Predict2 latents.

Shipped next to every checkpoint as remote code: flat, importing only ``torch``, ``transformers`` and its sibling
files (``diffusers`` only inside `rollout_theworld`, for the optional Cosmos DiT, behind a guarded import).

Data flow for a batch of ``B`` prompts holding ``B_w`` world blocks (one per image)::

    world_pixel_values (B_w, 3, S, S) in [-1, 1]
      -> world encoder (the Wan 2.1 image encoder, 2-D)   mu (B_w, z, h, w), h = w = S / 8
      -> (mu - latents_mean) / latents_std                 (B_w, z, 1, h, w)
      -> [Cosmos DiT rollout, num_world_steps = k]         (B_w, z, 1 + k, h, w)
      -> tokens (spatial | channel, average pooling)       (B_w, N, D_in)
      -> world projector (+ per-frame step embeddings)     (B_w, N, d_model)
      -> scattered into the <world_soft_token> positions of the input embeddings; the learned boundary embeddings
         go to <start_of_world> / <end_of_world>; Gemma 3's language model runs as usual, with the world tokens of
         a block attending to each other (bidirectionally) like Gemma 3's image tokens.
"""

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
from transformers.masking_utils import (
    _preprocess_mask_arguments,
    blockwise_overlay,
    create_causal_mask,
    create_masks_for_generate,
    maybe_pad_block_sequence_ids,
    sliding_window_overlay,
)
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import auto_docstring, can_return_tuple, torch_compilable_check
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_theworld import TheWorldConfig
from .rollout_theworld import TheWorldRollout
from .world_encoder_theworld import TheWorldWanEncoder, TheWorldWanRMSNorm

logger = logging.getLogger(__name__)

# Gemma 3 checkpoints on the hub use the pre-5.x key layout (``language_model.model.*``); transformers renames it per
# model type, so TheWorld registers the same renaming (and, as custom code, must register it to have it applied).
register_checkpoint_conversion_mapping("theworld", get_checkpoint_conversion_mapping("gemma3") or [], overwrite=True)

#: ``token_type_ids`` values written by `TheWorldProcessor`: text, a SigLIP image token, a world token.
TEXT_TOKEN_TYPE, IMAGE_TOKEN_TYPE, WORLD_TOKEN_TYPE = 0, 1, 2


# ----------------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------------
@auto_docstring
@dataclass
class TheWorldModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    world_hidden_states (`torch.FloatTensor` of shape `(num_world_blocks, num_world_tokens, hidden_size)`, *optional*):
        The world features placed at the `<world_soft_token>` positions (world projector output plus the per-frame
        step embeddings), one row per world block. `None` when no world input was given.
    """

    world_hidden_states: torch.FloatTensor | None = None


@auto_docstring
@dataclass
class TheWorldCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    world_hidden_states (`torch.FloatTensor` of shape `(num_world_blocks, num_world_tokens, hidden_size)`, *optional*):
        The world features placed at the `<world_soft_token>` positions, one row per world block. `None` when no world
        input was given.
    """

    world_hidden_states: torch.FloatTensor | None = None


# ----------------------------------------------------------------------------------------------------------------------
# Small pure functions for tensor plumbing
# ----------------------------------------------------------------------------------------------------------------------
def latents_to_world_tokens(latents: torch.Tensor, mode: str, pooling: int = 1) -> torch.Tensor:
    """Turn latent frames into token vectors.

    Args:
        latents: ``(B, z, T, h, w)`` normalised latents (``T`` frames).
        mode: ``"spatial"`` gives ``T*h'*w'`` tokens of ``z`` dims; ``"channel"`` gives ``T*z`` tokens of ``h'*w'``
            dims, where ``h' = h // pooling``.
        pooling: average-pooling factor over the latent grid.

    Returns:
        ``(B, N, D_in)``, frames in order (all tokens of frame 0 first).
    """
    b, z, t, h, w = latents.shape
    frames = latents.permute(0, 2, 1, 3, 4).reshape(b * t, z, h, w)
    if pooling > 1:
        frames = nn.functional.avg_pool2d(frames, kernel_size=pooling, stride=pooling)
    hp, wp = frames.shape[-2:]
    if mode == "spatial":
        return frames.flatten(2).transpose(1, 2).reshape(b, t * hp * wp, z)
    if mode == "channel":
        return frames.flatten(2).reshape(b, t * z, hp * wp)
    raise ValueError(f"world_projection_mode must be 'spatial' or 'channel', got {mode!r}.")


def block_sequence_ids_from_types(token_types: torch.Tensor) -> torch.Tensor:
    """Group ids for bidirectional attention blocks.

    Args:
        token_types: ``(B, L)`` with 0 for causal tokens and a positive type (image, world) for block tokens.

    Returns:
        ``(B, L)``: -1 for causal tokens; every maximal run of equal positive types gets its own id (>= 0), so an image
        block directly followed by a world block gives two blocks.
    """
    previous = nn.functional.pad(token_types, (1, 0), value=0)[:, :-1]
    starts = (token_types > 0) & (token_types != previous)
    ids = torch.cumsum(starts.long(), dim=1) - 1
    return torch.where(token_types > 0, ids, torch.full_like(ids, -1))


def token_types_from_ids(
    input_ids: torch.LongTensor, world_token_id: int, image_token_id: int | None = None
) -> torch.LongTensor:
    """``token_type_ids`` as `TheWorldProcessor` writes them (0 text, 1 image, 2 world), derived from ``input_ids``.

    ``image_token_id=None`` leaves image tokens causal (type 0), which is what Gemma 3 does without token types.
    """
    types = torch.where(input_ids == world_token_id, WORLD_TOKEN_TYPE, TEXT_TOKEN_TYPE)
    if image_token_id is not None:
        types = torch.where(input_ids == image_token_id, IMAGE_TOKEN_TYPE, types)
    return types


def attention_masks_with_blocks(
    text_config,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    cache: Cache | None,
    position_ids: torch.Tensor | None,
    block_sequence_ids: torch.Tensor | None,
) -> dict:
    """Gemma 3's per-layer-type masks with bidirectional blocks (image and world tokens).

    Global layers: causal OR same-block. Sliding layers: sliding window AND (causal OR same-block), so a block never
    reaches past the window. Without blocks this is transformers' plain `create_masks_for_generate`.

    Returns:
        ``{"full_attention": mask, "sliding_attention": mask}`` (only the layer types the config uses).
    """
    kwargs = {
        "config": text_config,
        "inputs_embeds": inputs_embeds,
        "attention_mask": attention_mask,
        "cache": cache,
        "position_ids": position_ids,
    }
    if block_sequence_ids is None:
        return create_masks_for_generate(**kwargs)
    masks = {"full_attention": create_causal_mask(**kwargs, block_sequence_ids=block_sequence_ids)}
    if "sliding_attention" in set(text_config.layer_types):
        sliding_layer = (
            cache.is_sliding.index(True) if getattr(cache, "is_sliding", None) and True in cache.is_sliding else 0
        )
        early_exit, _, _, _, kv_length, _, kv_offset = _preprocess_mask_arguments(**kwargs, layer_idx=sliding_layer)
        padded = block_sequence_ids
        if not early_exit:
            padded = maybe_pad_block_sequence_ids(block_sequence_ids, attention_mask, kv_length, kv_offset)
        masks["sliding_attention"] = create_causal_mask(
            **kwargs,
            or_mask_function=blockwise_overlay(padded),
            and_mask_function=sliding_window_overlay(text_config.sliding_window),
            layer_idx=sliding_layer,
        )
    return masks


def check_world_layout(input_ids: torch.Tensor, config: TheWorldConfig, num_world_inputs: int) -> None:
    """Host-side validation of the world blocks in ``input_ids`` ``(B, L)`` (eager mode only).

    Every world block is ``<start_of_world>`` + ``config.num_world_tokens`` placeholders + ``<end_of_world>``, and the
    number of blocks equals ``num_world_inputs`` (world images, latents or feature rows given).
    """
    start, end, world = config.world_token_ids
    n = config.num_world_tokens
    counts = (input_ids == world).sum(-1)
    starts = (input_ids == start).sum(-1)
    ends = (input_ids == end).sum(-1)
    bad = (counts != starts * n) | (starts != ends)
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"Rows {rows} hold {counts[rows].tolist()} {config.world_token} placeholders with "
            f"{starts[rows].tolist()} {config.start_of_world_token} and {ends[rows].tolist()} "
            f"{config.end_of_world_token} markers; every world block is one start marker, exactly {n} placeholders "
            "(config.num_world_tokens) and one end marker. Build inputs with the model's processor (a truncated "
            "prompt cuts a block)."
        )
    blocks = int(starts.sum())
    if blocks and not num_world_inputs:
        raise ValueError(
            f"input_ids hold {blocks} world block(s) but no world_pixel_values, world_latents or world_embeds_override "
            "were given; pass the world_pixel_values the processor returns (one world image per block)."
        )
    if blocks != num_world_inputs:
        raise ValueError(
            f"input_ids hold {blocks} world block(s) but {num_world_inputs} world input(s) (world_pixel_values, "
            "world_latents or world_embeds_override rows) were given; pass exactly one per world block, in order."
        )


def check_world_pixel_range(world_pixel_values: torch.Tensor, legacy: bool) -> None:
    """Host-side check (eager mode only) that world pixels are finite and in the processor's range: [-1, 1], or
    [0, 255] for ``legacy_preprocessing``."""
    if world_pixel_values.numel() == 0:
        return
    if not bool(torch.isfinite(world_pixel_values).all()):
        raise ValueError("world_pixel_values contain NaN values (or Inf); make them with the model's processor.")
    lo, hi = (0.0, 255.0) if legacy else (-1.0, 1.0)
    low, high = float(world_pixel_values.min()), float(world_pixel_values.max())
    if low < lo - 1e-3 or high > hi + 1e-3:
        raise ValueError(
            f"world_pixel_values must lie in [{lo:g}, {hi:g}] (got [{low:.3g}, {high:.3g}]); "
            + ("pixels in [0, 255] or [0, 1] must be rescaled to [-1, 1]. " if not legacy else "")
            + "The model's processor does this."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------------------------------------------------
class TheWorldRMSNorm(nn.Module):
    """Gemma's RMS norm, ``x / rms(x) * (1 + weight)`` computed in float32. Input and output ``(..., dim)``."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * (1.0 + self.weight.float())).type_as(hidden_states)


class TheWorldMultiModalProjector(nn.Module):
    """Gemma 3's image-feature projector: average-pool SigLIP patches to ``mm_tokens_per_image`` tokens, RMS-normalise
    and project to the text width. ``(B, P, d_vision)`` -> ``(B, mm_tokens_per_image, d_text)``.

    Parameter names and shapes are Gemma 3's (``mm_input_projection_weight``, ``mm_soft_emb_norm.weight``).
    """

    def __init__(self, config: TheWorldConfig):
        super().__init__()
        vision, text = config.vision_config, config.text_config
        self.mm_input_projection_weight = nn.Parameter(torch.zeros(vision.hidden_size, text.hidden_size))
        self.mm_soft_emb_norm = TheWorldRMSNorm(vision.hidden_size, eps=vision.layer_norm_eps)
        self.patches_per_image = vision.image_size // vision.patch_size
        tokens_per_side = int(config.mm_tokens_per_image**0.5)
        self.kernel_size = self.patches_per_image // tokens_per_side

    def forward(self, vision_outputs: torch.Tensor) -> torch.Tensor:
        batch, _, width = vision_outputs.shape
        grid = vision_outputs.transpose(1, 2).reshape(batch, width, self.patches_per_image, self.patches_per_image)
        pooled = nn.functional.avg_pool2d(grid.contiguous(), kernel_size=self.kernel_size, stride=self.kernel_size)
        tokens = self.mm_soft_emb_norm(pooled.flatten(2).transpose(1, 2))
        return torch.matmul(tokens, self.mm_input_projection_weight).type_as(vision_outputs)


class TheWorldProjectorLinear(nn.Linear):
    """A layer of the world projector (its own class so that ``_init_weights`` gives it Xavier-uniform weights)."""


class TheWorldBoundaryEmbedding(nn.Embedding):
    """The learned ``<start_of_world>`` / ``<end_of_world>`` embeddings, ``(2, hidden_size)``."""


class TheWorldStepEmbedding(nn.Embedding):
    """A learned embedding per world frame, ``(1 + num_world_steps, hidden_size)``; zeros at first, so a rollout model
    starts out as its ``num_world_steps=0`` counterpart plus the predicted frames."""


class TheWorldProjector(nn.Module):
    """Projects world-token vectors ``(B, N, D_in)`` to Gemma's hidden size ``(B, N, d_model)``.

    ``mlp``: linear_1 -> GELU -> linear_2 -> GELU; ``mlp_no_final_gelu`` drops the last GELU; ``linear``: linear_1.
    (The earlier research code's ``projection.{0,2}`` / ``projection`` keys are renamed on load.)
    """

    def __init__(self, config: TheWorldConfig):
        super().__init__()
        width = config.text_config.hidden_size
        self.architecture = config.projection_architecture
        self.linear_1 = TheWorldProjectorLinear(config.world_token_dim, width)
        self.act = nn.GELU()
        # CODEPATH: "mlp" and "mlp_no_final_gelu" checkpoints (the default and the earlier code's variant) have a second
        # layer; "linear" checkpoints have none.
        if config.projection_architecture != "linear":
            self.linear_2 = TheWorldProjectorLinear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(tokens)
        if self.architecture == "linear":
            return hidden
        hidden = self.linear_2(self.act(hidden))
        return self.act(hidden) if self.architecture == "mlp" else hidden


# ----------------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------------
@auto_docstring
class TheWorldPreTrainedModel(PreTrainedModel):
    config: TheWorldConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["TheWorldWanEncoder"]
    _supports_flash_attn = False  # the bidirectional image and world blocks need an explicit mask
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True
    # The world projector and the learned world embeddings always stay in float32 (their inputs are small, their
    # gradients matter); the world encoder too when ``config.world_encoder_dtype == "float32"`` (set per instance).
    _keep_in_fp32_modules_strict = ["world_projector", "world_boundary_embeddings", "world_step_embeddings"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, TheWorldMultiModalProjector):
            init.zeros_(module.mm_input_projection_weight)
        elif isinstance(module, TheWorldRMSNorm):
            init.zeros_(module.weight)
        elif isinstance(module, TheWorldProjectorLinear):
            # CODEPATH: random_projection_init reproduces the earlier research code's N(0, std) projector init; every
            # other checkpoint starts from Xavier-uniform.
            if self.config.random_projection_init:
                init.normal_(module.weight, std=std)
            else:
                init.xavier_uniform_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, TheWorldBoundaryEmbedding):
            init.normal_(module.weight, std=1.0)
        elif isinstance(module, TheWorldStepEmbedding):
            init.zeros_(module.weight)
        elif isinstance(module, TheWorldWanRMSNorm):
            init.ones_(module.gamma)
        elif isinstance(module, TheWorldWanEncoder):
            module.reset_latent_statistics()


@auto_docstring(
    custom_intro="""
    TheWorld's base model, without a language modelling head: Gemma 3's vision tower, multimodal projector and language
    model, plus the world encoder, the world projector and the learned world embeddings.
    """
)
class TheWorldModel(TheWorldPreTrainedModel):
    # we are filtering the logits/labels so we shouldn't divide the loss based on num_items_in_batch
    accepts_loss_kwargs = False

    def __init__(self, config: TheWorldConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = TheWorldMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        width = config.text_config.hidden_size
        # CODEPATH: enable_world=False checkpoints are exactly Gemma 3 and hold no world modules.
        if config.enable_world:
            self.world_encoder = TheWorldWanEncoder(config.world_config)
            self.world_projector = TheWorldProjector(config)
            self.world_boundary_embeddings = TheWorldBoundaryEmbedding(2, width)
            # CODEPATH: rollout checkpoints (num_world_steps > 0) add a learned embedding per predicted frame.
            if config.num_world_steps > 0:
                self.world_step_embeddings = TheWorldStepEmbedding(config.num_world_frames, width)
            # CODEPATH: rollout checkpoints (and load_full_cosmos_pipeline) hold the frozen Cosmos DiT.
            if config.rollout_enabled:
                self.world_rollout = TheWorldRollout(config)
            # CODEPATH: a float32 world encoder (the default) stays float32 whatever dtype the model loads in.
            if config.world_encoder_dtype == "float32":
                self._keep_in_fp32_modules_strict = [*self._keep_in_fp32_modules_strict, "world_encoder"]
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    # ------------------------------------------------------------------ features
    @can_return_tuple
    @auto_docstring(custom_intro="Projects the last hidden state of the vision tower into the language model space.")
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> tuple | BaseModelOutputWithPooling:
        vision_outputs = self.vision_tower(pixel_values=pixel_values, return_dict=True, **kwargs)
        vision_outputs.pooler_output = self.multi_modal_projector(vision_outputs.last_hidden_state)
        return vision_outputs

    def encode_world(self, world_pixel_values: torch.Tensor) -> torch.Tensor:
        """World images to the latents the world tokens are made of.

        Args:
            world_pixel_values: ``(B_w, 3, S, S)`` from the processor (in [-1, 1]; [0, 255] for
                ``legacy_preprocessing``).

        Returns:
            ``(B_w, z, 1 + num_world_steps, h, w)``: normalised latents (unnormalised for ``legacy_preprocessing``) of
            the image, followed by the frames the Cosmos DiT predicts when rollout is on.
        """
        size = self.config.world_image_size
        if world_pixel_values.ndim != 4 or tuple(world_pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(
                f"world_pixel_values must have shape (B, 3, {size}, {size}), got {tuple(world_pixel_values.shape)}; "
                "use the model's processor to make them."
            )
        if not torch.compiler.is_compiling():
            check_world_pixel_range(world_pixel_values, self.config.legacy_preprocessing)
        mu = self.world_encoder(world_pixel_values)
        # CODEPATH: the earlier research code's checkpoints were trained on unnormalised latents.
        latents = mu if self.config.legacy_preprocessing else self.world_encoder.normalize(mu)
        latents = latents.unsqueeze(2)
        # CODEPATH: rollout checkpoints append the frames the Cosmos DiT predicts.
        if self.config.num_world_steps > 0:
            latents = self.world_rollout(latents, self.config.num_world_steps)
        return latents

    @auto_docstring(custom_intro="Turns world images (or their cached latents) into world-token features.")
    def get_world_features(
        self,
        world_pixel_values: torch.Tensor | None = None,
        world_latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        r"""
        world_pixel_values (`torch.FloatTensor` of shape `(num_world_blocks, 3, world_image_size, world_image_size)`):
            World images from [`TheWorldProcessor`].
        world_latents (`torch.FloatTensor` of shape `(num_world_blocks, z, num_world_frames, h, w)`, *optional*):
            Cached latents from `encode_world`, used instead of `world_pixel_values` (skips the encoder and the DiT).

        Returns:
            `torch.FloatTensor` of shape `(num_world_blocks, num_world_tokens, hidden_size)`, in the projector's dtype.
        """
        cfg = self.config
        if world_latents is None:
            latents = self.encode_world(world_pixel_values)
        else:
            latents = world_latents.unsqueeze(2) if world_latents.ndim == 4 else world_latents
            side = cfg.world_image_size // cfg.world_config.spatial_compression
            expected = (cfg.latent_channels, cfg.num_world_frames, side, side)
            if latents.ndim != 5 or tuple(latents.shape[1:]) != expected:
                raise ValueError(
                    f"world_latents must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}, {expected[3]}) "
                    f"(channels, 1 + num_world_steps frames, latent grid of a {cfg.world_image_size}px image), got "
                    f"{tuple(world_latents.shape)}. Recompute them with model.encode_world for this model."
                )
        # The one cast of the latents: to the projector's dtype (float32 unless the model was cast with `.to`).
        projector_dtype = self.world_projector.linear_1.weight.dtype
        tokens = latents_to_world_tokens(latents.to(projector_dtype), cfg.world_projection_mode, cfg.world_pooling)
        features = self.world_projector(tokens)
        # CODEPATH: rollout checkpoints tell the frames apart with a learned embedding per frame.
        if cfg.num_world_steps > 0:
            steps = torch.arange(cfg.num_world_frames, device=features.device)
            per_token = steps.repeat_interleave(cfg.world_tokens_per_frame)
            features = features + self.world_step_embeddings(per_token).unsqueeze(0)
        return features

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """``(B, L, 1)`` mask of the SigLIP image placeholders, checked against the number of image features."""
        mask = self.token_mask(input_ids, inputs_embeds, self.config.image_token_id)
        torch_compilable_check(
            mask.sum() * inputs_embeds.shape[-1] == image_features.numel(),
            lambda: (
                f"Image features and image tokens do not match: {int(mask.sum())} tokens, "
                f"{image_features.shape[0] * image_features.shape[1]} features."
            ),
        )
        return mask.unsqueeze(-1)

    def get_world_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, world_features: torch.Tensor
    ) -> torch.Tensor:
        """``(B, L, 1)`` mask of the ``<world_soft_token>`` placeholders, checked against the world features."""
        mask = self.token_mask(input_ids, inputs_embeds, self.config.world_token_id)
        torch_compilable_check(
            mask.sum() * inputs_embeds.shape[-1] == world_features.numel(),
            lambda: (
                f"World features and world tokens do not match: {int(mask.sum())} <world_soft_token> positions, "
                f"{world_features.shape[0]} x {world_features.shape[1]} features. Pass one world image (or latent) per "
                "world block."
            ),
        )
        return mask.unsqueeze(-1)

    def world_marker_masks(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        token_type_ids: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(start, world, end)``: ``(B, L)`` masks of ``<start_of_world>``, ``<world_soft_token>`` and
        ``<end_of_world>``.

        From ``input_ids`` when given; else from ``token_type_ids`` (world tokens are type 2, the markers the positions
        just before and after a run of them), which does not rely on the three embedding rows being distinct; else by
        matching the embedding rows in ``inputs_embeds``.
        """
        if input_ids is None and token_type_ids is not None:
            world = token_type_ids.to(inputs_embeds.device) == WORLD_TOKEN_TYPE
            before = nn.functional.pad(world, (0, 1), value=False)[:, 1:]
            after = nn.functional.pad(world, (1, 0), value=False)[:, :-1]
            return before & ~world, world, after & ~world
        cfg = self.config
        start, end, world = cfg.world_token_ids
        return (
            self.token_mask(input_ids, inputs_embeds, start),
            self.token_mask(input_ids, inputs_embeds, world),
            self.token_mask(input_ids, inputs_embeds, end),
        )

    def warn_if_padding_without_mask(self, input_ids: torch.LongTensor | None, attention_mask) -> None:
        """Warn when ``input_ids`` ``(B, L)`` start or end with the pad token and no ``attention_mask`` was given: the
        padding would be attended to and change the logits. A host-side check, skipped under compile/export."""
        pad = self.config.text_config.pad_token_id
        if attention_mask is not None or input_ids is None or pad is None or torch.compiler.is_compiling():
            return
        ends = input_ids[:, [0, -1]] == pad
        if bool(ends.any()):
            rows = ends.any(-1).nonzero().flatten().tolist()
            logger.warning(
                "Rows %s of input_ids start or end with the pad token (id %d) but no attention_mask was given, so the "
                "padding is attended to and changes the logits. Pass the attention_mask the processor returns.",
                rows,
                pad,
            )

    def token_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, token_id: int
    ) -> torch.Tensor:
        """``(B, L)`` positions of ``token_id``: from ``input_ids``, else by matching its embedding row."""
        if input_ids is not None:
            return input_ids == token_id
        if token_id >= self.config.text_config.vocab_size:
            raise ValueError(
                f"Token id {token_id} has no row in the {self.config.text_config.vocab_size}-row embedding matrix, so "
                "its positions cannot be found in inputs_embeds; pass input_ids instead."
            )
        row = self.get_input_embeddings()(torch.full((), token_id, dtype=torch.long, device=inputs_embeds.device))
        return (inputs_embeds == row).all(-1)

    def embed_tokens(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Gemma's scaled token embeddings; ids without a row (an out-of-vocabulary placeholder) look up row 0."""
        vocab = self.config.text_config.vocab_size
        special = [self.config.image_token_id]
        # CODEPATH: world checkpoints add three token ids; Gemma 3 4B has rows for them, tiny bases of 0.1.0 did not.
        if self.config.enable_world:
            special += list(self.config.world_token_ids)
        if max(special) >= vocab:
            input_ids = input_ids.masked_fill(input_ids >= vocab, 0)
        return self.get_input_embeddings()(input_ids)

    # ------------------------------------------------------------------ forward
    @can_return_tuple
    @auto_docstring
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        world_pixel_values: torch.FloatTensor | None = None,
        world_latents: torch.FloatTensor | None = None,
        world_embeds_override: torch.FloatTensor | None = None,
        **kwargs,
    ) -> tuple | TheWorldModelOutputWithPast:
        r"""
        token_type_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            0 for text, 1 for SigLIP image tokens (attend bidirectionally within their image, as in Gemma 3), 2 for
            world tokens. World blocks are found from `input_ids` whether or not this is given; with `inputs_embeds`
            alone, from these types (else by matching the world tokens' embedding rows).
        world_pixel_values (`torch.FloatTensor` of shape `(num_world_blocks, 3, world_image_size, world_image_size)`, *optional*):
            World images from [`TheWorldProcessor`], one per world block, in order.
        world_latents (`torch.FloatTensor` of shape `(num_world_blocks, z, num_world_frames, h, w)`, *optional*):
            Cached latents (from `encode_world`) instead of `world_pixel_values`.
        world_embeds_override (`torch.FloatTensor` of shape `(num_world_blocks, num_world_tokens, hidden_size)`, *optional*):
            World features used as they are (ablations).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        cfg = self.config
        self.warn_if_padding_without_mask(input_ids, attention_mask)
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)

        image_outputs = None
        if pixel_values is not None:
            image_outputs = self.get_image_features(pixel_values, return_dict=True)
            image_features = image_outputs.pooler_output.to(inputs_embeds.device, inputs_embeds.dtype)
            image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(image_mask, image_features)

        world_features = world_token_mask = None
        world_given = [x for x in (world_pixel_values, world_latents, world_embeds_override) if x is not None]
        # CODEPATH: enable_world=False checkpoints are Gemma 3 and take no world inputs.
        if world_given and not cfg.enable_world:
            raise ValueError("This model was built with enable_world=False; it takes no world inputs.")
        # CODEPATH: world checkpoints refuse a prompt whose world blocks come without world inputs (host-side, eager
        # only); a one-token step (decoding) may hold any id, a sampled world id included.
        if not world_given and cfg.enable_world and input_ids is not None and input_ids.shape[1] > 1:
            if not torch.compiler.is_compiling():
                check_world_layout(input_ids, cfg, 0)
        if world_given:
            if len(world_given) > 1:
                raise ValueError("Pass only one of world_pixel_values, world_latents or world_embeds_override.")
            if input_ids is not None and not torch.compiler.is_compiling():
                check_world_layout(input_ids, cfg, world_given[0].shape[0])
            if world_embeds_override is not None:
                expected = (cfg.num_world_tokens, cfg.text_config.hidden_size)
                if world_embeds_override.ndim != 3 or tuple(world_embeds_override.shape[1:]) != expected:
                    raise ValueError(
                        f"world_embeds_override must have shape (num_world_blocks, {expected[0]}, {expected[1]}) "
                        f"(num_world_tokens, hidden_size), got {tuple(world_embeds_override.shape)}."
                    )
                world_features = world_embeds_override
            else:
                world_features = self.get_world_features(world_pixel_values, world_latents)
            markers = self.world_marker_masks(input_ids, inputs_embeds, token_type_ids)
            world_token_mask = markers[1]
            inputs_embeds = self.place_world_features(input_ids, inputs_embeds, world_features, markers)

        if not isinstance(causal_mask_mapping := attention_mask, dict):
            types = None
            if token_type_ids is not None:
                types = torch.where(token_type_ids == IMAGE_TOKEN_TYPE, IMAGE_TOKEN_TYPE, TEXT_TOKEN_TYPE)
            # CODEPATH: world blocks attend bidirectionally by default; "causal" reproduces theworld 0.1.0.
            if world_token_mask is not None and cfg.world_attention == "bidirectional":
                types = torch.zeros_like(world_token_mask, dtype=torch.long) if types is None else types
                types = torch.where(world_token_mask.to(types.device), WORLD_TOKEN_TYPE, types)
            blocks = block_sequence_ids_from_types(types.to(inputs_embeds.device)) if types is not None else None
            causal_mask_mapping = attention_masks_with_blocks(
                cfg.get_text_config(), inputs_embeds, attention_mask, cache, position_ids, blocks
            )

        outputs = self.language_model(
            attention_mask=causal_mask_mapping,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            return_dict=True,
            **kwargs,
        )
        return TheWorldModelOutputWithPast(**outputs, image_outputs=image_outputs, world_hidden_states=world_features)

    def place_world_features(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        world_features: torch.Tensor,
        markers: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Scatter ``world_features`` ``(B_w, N, d)`` into the placeholders of ``inputs_embeds`` ``(B, L, d)`` and put the
        learned boundary embeddings at the start and end markers. Differentiable in both. ``markers``: the
        ``(start, world, end)`` masks of `world_marker_masks` (computed from ``input_ids`` when not given)."""
        features = world_features.to(inputs_embeds.device, inputs_embeds.dtype)
        if markers is None:
            markers = self.world_marker_masks(input_ids, inputs_embeds)
        start_mask, world_mask, end_mask = (mask.unsqueeze(-1) for mask in markers)
        torch_compilable_check(
            world_mask.sum() * inputs_embeds.shape[-1] == features.numel(),
            lambda: (
                f"World features and world tokens do not match: {int(world_mask.sum())} <world_soft_token> "
                f"positions, {features.shape[0]} x {features.shape[1]} features. Pass one world image (or latent) per "
                "world block."
            ),
        )
        boundary = self.world_boundary_embeddings.weight.to(inputs_embeds.device, inputs_embeds.dtype)
        out = inputs_embeds.masked_scatter(world_mask, features)
        out = torch.where(start_mask, boundary[0], out)
        return torch.where(end_mask, boundary[1], out)


@auto_docstring(
    custom_intro="""
    TheWorld: Gemma 3 with world tokens made from Cosmos-Predict2 latents, with a language modelling head.
    """
)
class TheWorldForConditionalGeneration(TheWorldPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    # CODEPATH: like Gemma 3, the loss takes Trainer's `num_items_in_batch` (the supervised tokens of the whole
    # accumulated batch), so k accumulated micro-batches give the gradient of one k-times batch.
    accepts_loss_kwargs = True

    def __init__(self, config: TheWorldConfig):
        super().__init__(config)
        self.model = TheWorldModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        #: The `TheWorldProcessor` this model was loaded with (``None`` for a model built from a config alone).
        self.processor = None
        # CODEPATH: world checkpoints never sample a world token (it has no meaning outside a world block); the loaders
        # set the same on the generation config they read.
        if config.enable_world and self.generation_config is not None:
            suppress = set(self.generation_config.suppress_tokens or []) | set(config.world_token_ids)
            self.generation_config.suppress_tokens = sorted(i for i in suppress if i is not None)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    @auto_docstring
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        return self.model.get_image_features(pixel_values, **kwargs)

    @auto_docstring(custom_intro="Turns world images (or their cached latents) into world-token features.")
    def get_world_features(
        self, world_pixel_values: torch.Tensor | None = None, world_latents: torch.Tensor | None = None
    ) -> torch.Tensor:
        r"""
        world_pixel_values (`torch.FloatTensor` of shape `(num_world_blocks, 3, world_image_size, world_image_size)`):
            World images from [`TheWorldProcessor`].
        world_latents (`torch.FloatTensor` of shape `(num_world_blocks, z, num_world_frames, h, w)`, *optional*):
            Cached latents from `encode_world`.
        """
        return self.model.get_world_features(world_pixel_values, world_latents)

    def encode_world(self, world_pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` world images -> ``(B, z, 1 + num_world_steps, h, w)`` latents (see `TheWorldModel`)."""
        if not self.config.enable_world:
            raise ValueError("This model was built with enable_world=False; it has no world encoder.")
        return self.model.encode_world(world_pixel_values)

    @can_return_tuple
    @auto_docstring
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        world_pixel_values: torch.FloatTensor | None = None,
        world_latents: torch.FloatTensor | None = None,
        world_embeds_override: torch.FloatTensor | None = None,
        images: list | None = None,
        **kwargs,
    ) -> tuple | TheWorldCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Labels for the language modelling loss; -100 is ignored. World-block positions never carry a loss.
        token_type_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            0 for text, 1 for SigLIP image tokens, 2 for world tokens, as [`TheWorldProcessor`] writes them.
        world_pixel_values (`torch.FloatTensor` of shape `(num_world_blocks, 3, world_image_size, world_image_size)`, *optional*):
            World images from [`TheWorldProcessor`], one per world block, in order.
        world_latents (`torch.FloatTensor` of shape `(num_world_blocks, z, num_world_frames, h, w)`, *optional*):
            Cached latents (from `encode_world`) instead of `world_pixel_values`.
        world_embeds_override (`torch.FloatTensor` of shape `(num_world_blocks, num_world_tokens, hidden_size)`, *optional*):
            World features used as they are (ablations).
        images (`list`, *optional*):
            The earlier API: one image per prompt, turned into `world_pixel_values` by `model.processor` (world blocks
            are inserted after `<bos>` when `input_ids` hold none). Eager mode only.
        """
        if images is not None:
            input_ids, attention_mask, labels, token_type_ids, world_pixel_values = self.inputs_from_images(
                images, input_ids, attention_mask, labels, token_type_ids
            )
        reference = inputs_embeds if input_ids is None else input_ids
        # CODEPATH: world checkpoints never supervise the world block itself.
        if labels is not None and self.config.enable_world and reference is not None:
            start, world, end = self.model.world_marker_masks(input_ids, reference, token_type_ids)
            block = (start | world | end).to(labels.device)
            if kwargs.get("num_items_in_batch") is not None and not torch.compiler.is_compiling():
                self.warn_if_world_labels_counted(labels, block)
            labels = labels.masked_fill(block, -100)
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            token_type_ids=token_type_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            world_pixel_values=world_pixel_values,
            world_latents=world_latents,
            world_embeds_override=world_embeds_override,
            return_dict=True,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return TheWorldCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            world_hidden_states=outputs.world_hidden_states,
        )

    def warn_if_world_labels_counted(self, labels: torch.Tensor, block: torch.Tensor) -> None:
        """Warn (once per model) when ``labels`` ``(B, L)`` supervise positions of the ``(B, L)`` world-block mask
        ``block`` while a ``num_items_in_batch`` is given: the forward drops those labels, but the caller (``Trainer``)
        counted them, so the loss would be divided by more tokens than it sums. A host-side check."""
        if getattr(self, "_warned_world_labels_counted", False):
            return
        counted = int(((labels != -100) & block).sum())
        if counted:
            self._warned_world_labels_counted = True
            logger.warning(
                "The labels supervise %d world-block positions (<start_of_world>, <world_soft_token>, "
                "<end_of_world>), which TheWorld never trains on, but num_items_in_batch counts them: the loss is "
                "divided by more tokens than it sums over. Set the world block's labels to -100 in the collator "
                "(theworld.data.VSRCollator does).",
                counted,
            )

    def inputs_from_images(self, images, input_ids, attention_mask, labels, token_type_ids):
        """The earlier API: ``images=[...]`` (one per prompt) to ``world_pixel_values``, inserting a world block after
        each row's ``<bos>`` when ``input_ids`` hold none. Returns ``(input_ids, attention_mask, labels,
        token_type_ids, world_pixel_values)``."""
        # CODEPATH: enable_world=False checkpoints (Gemma 3) ignore world images.
        if not self.config.enable_world:
            return input_ids, attention_mask, labels, token_type_ids, None
        if self.processor is None:
            raise ValueError("images=[...] needs model.processor; load the model with from_pretrained.")
        if input_ids is None or len(images) != input_ids.shape[0]:
            rows = 0 if input_ids is None else input_ids.shape[0]
            raise ValueError(f"Got {len(images)} images for {rows} prompts; pass exactly one image per prompt.")
        world_pixel_values = self.processor.world_pixel_values(images).to(input_ids.device)
        # CODEPATH: every world checkpoint; prompts made by the processor already hold their world blocks.
        if bool((input_ids == self.config.world_token_id).any()):
            return input_ids, attention_mask, labels, token_type_ids, world_pixel_values
        block = torch.tensor(
            [self.config.start_of_world_token_id]
            + [self.config.world_token_id] * self.config.num_world_tokens
            + [self.config.end_of_world_token_id],
            device=input_ids.device,
        )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        first = attention_mask.long().argmax(-1).tolist()  # index of <bos> in each row (left padding aware)

        def insert(rows: torch.Tensor | None, fill) -> torch.Tensor | None:
            if rows is None:
                return None
            out = []
            for i, at in enumerate(first):
                filler = block if fill is None else torch.full_like(block, fill)
                out.append(torch.cat([rows[i, : at + 1], filler.to(rows.dtype), rows[i, at + 1 :]]))
            return torch.stack(out)

        new_types = insert(token_type_ids, WORLD_TOKEN_TYPE)
        if new_types is not None:
            new_types = torch.where(insert(input_ids, None) == self.config.world_token_id, WORLD_TOKEN_TYPE, new_types)
        return insert(input_ids, None), insert(attention_mask, 1), insert(labels, -100), new_types, world_pixel_values

    # ------------------------------------------------------------------ generation
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self,
        input_ids,
        cache=None,
        attention_mask=None,
        inputs_embeds=None,
        use_cache=True,
        is_first_iteration=False,
        **kwargs,
    ):
        """`GenerationMixin.prepare_inputs_for_generation`; the world inputs, images and token types go to the prefill
        only (every step without a cache). ``inputs_embeds`` (the prompt's) are used in the prefill."""
        model_inputs = super().prepare_inputs_for_generation(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if is_first_iteration or not use_cache:
            # The bidirectional blocks are read by position, so a prefill needs the types from the start.
            model_inputs["token_type_ids"] = kwargs.get("token_type_ids")
        else:
            model_inputs["token_type_ids"] = None
            for key in ("world_pixel_values", "world_latents", "world_embeds_override", "images", "pixel_values"):
                model_inputs.pop(key, None)
        return model_inputs

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """`GenerationMixin._expand_inputs_for_generation` (beams, ``num_return_sequences``), repeating the world inputs
        and images per prompt row: ``world_pixel_values`` ``(B_w, ...)`` and ``pixel_values`` ``(B_i, ...)`` hold one
        entry per block, in row order, so a row with two images needs its two entries repeated together."""
        per_row = {}
        # CODEPATH: world checkpoints; enable_world=False keeps Gemma 3's expansion exactly.
        if expand_size > 1 and self.config.enable_world and isinstance(input_ids, torch.Tensor) and input_ids.ndim == 2:
            world_blocks = (input_ids == self.config.start_of_world_token_id).sum(-1)
            image_blocks = (input_ids == self.config.image_token_id).sum(-1) // self.config.mm_tokens_per_image
            for key, counts in (
                ("world_pixel_values", world_blocks),
                ("world_latents", world_blocks),
                ("world_embeds_override", world_blocks),
                ("pixel_values", image_blocks),
            ):
                value = model_kwargs.get(key)
                if isinstance(value, torch.Tensor) and int(counts.sum()) == value.shape[0]:
                    rows = value.split(counts.tolist())
                    per_row[key] = torch.cat([row for row in rows for _ in range(expand_size)])
                    model_kwargs.pop(key)
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        model_kwargs.update(per_row)
        return input_ids, model_kwargs

    @staticmethod
    def create_masks_for_generate(
        config: TheWorldConfig,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Cache | None,
        position_ids: torch.Tensor | None,
        token_type_ids: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """The masks of a compiled-cache generation step; in prefill, image and world blocks come from
        ``token_type_ids`` (1 image, 2 world)."""
        blocks = None
        if token_type_ids is not None and is_first_iteration:
            types = torch.where(token_type_ids == IMAGE_TOKEN_TYPE, IMAGE_TOKEN_TYPE, TEXT_TOKEN_TYPE)
            # CODEPATH: world blocks attend bidirectionally by default; "causal" reproduces theworld 0.1.0.
            if config.world_attention == "bidirectional":
                types = torch.where(token_type_ids == WORLD_TOKEN_TYPE, WORLD_TOKEN_TYPE, types)
            blocks = block_sequence_ids_from_types(types.to(inputs_embeds.device))
        return attention_masks_with_blocks(
            config.get_text_config(), inputs_embeds, attention_mask, cache, position_ids, blocks
        )

    @torch.no_grad()
    def generate(self, inputs=None, generation_config=None, images: list | None = None, **kwargs):
        """`GenerationMixin.generate`, also taking the earlier API's ``images=[...]`` (one per prompt) and deriving
        ``token_type_ids`` for the world blocks when they are not given."""
        input_ids = kwargs.pop("input_ids", inputs)
        if images is not None:
            input_ids, attention_mask, _, token_type_ids, world_pixel_values = self.inputs_from_images(
                images, input_ids, kwargs.pop("attention_mask", None), None, kwargs.pop("token_type_ids", None)
            )
            kwargs.update(attention_mask=attention_mask, world_pixel_values=world_pixel_values)
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
        # CODEPATH: world checkpoints need the world blocks' token types for a compiled (static-cache) prefill mask.
        if self.config.enable_world and kwargs.get("token_type_ids") is None and isinstance(input_ids, torch.Tensor):
            kwargs["token_type_ids"] = token_types_from_ids(input_ids, self.config.world_token_id)
        return super().generate(input_ids, generation_config=generation_config, **kwargs)

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """Load a TheWorld checkpoint (partial, full, or written by theworld 0.1.0 or the earlier research code), or
        build a fresh TheWorld around a Gemma 3 model with ``cosmos_model_name=`` naming the Cosmos source.

        Full checkpoints load through transformers' own ``from_pretrained`` (``dtype``, ``device_map``,
        ``attn_implementation``, ``output_loading_info``, ``key_mapping``, ``state_dict`` ...); partial checkpoints and
        fresh builds hand transformers the base weights together with the checkpoint's. See ``checkpoint_theworld``.
        """
        from .checkpoint_theworld import load_pretrained  # checkpoint I/O imports the model, never the reverse

        return load_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs)

    def push_to_hub(self, repo_id: str, save_full_model: bool = False, **kwargs):
        """Save the checkpoint (partial by default) into a temporary folder and upload exactly that folder as one
        commit (``private=``, ``token=``, ``revision=``, ``commit_message=``, ``create_pr=`` ...)."""
        from .checkpoint_theworld import push_checkpoint

        return push_checkpoint(self, repo_id, save_full_model=save_full_model, **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint_dir: str, **kwargs):
        """The earlier API: `from_pretrained` on a checkpoint folder."""
        return cls.from_pretrained(checkpoint_dir, **kwargs)

    @classmethod
    def from_checkpoint_hub(cls, repo_id: str, checkpoint_name: str | None = None, **kwargs):
        """The earlier API: `from_pretrained` on a hub repo, optionally one of its ``checkpoint-N/`` folders."""
        return cls.from_pretrained(repo_id, subfolder=checkpoint_name or "", **kwargs)

    def save_pretrained(self, save_directory, save_full_model: bool = False, **kwargs):
        """Save a checkpoint folder, published atomically.

        ``save_full_model=False`` (default) writes only what training could change (world projector, learned world
        embeddings, unfrozen parts, LoRA adapters); ``True`` writes every weight (transformers' format, sharded above
        ``max_shard_size``), loadable without the base models. Also written: ``config.json`` with ``auto_map``, the
        generation config, the remote-code files, the processor and a model card. Other keyword arguments are those of
        `PreTrainedModel.save_pretrained` (``max_shard_size``, ``push_to_hub``, ``repo_id``, ``token`` ...).
        """
        from .checkpoint_theworld import save_checkpoint

        return save_checkpoint(self, save_directory, save_full_model=save_full_model, **kwargs)


#: The name users import: the generating model.
TheWorld = TheWorldForConditionalGeneration

__all__ = [
    "TheWorld",
    "TheWorldForConditionalGeneration",
    "TheWorldModel",
    "TheWorldPreTrainedModel",
    "TheWorldProjector",
    "latents_to_world_tokens",
]
