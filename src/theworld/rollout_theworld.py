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
"""World rollout = Cosmos-Predict2 Video2World: the Cosmos DiT predicts future latent frames from the current one.

Shipped next to every checkpoint as remote code (``modeling_theworld.py`` imports it as
``from .rollout_theworld import TheWorldRollout``): flat, importing only ``torch``, ``transformers``,
``huggingface_hub``, ``safetensors`` and the standard library at module level. ``diffusers`` (the DiT and the
scheduler) is imported only when a `TheWorldRollout` is built, behind a guarded import that says what to install.

What it computes (shapes for ``B`` world images, ``z`` latent channels, an ``h x w`` latent grid, ``k`` steps)::

    current frame   (B, z, 1, h, w)       normalised Wan latents, (mu - latents_mean) / latents_std
      -> Video2World denoising (rollout_mode="joint": the k frames together; "autoregressive": one at a time)
      -> output     (B, z, 1 + k, h, w)   the current frame itself, then the k predicted frames (same space)

Video2World, as ``diffusers.Cosmos2VideoToWorldPipeline`` computes it
----------------------------------------------------------------------
* **Frames.** ``k`` future latent frames are the pipeline's latents for ``num_frames = 1 + 4k`` video frames (the Wan
  VAE compresses time 4x after the first frame): ``1 + k`` latent frames, the first of which is the conditioning
  frame. The pipeline VAE-encodes the conditioning image (repeated to ``1 + 4k`` frames) and keeps only the first
  latent frame as condition; here that latent is our current frame (the VAE *mode*, i.e. the model's world latents,
  where the pipeline samples from the VAE posterior). Conditioning latents are the normalised latents times
  ``sigma_data`` (``= 1``).
* **DiT input.** A condition-mask channel (1 on the conditioning frame, 0 on the predicted ones) is concatenated to the
  latents (so ``in_channels = z + 1``), followed by the all-zero padding-mask channel (the whole square image is
  valid). The conditioning frame gets timestep ``sigma_c / (sigma_c + 1)`` with ``sigma_c = 1e-4``; ``fps = 16`` (the
  pipeline defaults). Text: the empty prompt ``""`` (see below).
* **Preconditioning (EDM).** At noise level ``sigma``: ``t = sigma / (sigma + 1)``, ``c_in = c_skip = 1 - t``,
  ``c_out = -t``; the DiT sees ``c_in * x`` and ``denoised = c_skip * x + c_out * F(c_in * x, t)``.
* **Guidance.** With ``rollout_guidance_scale = g > 1`` a second DiT pass uses the negative-prompt embedding, and
  ``denoised = d_cond + g * (d_cond - d_uncond)`` (the pipeline's formula); ``g <= 1`` skips that pass.
* **Scheduler.** ``FlowMatchEulerDiscreteScheduler`` built from ``config.rollout_scheduler_config`` (Karras sigmas)
  with what the pipeline registers (``sigma_max = 80``, ``sigma_min = 0.002``, ``sigma_data = 1``,
  ``final_sigmas_type = "sigma_min"``), timesteps from ``sigmas = linspace(0, 1, rollout_num_inference_steps)``, the
  terminal zero sigma replaced by the last non-zero one (so the last Euler step is a no-op, exactly as in the
  pipeline). Each step: velocity ``(x - denoised) / sigma``, one Euler step. Initial latents ``noise * sigma_max``.

Design choices
--------------
* **Joint rollout (default).** ``rollout_mode="joint"``: one Video2World denoising of ``1 + k`` latent frames, the
  first as condition: exactly what the pipeline computes for ``num_frames = 1 + 4k`` (tested equal to it for k = 1 and
  2). Cost: ``rollout_num_inference_steps`` DiT calls (twice that with guidance) on ``1 + k`` frames.
* **Autoregressive rollout.** ``rollout_mode="autoregressive"`` is theworld 0.1.0's rollout, kept for its
  checkpoints: ``k`` successive 2-frame Video2World windows, each conditioned on the previous (predicted) frame.
* **Padding mask without torchvision.** ``CosmosTransformer3DModel`` with ``concat_padding_mask=True`` (the real
  config) resizes the padding mask with ``torchvision``. Rollout's padding mask is all zeros (nothing is padded), and a
  resized all-zero mask is all zeros, so this module turns the transformer's ``concat_padding_mask`` off and appends the
  zero channel itself, right after the condition mask: the same DiT input, and no ``torchvision`` dependency.
* **Determinism, independent of the batch.** Every call seeds a fresh CPU ``torch.Generator`` with
  ``config.rollout_seed`` and draws ONE noise tensor that every sample of the batch shares. Joint mode draws
  ``(1, z, 1 + k, h, w)`` (the pipeline's ``latents`` argument for one video; the conditioning frame's slice is drawn
  and unused), autoregressive mode draws ``(z, 1, h, w)`` per step in order (0.1.0's draws). So a sample's prediction
  depends only on the sample, the seed, ``k`` and the settings: not on its batch, the device RNG or earlier calls.
* **Frozen, no gradients through the DiT.** The DiT runs under ``torch.no_grad()``; the returned first frame is the
  input tensor itself, so gradients still reach the current frame (and an unfrozen VAE) through it.
* **Text conditioning: fixed embeddings, stored.** The DiT cross-attends to T5 embeddings of the prompt. Rollout uses
  the empty prompt ``""`` (caption-free "what happens next") and, for guidance, the pipeline's default negative prompt
  (`DEFAULT_NEGATIVE_PROMPT`). Both are persistent buffers ``prompt_embeds`` / ``negative_prompt_embeds`` of shape
  ``(1, 512, text_dim)``, exactly the tensors the pipeline feeds the DiT (T5 ``last_hidden_state`` of the prompt padded
  to ``max_sequence_length = 512``, rows past the prompt length zeroed), so checkpoints hold them and loading never
  needs T5. `rollout_prompt_embeddings` computes them at a fresh build; T5 runs once per Cosmos revision: the result
  is cached under the Hugging Face cache folder, keyed by revision, and later builds read the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import T5EncoderModel, T5TokenizerFast

from .configuration_theworld import TheWorldConfig

logger = logging.getLogger(__name__)

#: ``max_sequence_length`` of ``Cosmos2VideoToWorldPipeline``: the text context always has this many rows.
TEXT_SEQUENCE_LENGTH = 512
#: The rollout prompt: empty (no caption), the generic "what happens next" condition.
ROLLOUT_PROMPT = ""
#: ``DEFAULT_NEGATIVE_PROMPT`` of diffusers' ``pipeline_cosmos2_video2world.py`` (used when guidance is on).
DEFAULT_NEGATIVE_PROMPT = (
    "The video captures a series of frames showing ugly scenes, static with no motion, motion blur, "
    "over-saturation, shaky footage, low resolution, grainy texture, pixelated images, poorly lit areas, "
    "underexposed and overexposed scenes, poor color balance, washed out colors, choppy sequences, "
    "jerky movements, low frame rate, artifacting, color banding, unnatural transitions, outdated special effects, "
    "fake elements, unconvincing visuals, poorly edited content, jump cuts, visual noise, and flickering. "
    "Overall, the video is of poor quality."
)
#: Frames per second passed to the DiT (the pipeline default; it scales the temporal RoPE).
ROLLOUT_FPS = 16
#: Noise level of the conditioning frame (the pipeline default).
SIGMA_CONDITIONING = 1e-4
#: What ``Cosmos2VideoToWorldPipeline.__init__`` registers into its scheduler config.
PIPELINE_SCHEDULER_SETTINGS = {
    "sigma_max": 80.0,
    "sigma_min": 0.002,
    "sigma_data": 1.0,
    "final_sigmas_type": "sigma_min",
}

#: Layout version of the cached prompt-embedding files (part of the cache key).
PROMPT_CACHE_FORMAT = 1
#: Local files larger than this are fingerprinted by size, mtime and their first/last MiB instead of hashed whole.
_FULL_HASH_LIMIT = 64 * 1024 * 1024
_EDGE_BYTES = 1024 * 1024
#: ``hub_kwargs`` that ``huggingface_hub.hf_hub_download`` understands (used to resolve a branch to its commit).
_DOWNLOAD_KWARGS = ("cache_dir", "token", "local_files_only", "force_download", "proxies", "etag_timeout")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def _import_diffusers():
    """The ``diffusers`` module, or an `ImportError` that says rollout needs it."""
    try:
        import diffusers
    except ImportError as error:
        raise ImportError(
            "TheWorld's world rollout (num_world_steps > 0 or load_full_cosmos_pipeline=True) runs the Cosmos-Predict2 "
            "DiT from diffusers, which is not importable here: `pip install diffusers` (>= 0.34). Models with "
            "num_world_steps=0 and load_full_cosmos_pipeline=False do not need it."
        ) from error
    if not hasattr(diffusers, "CosmosTransformer3DModel"):
        raise ImportError(
            f"diffusers {diffusers.__version__} has no CosmosTransformer3DModel; TheWorld's world rollout "
            "(num_world_steps > 0 or load_full_cosmos_pipeline=True) needs `pip install -U diffusers` (>= 0.34)."
        )
    return diffusers


def text_context_dim(transformer_config: dict[str, Any]) -> int:
    """Width of the text embeddings the DiT cross-attends to (``text_dim``), from its diffusers config dict."""
    # CODEPATH: Cosmos-Predict2 DiTs read T5 embeddings directly (text_embed_dim); DiTs with
    # use_crossattn_projection (Cosmos-Predict2.5) project crossattn_proj_in_channels-wide embeddings first.
    if transformer_config.get("use_crossattn_projection"):
        return int(transformer_config.get("crossattn_proj_in_channels", 1024))
    return int(transformer_config.get("text_embed_dim", 1024))


def _check_rollout_config(config: TheWorldConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DiT and scheduler config dicts without diffusers' ``_`` bookkeeping keys; `ValueError` naming the field."""
    transformer_config = config.rollout_transformer_config
    if transformer_config is None:
        raise ValueError(
            "config.rollout_transformer_config is None, but the world rollout (num_world_steps > 0 or "
            "load_full_cosmos_pipeline=True) needs the Cosmos DiT's diffusers config (the Cosmos source's "
            "transformer/config.json). Build the model with TheWorld.from_pretrained(..., cosmos_model_name=...), or "
            "set num_world_steps=0 and load_full_cosmos_pipeline=False."
        )
    scheduler_config = config.rollout_scheduler_config
    if scheduler_config is None:
        raise ValueError(
            "config.rollout_scheduler_config is None, but the world rollout needs the Cosmos scheduler's diffusers "
            "config (the Cosmos source's scheduler/scheduler_config.json)."
        )
    transformer_config = {k: v for k, v in transformer_config.items() if not k.startswith("_")}
    scheduler_config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    z = config.latent_channels
    in_channels = int(transformer_config.get("in_channels", 16))
    out_channels = int(transformer_config.get("out_channels", 16))
    if in_channels != z + 1 or out_channels != z:
        raise ValueError(
            f"config.rollout_transformer_config has in_channels={in_channels}, out_channels={out_channels}; the world "
            f"rollout needs a Video2World DiT for latent_channels={z}: in_channels={z + 1} (latents + condition mask) "
            f"and out_channels={z}. Point cosmos_model_name at a Cosmos-Predict2 Video2World pipeline, or set "
            "num_world_steps=0 and load_full_cosmos_pipeline=False."
        )
    patch_t, patch_h, patch_w = (int(p) for p in transformer_config.get("patch_size", (1, 2, 2)))
    grid = config.world_image_size // config.world_config.spatial_compression
    if patch_t != 1 or grid % patch_h or grid % patch_w:
        raise ValueError(
            f"config.rollout_transformer_config has patch_size={[patch_t, patch_h, patch_w]}, which does not tile the "
            f"{grid}x{grid} latent grid of world_image_size={config.world_image_size} (Video2World needs a temporal "
            f"patch of 1 and a spatial patch dividing the grid). Choose world_image_size as a multiple of "
            f"{config.world_config.spatial_compression * patch_h} pixels."
        )
    return transformer_config, scheduler_config


