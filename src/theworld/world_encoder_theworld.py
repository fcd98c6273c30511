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
"""TheWorld's world encoder: the image path of Cosmos-Predict2's Wan 2.1 VAE encoder, computed as a 2-D network.

Shipped next to every checkpoint as remote code: flat, importing only ``torch``, ``transformers`` and the sibling
configuration file.

diffusers' ``AutoencoderKLWan`` encodes an image as a one-frame video, ``vae.encode(x[:, :, None]).latent_dist.mode()``.
For one frame its video machinery reduces to a 2-D network:

* every causal 3-D convolution pads ``kernel_t - 1`` zero frames in front of the frame, so only the last temporal
  slice of its kernel, ``weight[:, :, -1]``, ever meets data: it is a 2-D convolution with that slice;
* the temporal down-sampling convolutions (``time_conv`` of the ``downsample3d`` resamples) are skipped for the first
  frame of a video, so an image never uses them;
* the RMS norms normalise over channels, frame by frame, and the attention blocks already work frame by frame.

`TheWorldWanEncoder` keeps diffusers' parameter names and shapes (3-D kernels included), so the ``encoder.*`` and
``quant_conv.*`` tensors of a Cosmos ``vae/`` checkpoint load by key prefix with no conversion; only the unused
``time_conv`` tensors are left out (`UNUSED_DIFFUSERS_KEYS` matches them, `is_unused_diffusers_key` tests a name).

Shapes, for a batch of ``B`` images of ``H x W`` pixels and ``s = config.spatial_compression`` (8 for Wan 2.1)::

    pixel_values (B, 3, H, W) in [-1, 1]
      -> conv_in, down_blocks (residual blocks [+ attention], spatial down-sampling), mid_block, norm_out, conv_out
                                                  (B, 2 * z, H / s, W / s)
      -> quant_conv, first z channels (the mode)  (B, z, H / s, W / s)      = TheWorldWanEncoder.forward
      -> (mu - latents_mean) / latents_std        (B, z, H / s, W / s)      = TheWorldWanEncoder.normalize

Each down-sampling maps a side of ``n`` pixels to ``n // 2`` (a side not divisible by ``s`` is floored, as in
diffusers).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration_theworld import TheWorldEncoderConfig

#: Keys of diffusers' ``AutoencoderKLWan`` state dict that `TheWorldWanEncoder` deliberately does not hold: the
#: temporal down-sampling convolutions ``encoder.down_blocks.<i>.time_conv.{weight,bias}``, never used for a single
#: frame. Use ``UNUSED_DIFFUSERS_KEYS.search(key)``; a prefix before ``encoder.`` (e.g. ``vae.``) is allowed.
UNUSED_DIFFUSERS_KEYS = re.compile(r"(?:^|\.)encoder\.down_blocks\.\d+\.time_conv\.(?:weight|bias)$")


def is_unused_diffusers_key(name: str) -> bool:
    """Whether ``name`` is an ``AutoencoderKLWan`` key the image encoder does not hold (a ``time_conv`` tensor)."""
    return UNUSED_DIFFUSERS_KEYS.search(name) is not None


class TheWorldWanCausalConv3d(nn.Conv3d):
    r"""A Wan causal 3-D convolution applied to a single frame.

    It holds diffusers' ``WanCausalConv3d`` parameters unchanged: ``weight`` ``(out, in, k_t, k_h, k_w)`` and ``bias``
    ``(out,)``. Causal padding puts ``k_t - 1`` zero frames before the only frame, so the output is the 2-D convolution
    of the frame with the last temporal kernel slice ``weight[:, :, -1]`` (spatial stride and zero padding as
    configured).

    Input ``(B, in, H, W)``; output ``(B, out, H', W')`` (``H' = H`` for ``k = 3, padding = 1`` or ``k = 1``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0) -> None:
        if kernel_size != 2 * padding + 1:
            raise ValueError(
                f"A Wan causal convolution keeps the frame count: kernel_size ({kernel_size}) must be 2 * padding + 1 "
                f"(padding={padding})."
            )
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, in, H, W)`` -> ``(B, out, H', W')``."""
        return F.conv2d(hidden_states, self.weight[:, :, -1], self.bias, self.stride[1:], self.padding[1:])


class TheWorldWanRMSNorm(nn.Module):
    r"""Wan's RMS norm over the channel axis, ``normalize(x, dim=1) * sqrt(dim) * gamma`` (no bias).

    ``gamma`` keeps diffusers' shape: ``(dim, 1, 1, 1)`` for the norms of the residual blocks and ``norm_out``
    (``images=False`` in diffusers, ``video_shape=True`` here), ``(dim, 1, 1)`` for the attention norms. Half-precision
    inputs are normalised in float32, as in diffusers.

    Input and output ``(B, dim, H, W)``.
    """

    def __init__(self, dim: int, video_shape: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.eps = 1e-12  # F.normalize's default, as in diffusers
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1, 1) if video_shape else (dim, 1, 1)))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, dim, H, W)`` -> ``(B, dim, H, W)``, same dtype."""
        dtype = hidden_states.dtype
        states = hidden_states.float() if dtype in (torch.float16, torch.bfloat16) else hidden_states
        # F.normalize(states, dim=1), i.e. states / max(norm, eps), spelled out: on CPU a channel-axis sum of squares
        # is several times faster than linalg.vector_norm over the strided channel axis. Clamping the squared norm
        # (at eps**2) before the rsqrt keeps the gradient finite for an all-zero channel vector.
        inverse_norm = states.square().sum(dim=1, keepdim=True).clamp_min(self.eps**2).rsqrt()
        normalized = (states * inverse_norm).to(dtype)
        return normalized * (self.gamma.view(-1, 1, 1) * self.scale)