class TheWorldRollout(nn.Module):
    """The frozen Cosmos-Predict2 Video2World DiT plus its fixed text conditions (see the module docstring).

    Built from ``config.rollout_transformer_config`` alone (no weights are read here; it works under
    ``torch.device("meta")`` and transformers' no-init context). Holds:

    * ``transformer``: diffusers ``CosmosTransformer3DModel``, frozen (``requires_grad=False``).
    * ``prompt_embeds``, ``negative_prompt_embeds``: persistent buffers ``(1, TEXT_SEQUENCE_LENGTH, text_dim)``, the
      T5 embeddings of ``""`` and `DEFAULT_NEGATIVE_PROMPT` as the pipeline feeds them to the DiT (zeros until
      filled by `load_prompt_embeddings`, a checkpoint, or `rollout_prompt_embeddings`).

    The sampling settings (``rollout_mode``, ``rollout_num_inference_steps``, ``rollout_guidance_scale``,
    ``rollout_seed``) are read from ``config`` at every call, so a change to the config takes effect at once.

    Raises:
        ValueError: ``config.rollout_transformer_config`` / ``rollout_scheduler_config`` is missing, or the DiT is not a
            Video2World DiT for ``config.latent_channels`` (``in_channels == z + 1``, ``out_channels == z``).
        ImportError: ``diffusers`` is not installed.
    """

    def __init__(self, config: TheWorldConfig):
        super().__init__()
        transformer_config, scheduler_config = _check_rollout_config(config)
        diffusers = _import_diffusers()
        self.config = config
        self.transformer = diffusers.CosmosTransformer3DModel.from_config(transformer_config)
        self.transformer.requires_grad_(False)
        # The all-zero padding-mask channel is appended in `_denoise`, not by the transformer (which would resize it
        # with torchvision): same DiT input, no torchvision.
        # CODEPATH: Cosmos-Predict2 DiTs set concat_padding_mask=True (their patch embedding reads z + 2 channels); a
        # DiT without it reads z + 1 channels and gets no padding channel.
        self.pad_channel = bool(self.transformer.config.concat_padding_mask)
        if self.pad_channel:
            self.transformer.register_to_config(concat_padding_mask=False)
        self.scheduler_config = scheduler_config
        self.scheduler_class = diffusers.FlowMatchEulerDiscreteScheduler
        text_dim = text_context_dim(transformer_config)
        self.prompt_embeds = nn.Buffer(torch.zeros(1, TEXT_SEQUENCE_LENGTH, text_dim))
        self.negative_prompt_embeds = nn.Buffer(torch.zeros(1, TEXT_SEQUENCE_LENGTH, text_dim))

    @property
    def dtype(self) -> torch.dtype:
        """The DiT's dtype."""
        return self.transformer.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        """The DiT's device (where the rollout runs)."""
        return self.transformer.proj_out.weight.device

    def load_prompt_embeddings(
        self,
        source: str,
        *,
        revision: str | None,
        hub_kwargs: dict[str, Any] | None = None,
        cache_dir: str | None = None,
    ) -> None:
        """Fill ``prompt_embeds`` and ``negative_prompt_embeds`` from the Cosmos source's T5 (or the prompt cache).

        Args:
            source: the Cosmos-Predict2 pipeline (hub id or local folder) holding ``text_encoder/`` and ``tokenizer/``.
            revision, hub_kwargs, cache_dir: as for `rollout_prompt_embeddings`.
        """
        positive, negative = rollout_prompt_embeddings(
            source,
            revision=revision,
            text_dim=self.prompt_embeds.shape[-1],
            hub_kwargs=hub_kwargs,
            cache_dir=cache_dir,
        )
        for name, value in (("prompt_embeds", positive), ("negative_prompt_embeds", negative)):
            current = getattr(self, name)
            if current.is_meta:
                setattr(self, name, nn.Buffer(value.to(dtype=current.dtype)))
            else:
                with torch.no_grad():
                    current.copy_(value)

    # ------------------------------------------------------------------ rollout
    def forward(self, latents: torch.Tensor, num_steps: int) -> torch.Tensor:
        """Predict ``num_steps`` future latent frames after ``latents``.

        Args:
            latents: ``(B, z, 1, h, w)`` normalised latents of the current frame.
            num_steps: ``k >= 0``, the number of frames to predict.

        Returns:
            ``(B, z, 1 + k, h, w)`` in ``latents``' dtype and device: ``latents`` itself (with its gradient path),
            then the ``k`` predicted frames (no gradient) in the same normalised space.
        """
        z = self.transformer.config.out_channels
        _, patch_h, patch_w = self.transformer.config.patch_size
        if latents.ndim != 5 or latents.shape[1] != z or latents.shape[2] != 1:
            raise ValueError(f"latents must have shape (B, {z}, 1, h, w), got {tuple(latents.shape)}.")
        if latents.shape[3] % patch_h or latents.shape[4] % patch_w:
            raise ValueError(
                f"The latent grid {latents.shape[3]}x{latents.shape[4]} is not divisible by the Cosmos DiT patch size "
                f"{patch_h}x{patch_w}."
            )
        if num_steps < 0:
            raise ValueError(f"num_steps must be >= 0, got {num_steps}.")
        if num_steps == 0:
            return latents
        sigma_data = float(PIPELINE_SCHEDULER_SETTINGS["sigma_data"])
        with torch.no_grad():
            condition = latents.detach().to(device=self.device, dtype=torch.float32) * sigma_data
            # CODEPATH: theworld 0.1.0 checkpoints (format 1) were trained with rollout_mode="autoregressive"; format-2
            # checkpoints default to "joint" (the pipeline's Video2World rollout).
            if self.config.rollout_mode == "autoregressive":
                predicted = self._rollout_autoregressive(condition, num_steps)
            else:
                predicted = self._rollout_joint(condition, num_steps)
            predicted = (predicted / sigma_data).to(device=latents.device, dtype=latents.dtype)
        return torch.cat([latents, predicted], dim=2)

    def _rollout_joint(self, condition: torch.Tensor, num_steps: int) -> torch.Tensor:
        """One Video2World denoising of ``1 + k`` frames: ``(B, z, 1, h, w)`` condition -> ``(B, z, k, h, w)``."""
        _, z, _, h, w = condition.shape
        generator = torch.Generator(device="cpu").manual_seed(int(self.config.rollout_seed))
        noise = torch.randn((1, z, 1 + num_steps, h, w), generator=generator, dtype=torch.float32)
        return self._denoise(condition, noise[0, :, 1:])

    def _rollout_autoregressive(self, condition: torch.Tensor, num_steps: int) -> torch.Tensor:
        """theworld 0.1.0's rollout: ``k`` 2-frame windows, each conditioned on the previous predicted frame."""
        _, z, _, h, w = condition.shape
        generator = torch.Generator(device="cpu").manual_seed(int(self.config.rollout_seed))
        noises = [torch.randn((z, 1, h, w), generator=generator, dtype=torch.float32) for _ in range(num_steps)]
        frames = []
        for noise in noises:
            condition = self._denoise(condition, noise)
            frames.append(condition)
        return torch.cat(frames, dim=2)

    def _make_scheduler(self, device: torch.device):
        """A fresh scheduler, set up exactly as ``Cosmos2VideoToWorldPipeline`` sets up its own."""
        init_config = {k: v for k, v in self.scheduler_config.items() if k not in PIPELINE_SCHEDULER_SETTINGS}
        scheduler = self.scheduler_class.from_config(init_config)
        scheduler.register_to_config(**PIPELINE_SCHEDULER_SETTINGS)
        steps = int(self.config.rollout_num_inference_steps)
        scheduler.set_timesteps(sigmas=torch.linspace(0, 1, steps, dtype=torch.float64).numpy(), device=device)
        # final_sigmas_type="sigma_min": the terminal zero sigma becomes the last non-zero one (a no-op last step).
        scheduler.sigmas[-1] = scheduler.sigmas[-2]
        return scheduler

    def _denoise(self, condition: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Video2World denoising of ``n`` frames after one conditioning frame.

        Args:
            condition: ``(B, z, 1, h, w)`` float32 conditioning latents (normalised, times ``sigma_data``).
            noise: ``(z, n, h, w)`` standard normal noise, shared by every sample of the batch.

        Returns:
            ``(B, z, n, h, w)`` float32 latents of the ``n`` frames (the space of ``condition``).
        """
        batch, _, _, h, w = condition.shape
        frames = noise.shape[1]
        device, dtype = condition.device, self.dtype
        scheduler = self._make_scheduler(device)
        x = noise.to(device).unsqueeze(0).expand(batch, -1, -1, -1, -1) * float(scheduler.config.sigma_max)
        # Condition-mask channel (1 on the conditioning frame), then the all-zero padding-mask channel.
        masks = [torch.cat([condition.new_ones(batch, 1, 1, h, w), condition.new_zeros(batch, 1, frames, h, w)], 2)]
        if self.pad_channel:
            masks.append(condition.new_zeros(batch, 1, 1 + frames, h, w))
        mask = torch.cat(masks, dim=1).to(dtype)
        sigma_conditioning = torch.full((), SIGMA_CONDITIONING, dtype=torch.float32, device=device)
        t_conditioning = (sigma_conditioning / (sigma_conditioning + 1)).view(1)
        condition_in = condition.to(dtype)
        guidance = float(self.config.rollout_guidance_scale)
        text = self.prompt_embeds.to(device=device, dtype=dtype).expand(batch, -1, -1)
        negative = self.negative_prompt_embeds.to(device=device, dtype=dtype).expand(batch, -1, -1)
        for i, t in enumerate(scheduler.timesteps):
            sigma = scheduler.sigmas[i]
            t_current = sigma / (sigma + 1)
            c_in = c_skip = 1 - t_current
            c_out = -t_current
            hidden = torch.cat([condition_in, (x * c_in).to(dtype)], dim=2)
            timestep = torch.cat([t_conditioning, t_current.view(1).expand(frames)]).view(1, 1, 1 + frames, 1, 1)
            timestep = timestep.expand(batch, -1, -1, -1, -1).to(dtype)
            out = self._dit_call(hidden, timestep, text, mask)
            denoised = (c_skip * x + c_out * out).to(dtype).float()
            # CODEPATH: rollout_guidance_scale > 1 (the format-2 default 7.0, the pipeline's) adds a negative-prompt
            # DiT pass; theworld 0.1.0 checkpoints (guidance 1.0) run the conditional pass only.
            if guidance > 1.0:
                out_uncond = self._dit_call(hidden, timestep, negative, mask)
                denoised_uncond = (c_skip * x + c_out * out_uncond).to(dtype).float()
                denoised = denoised + guidance * (denoised - denoised_uncond)
            velocity = (x - denoised) / sigma
            x = scheduler.step(velocity, t, x, return_dict=False)[0]
        return x

    def _dit_call(
        self, hidden: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """The DiT on ``(B, z, 1 + n, h, w)`` latents; returns its float32 output for the ``n`` predicted frames."""
        out = self.transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=text,
            fps=ROLLOUT_FPS,
            condition_mask=mask,
            return_dict=False,
        )[0]
        return out[:, :, 1:].float()


# ----------------------------------------------------------------------------------------------------------------------
# Prompt embeddings: T5 once per Cosmos revision, cached
# ----------------------------------------------------------------------------------------------------------------------
def _sanitise(name: str) -> str:
    """A file-name-safe form of ``name``; a hash suffix keeps distinct names distinct after sanitising."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-")[:80] or "x"
    if safe != name:
        safe = f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return safe


def _local_files_key(folder: Path) -> str:
    """Content fingerprint of a local source's ``text_encoder/`` and ``tokenizer/`` files.

    Files up to 64 MiB are hashed whole; larger ones (T5 weights) by size, mtime and their first and last MiB, so a
    warm cache does not re-read gigabytes of weights.
    """
    digest = hashlib.sha256()
    files = sorted(
        p for sub in ("text_encoder", "tokenizer") if (folder / sub).is_dir() for p in (folder / sub).rglob("*")
    )
    for path in files:
        if not path.is_file():
            continue
        stat = path.stat()
        digest.update(f"{path.relative_to(folder).as_posix()}\0{stat.st_size}\0".encode())
        with open(path, "rb") as handle:
            if stat.st_size <= _FULL_HASH_LIMIT:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(f"{stat.st_mtime_ns}\0".encode())
                digest.update(handle.read(_EDGE_BYTES))
                handle.seek(stat.st_size - _EDGE_BYTES)
                digest.update(handle.read(_EDGE_BYTES))
    if not files:
        raise FileNotFoundError(f"{folder} has no text_encoder/ or tokenizer/ folder (a Cosmos-Predict2 pipeline has).")
    return "content-" + digest.hexdigest()[:32]


def _hub_commit(source: str, revision: str | None, hub_kwargs: dict[str, Any]) -> str | None:
    """The commit ``revision`` (a branch, tag or ``None`` for the default branch) of hub repo ``source`` points at."""
    if revision is not None and _COMMIT_RE.match(revision):
        return revision
    kwargs = {k: v for k, v in hub_kwargs.items() if k in _DOWNLOAD_KWARGS}
    path = Path(huggingface_hub.hf_hub_download(source, "model_index.json", revision=revision, **kwargs))
    commit = path.parent.name
    if path.parent.parent.name == "snapshots" and _COMMIT_RE.match(commit):
        return commit
    return None