class TheWorldWanResidualBlock(GradientCheckpointingLayer):
    r"""Wan residual block: ``conv2(dropout(silu(norm2(conv1(silu(norm1(x))))))) + shortcut(x)``.

    The shortcut is a 1x1 causal convolution when the channel count changes, the identity otherwise.
    Input ``(B, in_dim, H, W)``; output ``(B, out_dim, H, W)``.
    """

    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = TheWorldWanRMSNorm(in_dim)
        self.conv1 = TheWorldWanCausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = TheWorldWanRMSNorm(out_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = TheWorldWanCausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = TheWorldWanCausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim, H, W)`` -> ``(B, out_dim, H, W)``."""
        residual = self.conv_shortcut(hidden_states)
        hidden_states = F.silu(self.norm1(hidden_states))
        hidden_states = self.conv1(hidden_states)
        hidden_states = F.silu(self.norm2(hidden_states))
        hidden_states = self.dropout(hidden_states)
        hidden_states = self.conv2(hidden_states)
        return hidden_states + residual


class TheWorldWanAttentionBlock(GradientCheckpointingLayer):
    r"""Wan single-head self-attention over the positions of one image, with a residual connection.

    ``to_qkv`` and ``proj`` are diffusers' 1x1 ``nn.Conv2d`` layers. Input and output ``(B, dim, H, W)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = TheWorldWanRMSNorm(dim, video_shape=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, dim, H, W)`` -> ``(B, dim, H, W)``."""
        batch_size, channels, height, width = hidden_states.shape
        residual = hidden_states
        qkv = self.to_qkv(self.norm(hidden_states))
        # (B, 3 * dim, H, W) -> (B, 1, H * W, 3 * dim): one head, positions as the sequence
        qkv = qkv.reshape(batch_size, 1, channels * 3, height * width).transpose(-1, -2)
        query, key, value = qkv.chunk(3, dim=-1)
        attended = F.scaled_dot_product_attention(query, key, value)
        attended = attended.squeeze(1).transpose(1, 2).reshape(batch_size, channels, height, width)
        return self.proj(attended) + residual