def _cache_file(source: str, local: bool, version_key: str, text_dim: int, root: str | os.PathLike) -> Path:
    """Where the embeddings of ``source`` (a local folder or a hub repo id) at ``version_key`` live under ``root``."""
    source_name = (
        "local--" + _sanitise(Path(source).resolve().name)
        if local
        else "models--" + _sanitise(source.replace("/", "--"))
    )
    prompts = json.dumps(
        {
            "prompt": ROLLOUT_PROMPT,
            "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
            "text_dim": int(text_dim),
            "max_sequence_length": TEXT_SEQUENCE_LENGTH,
            "format": PROMPT_CACHE_FORMAT,
        },
        sort_keys=True,
    )
    name = hashlib.sha256(prompts.encode()).hexdigest()[:32] + ".safetensors"
    return Path(root) / "theworld" / "rollout-prompts" / source_name / _sanitise(version_key) / name


def _read_cache(path: Path, text_dim: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as error:
        logger.warning("Ignoring the unreadable rollout prompt cache %s (%s); recomputing it.", path, error)
        return None
    shape = (1, TEXT_SEQUENCE_LENGTH, int(text_dim))
    pair = tensors.get("prompt_embeds"), tensors.get("negative_prompt_embeds")
    if any(t is None or tuple(t.shape) != shape or t.dtype != torch.float32 for t in pair):
        logger.warning("Ignoring the rollout prompt cache %s: it does not hold two float32 %s tensors.", path, shape)
        return None
    return pair


def _write_cache(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Atomic write (temporary file + ``os.replace``); a cache that cannot be written is only a warning."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except OSError as error:
        logger.warning("Could not write the rollout prompt cache %s (%s); T5 will run again next time.", path, error)
        tmp.unlink(missing_ok=True)


def _encode_prompts(
    source: str, revision: str | None, text_dim: int, hub_kwargs: dict[str, Any], prompts: tuple[str, ...]
) -> list[torch.Tensor]:
    """T5-encode ``prompts`` as ``Cosmos2VideoToWorldPipeline._get_t5_prompt_embeds`` does; each ``(1, 512, dim)``."""
    logger.info(
        "Running the Cosmos T5 text encoder of %s (revision %s) on CPU to compute the rollout prompt embeddings; the "
        "result is cached, later builds skip this.",
        source,
        revision,
    )
    tokenizer = T5TokenizerFast.from_pretrained(source, subfolder="tokenizer", revision=revision, **hub_kwargs)
    encoder = T5EncoderModel.from_pretrained(
        source, subfolder="text_encoder", revision=revision, dtype=torch.float32, **hub_kwargs
    ).eval()
    if encoder.config.d_model != text_dim:
        raise ValueError(
            f"The Cosmos text encoder of {source!r} has width {encoder.config.d_model} but the DiT reads "
            f"{text_dim}-wide text embeddings; its text_encoder/ and transformer/ folders do not belong together."
        )
    out = []
    for prompt in prompts:
        tokens = tokenizer(
            [prompt], padding="max_length", max_length=TEXT_SEQUENCE_LENGTH, truncation=True, return_tensors="pt"
        )
        mask = tokens.attention_mask.bool()
        with torch.no_grad():
            hidden = encoder(tokens.input_ids, attention_mask=mask).last_hidden_state.float()
        hidden[:, int(mask.sum()) :] = 0
        out.append(hidden.contiguous())
    return out


def rollout_prompt_embeddings(
    source: str,
    *,
    revision: str | None,
    text_dim: int,
    hub_kwargs: dict | None = None,
    cache_dir: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DiT's text conditions for rollout: T5 embeddings of ``""`` and of `DEFAULT_NEGATIVE_PROMPT`.

    Encodes with the Cosmos source's ``text_encoder/`` (``T5EncoderModel``, float32, CPU) and ``tokenizer/`` exactly
    as ``Cosmos2VideoToWorldPipeline._get_t5_prompt_embeds`` does: padded to ``max_sequence_length = 512``,
    ``last_hidden_state``, rows past the prompt length zeroed.

    T5 runs once per Cosmos revision: the result is cached as a safetensors file (written atomically) at
    ``<cache root>/theworld/rollout-prompts/<source>/<version>/<hash of the prompts, text_dim>.safetensors``, and a
    cached result is returned without loading T5. ``<version>`` is the commit for a hub source (a branch or tag
    ``revision``, or ``None`` for the default branch, is resolved to its commit), ``revision`` as given for a local
    folder, or a fingerprint of the local ``text_encoder/`` and ``tokenizer/`` files when ``revision`` is ``None``.

    Args:
        source: a Cosmos-Predict2 pipeline: hub repo id or local folder.
        revision: hub branch, tag or commit (a commit keys the cache without any network call); for a local folder,
            a name the caller vouches for (e.g. the commit it was downloaded at), or ``None``.
        text_dim: width of the DiT's text embeddings (the T5 ``d_model``).
        hub_kwargs: extra ``from_pretrained`` keyword arguments (``token``, ``cache_dir``, ``local_files_only``, ...);
            a ``revision`` in it must agree with ``revision`` (and is used when ``revision`` is ``None``).
        cache_dir: cache root; defaults to ``huggingface_hub.constants.HF_HOME`` (``~/.cache/huggingface``, the folder
            that holds the hub cache), so the file is ``$HF_HOME/theworld/rollout-prompts/...``.

    Returns:
        ``(prompt_embeds, negative_prompt_embeds)``, each ``(1, 512, text_dim)`` float32 on CPU.
    """
    hub_kwargs = dict(hub_kwargs or {})
    hub_revision = hub_kwargs.pop("revision", None)
    if hub_revision is not None and revision is not None and hub_revision != revision:
        raise ValueError(
            f"rollout_prompt_embeddings got revision={revision!r} and hub_kwargs['revision']={hub_revision!r}; pass "
            "one Cosmos revision."
        )
    revision = revision if revision is not None else hub_revision
    local = os.path.isdir(source)
    if local:
        version_key = f"revision-{revision}" if revision is not None else _local_files_key(Path(source))
        load_revision = None
    else:
        commit = _hub_commit(source, revision, hub_kwargs)
        version_key = commit
        load_revision = commit or revision
    # Not inside the hub cache (HF_HUB_CACHE): `hf cache scan` reports any folder there that is not a repo.
    root = cache_dir if cache_dir is not None else huggingface_hub.constants.HF_HOME
    path = _cache_file(source, local, version_key, text_dim, root) if version_key is not None else None
    if path is None:
        logger.info(
            "Could not resolve the commit of %s at revision %s; the rollout prompts are not cached.", source, revision
        )
    else:
        cached = _read_cache(path, text_dim)
        if cached is not None:
            logger.debug("Rollout prompt embeddings read from %s.", path)
            return cached
    positive, negative = _encode_prompts(
        source, load_revision, int(text_dim), hub_kwargs, (ROLLOUT_PROMPT, DEFAULT_NEGATIVE_PROMPT)
    )
    if path is not None:
        metadata = {
            "source": str(source),
            "version": str(version_key),
            "prompt": ROLLOUT_PROMPT,
            "negative_prompt": DEFAULT_NEGATIVE_PROMPT,
            "text_dim": str(int(text_dim)),
            "format": str(PROMPT_CACHE_FORMAT),
        }
        _write_cache(path, {"prompt_embeds": positive, "negative_prompt_embeds": negative}, metadata)
    return positive, negative


__all__ = [
    "DEFAULT_NEGATIVE_PROMPT",
    "ROLLOUT_PROMPT",
    "TEXT_SEQUENCE_LENGTH",
    "TheWorldRollout",
    "rollout_prompt_embeddings",
    "text_context_dim",
]