class TheWorldWanDownsample(nn.Module):
    r"""Wan's spatial down-sampling: zero-pad one column right and one row below, then a 3x3 stride-2 convolution.

    diffusers builds it as ``resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(...))``, so the
    convolution's keys are ``resample.1.{weight,bias}``; a one-entry ``ModuleDict`` keeps those keys and the padding is
    done in `forward`. The ``time_conv`` of diffusers' ``downsample3d`` mode is not held (never used for one frame).

    Input ``(B, dim, H, W)``; output ``(B, dim, H // 2, W // 2)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resample = nn.ModuleDict({"1": nn.Conv2d(dim, dim, 3, stride=2)})

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, dim, H, W)`` -> ``(B, dim, H // 2, W // 2)``."""
        return self.resample["1"](F.pad(hidden_states, (0, 1, 0, 1)))


class TheWorldWanMidBlock(nn.Module):
    r"""Wan middle block: residual block, attention block, residual block. Input and output ``(B, dim, h, w)``."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            [TheWorldWanResidualBlock(dim, dim, dropout), TheWorldWanResidualBlock(dim, dim, dropout)]
        )
        self.attentions = nn.ModuleList([TheWorldWanAttentionBlock(dim)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(B, dim, h, w)`` -> ``(B, dim, h, w)``."""
        hidden_states = self.resnets[0](hidden_states)
        for attention, resnet in zip(self.attentions, self.resnets[1:]):
            hidden_states = resnet(attention(hidden_states))
        return hidden_states


class TheWorldWanImageEncoder(nn.Module):
    r"""The Wan 2.1 VAE encoder (diffusers' ``WanEncoder3d``) for one frame.

    ``conv_in``; per stage ``num_res_blocks`` residual blocks (each followed by an attention block when the stage's
    scale is in ``attn_scales``) and, except after the last stage, a spatial down-sampling; ``mid_block``;
    ``norm_out``, SiLU, ``conv_out``.

    Input ``(B, in_channels, H, W)``; output ``(B, 2 * z_dim, H / s, W / s)``: the mean and log-variance moments.
    """

    def __init__(self, config: TheWorldEncoderConfig) -> None:
        super().__init__()
        dims = [config.base_dim * mult for mult in [1, *config.dim_mult]]
        attn_scales = [float(scale) for scale in config.attn_scales]
        num_stages = len(dims) - 1
        self.conv_in = TheWorldWanCausalConv3d(config.in_channels, dims[0], 3, padding=1)

        blocks: list[nn.Module] = []
        scale = 1.0
        for stage, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(config.num_res_blocks):
                blocks.append(TheWorldWanResidualBlock(in_dim, out_dim, config.dropout))
                # CODEPATH: Wan 2.1 / Cosmos-Predict2 checkpoints have attn_scales=[] (no attention in the down
                # path); other AutoencoderKLWan geometries put one after each residual block of a listed scale.
                if scale in attn_scales:
                    blocks.append(TheWorldWanAttentionBlock(out_dim))
                in_dim = out_dim
            if stage != num_stages - 1:
                blocks.append(TheWorldWanDownsample(out_dim))
                scale /= 2.0
        self.down_blocks = nn.ModuleList(blocks)

        self.mid_block = TheWorldWanMidBlock(dims[-1], config.dropout)
        self.norm_out = TheWorldWanRMSNorm(dims[-1])
        self.conv_out = TheWorldWanCausalConv3d(dims[-1], config.z_dim * 2, 3, padding=1)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, 2 * z_dim, H / s, W / s)``."""
        hidden_states = self.conv_in(pixel_values)
        for block in self.down_blocks:
            hidden_states = block(hidden_states)
        hidden_states = self.mid_block(hidden_states)
        hidden_states = F.silu(self.norm_out(hidden_states))
        return self.conv_out(hidden_states)


class TheWorldWanEncoder(nn.Module):
    r"""Images -> Wan 2.1 VAE latents: the posterior mode, ``vae.encode(x[:, :, None]).latent_dist.mode()[:, :, 0]``.

    Submodules ``encoder`` and ``quant_conv`` carry exactly the keys and shapes of diffusers' ``AutoencoderKLWan``
    state dict under ``encoder.`` and ``quant_conv.``, minus the unused ``time_conv`` tensors (`UNUSED_DIFFUSERS_KEYS`).
    Two non-persistent float32 buffers, ``latents_mean`` and ``latents_std`` (``(z_dim,)`` each), hold the per-channel
    statistics of the config; `reset_latent_statistics` refills them (models built on the meta device must call it
    from their ``_init_weights``).

    Args:
        config (`TheWorldEncoderConfig`): the encoder geometry and latent statistics.
    """

    def __init__(self, config: TheWorldEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.z_dim = config.z_dim
        self.encoder = TheWorldWanImageEncoder(config)
        self.quant_conv = TheWorldWanCausalConv3d(config.z_dim * 2, config.z_dim * 2, 1)
        self.latents_mean = nn.Buffer(torch.tensor(config.latents_mean, dtype=torch.float32), persistent=False)
        self.latents_std = nn.Buffer(torch.tensor(config.latents_std, dtype=torch.float32), persistent=False)

    def reset_latent_statistics(self) -> None:
        """Fill ``latents_mean`` and ``latents_std`` from the config, e.g. once a meta-device model is materialised.

        Uses `transformers.initialization.copy_`, which respects transformers' "already initialised" flag. The values
        are written in the buffers' current dtype: float32 unless the module was cast with ``.to(dtype)``, which casts
        buffers too (a bfloat16 copy of the statistics keeps about three significant digits).
        """
        init.copy_(self.latents_mean, torch.tensor(self.config.latents_mean, dtype=torch.float32))
        init.copy_(self.latents_std, torch.tensor(self.config.latents_std, dtype=torch.float32))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encode images to the (un-normalised) posterior mode.

        Args:
            pixel_values (`torch.Tensor`): ``(B, in_channels, H, W)`` in ``[-1, 1]``; cast to the dtype and device of
                the module's parameters.

        Returns:
            `torch.Tensor`: ``mu``, ``(B, z_dim, H / s, W / s)`` (``s = config.spatial_compression``), in the
            parameters' dtype.
        """
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape (B, C, H, W), got {tuple(pixel_values.shape)}; the world encoder "
                "encodes single images."
            )
        if pixel_values.shape[1] != self.encoder.conv_in.weight.shape[1]:
            raise ValueError(
                f"pixel_values have {pixel_values.shape[1]} channels, the encoder expects "
                f"{self.encoder.conv_in.weight.shape[1]}."
            )
        weight = self.quant_conv.weight
        moments = self.quant_conv(self.encoder(pixel_values.to(device=weight.device, dtype=weight.dtype)))
        return moments[:, : self.z_dim].contiguous()

    def normalize(self, mu: torch.Tensor) -> torch.Tensor:
        """Per-channel ``(mu - latents_mean) / latents_std``, computed and returned in float32.

        Args:
            mu (`torch.Tensor`): ``(B, z_dim, h, w)`` (any trailing dims, e.g. ``(B, z_dim, T, h, w)``, broadcast).

        Returns:
            `torch.Tensor`: float32, the shape of ``mu``.
        """
        if mu.ndim < 2 or mu.shape[1] != self.latents_mean.shape[0]:
            raise ValueError(f"mu must have shape (B, {self.latents_mean.shape[0]}, ...), got {tuple(mu.shape)}.")
        shape = (1, -1) + (1,) * (mu.ndim - 2)
        mean = self.latents_mean.to(device=mu.device, dtype=torch.float32).view(shape)
        std = self.latents_std.to(device=mu.device, dtype=torch.float32).view(shape)
        return (mu.float() - mean) / std


__all__ = ["UNUSED_DIFFUSERS_KEYS", "TheWorldWanEncoder", "is_unused_diffusers_key"]
