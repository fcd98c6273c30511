"""World rollout: the Cosmos-Predict2 video DiT predicts future latent frames from the current one.

This file is shipped next to every checkpoint as remote code (``modeling_theworld.py`` imports it as
``from .rollout_theworld import ...``). It imports only ``torch`` and, inside functions, ``transformers``;
``diffusers`` reaches it as an argument from ``modeling_theworld._import_diffusers()``, the guarded import.

What it does (shapes for ``B`` world images, ``z`` latent channels, an ``h x w`` latent grid)::

    current frame  (B, z, 1, h, w)   normalised latents, (mu - latents_mean) / latents_std
      -> k autoregressive steps, each a full Video2World denoising of ONE new latent frame conditioned on the
         previous one (a 2-frame DiT window)
      -> predicted frames (B, z, k, h, w) in the same normalised latent space

Design choices
--------------
* **Conditioning, as Cosmos-Predict2 Video2World does it** (``diffusers`` ``Cosmos2VideoToWorldPipeline``): the DiT
  sees a 2-frame latent video ``[condition, x]``. Conditioning latents are the normalised latents times
  ``sigma_data``; a condition-mask channel (1 on the conditioning frame, 0 on the predicted one) is concatenated to the
  input (so ``in_channels = z + 1 = 17``), followed by the all-zero padding-mask channel (the whole square image is
  valid). The conditioning frame gets timestep ``sigma_conditioning / (sigma_conditioning + 1)`` with
  ``sigma_conditioning = 1e-4``; the predicted frame is denoised with the EDM-style preconditioning of the pipeline:
  ``t = sigma / (sigma + 1)``, ``c_in = c_skip = 1 - t``, ``c_out = -t``, ``denoised = c_skip * x + c_out * F(c_in x)``,
  velocity ``(x - denoised) / sigma``, one ``FlowMatchEulerDiscreteScheduler.step`` per denoising step. The scheduler
  is built from the Cosmos source's ``scheduler_config.json`` (Karras sigmas), with the values the pipeline registers
  (``sigma_max=80``, ``sigma_min=0.002``, ``sigma_data=1``, ``final_sigmas_type="sigma_min"``, so the last step is a
  no-op, exactly as in the pipeline). Initial noise is ``N(0, 1) * sigma_max``; ``fps=16`` (the pipeline default).
  No classifier-free guidance (``guidance_scale <= 1`` in pipeline terms): it would double the cost and needs a
  negative prompt embedding. The conditioning frame is the VAE *mode* (the model's world latents), where the pipeline
  samples from the VAE posterior.
* **Padding mask.** ``CosmosTransformer3DModel`` resizes its padding mask with ``torchvision`` when
  ``concat_padding_mask=True`` (the real config). The padding mask is all zeros here, so the rollout module turns the
  transformer's ``concat_padding_mask`` off and appends the zero channel itself, right after the condition mask: the
  same input tensor, and no ``torchvision`` dependency.
* **Autoregressive, one latent frame at a time.** Each step runs ``rollout_num_inference_steps`` DiT calls on a
  fixed 2-frame window (the last frame as condition, one new frame). The cost of step ``j`` does not depend on ``j``, so
  the total cost is exactly linear in ``k``. A one-shot ``1 + k`` frame generation would cost
  ``O((1 + k)^2)`` in self-attention and change every frame when ``k`` changes. Here frame ``j`` is the same for every
  ``k >= j`` (prefix-consistent), which also makes cached latents for a smaller ``k`` a prefix of a larger one.
* **Determinism.** Every call seeds a fresh CPU ``torch.Generator`` with ``config.rollout_seed`` and draws the noise
  of step ``j`` as one ``(z, 1, h, w)`` tensor, shared by all samples of the batch. Results therefore depend only on
  the sample, the seed and the step count: not on the batch composition, the device's RNG or earlier calls.
* **Text conditioning: a fixed prompt embedding, stored once.** The DiT cross-attends to T5 text embeddings. The
  rollout uses the EMPTY prompt ``""`` (the caption-free, generic "what happens next" condition). At the fresh build
  (``TheWorld.from_pretrained(gemma, num_world_steps=k, ...)``) the T5 encoder and tokenizer of the Cosmos source
  (``text_encoder/``, ``tokenizer/``) are loaded once, the prompt is encoded exactly like the pipeline does
  (``last_hidden_state``, rows past the prompt length zeroed, padded to ``max_sequence_length = 512``) and the
  non-zero rows, ``(1, 1, text_dim)`` (the T5 ``</s>`` token), are kept in the persistent buffer
  ``world_rollout.prompt_embeds``. Partial checkpoints of a ``num_world_steps > 0`` model save that buffer
  (``TheWorldConfig.trainable_prefixes`` lists it) and full checkpoints save everything, so later loads never need the
  text encoder. At run time the buffer is zero-padded back to 512 rows, so the DiT sees the pipeline's exact tensor.
  (``load_full_cosmos_pipeline=True`` with ``num_world_steps=0`` loads the text encoder instead and computes it.)
* **Frozen, no gradients.** The DiT is never trained here; the rollout runs under ``torch.no_grad()``. Gradients
  still reach the current frame (and the VAE when it is unfrozen) through the ``(1 + k)``-frame world tokens, and the
  learned per-step embeddings ``world_step_embeddings`` are trained on every frame.
* **Saved**: partial checkpoints hold ``world_step_embeddings.weight`` (trained) and ``world_rollout.prompt_embeds``
  (fixed); the DiT weights are read from the Cosmos source's ``transformer/`` subfolder at the pinned
  ``cosmos_revision`` and fingerprinted under ``base_fingerprints["cosmos_transformer"]``. The safety checker is
  never loaded.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: The fixed rollout prompt (see the module docstring).
ROLLOUT_PROMPT = ""
#: Rows of the T5 output kept in ``world_rollout.prompt_embeds``: the empty prompt tokenises to ``</s>`` alone.
PROMPT_ROWS = 1
#: ``max_sequence_length`` of ``Cosmos2VideoToWorldPipeline``: the text context is zero-padded to this many rows.
TEXT_SEQUENCE_LENGTH = 512
#: Frames per second passed to the DiT (the pipeline default; it scales the temporal RoPE).
ROLLOUT_FPS = 16
#: Noise level of the conditioning frame (the pipeline default).
SIGMA_CONDITIONING = 1e-4
#: What ``Cosmos2VideoToWorldPipeline.__init__`` registers into its scheduler config.
PIPELINE_SCHEDULER_SETTINGS = {"sigma_max": 80.0, "sigma_min": 0.002, "sigma_data": 1.0, "final_sigmas_type": "sigma_min"}


def strip_private(config: dict[str, Any]) -> dict[str, Any]:
    """A diffusers config dict without its ``_class_name``/``_diffusers_version``/... bookkeeping keys."""
    return {k: v for k, v in config.items() if not k.startswith("_")}


def text_context_dim(transformer_config: dict[str, Any]) -> int:
    """Width of the text embeddings the DiT cross-attends to."""
    if transformer_config.get("use_crossattn_projection"):
        return int(transformer_config.get("crossattn_proj_in_channels", 1024))
    return int(transformer_config.get("text_embed_dim", 1024))


def check_transformer_config(transformer_config: dict[str, Any], latent_channels: int, source: str) -> None:
    """Refuse a DiT that cannot do Video2World conditioning on ``latent_channels``-channel latents."""
    in_ch = int(transformer_config.get("in_channels", 16))
    out_ch = int(transformer_config.get("out_channels", 16))
    if in_ch != latent_channels + 1 or out_ch != latent_channels:
        raise ValueError(
            f"The Cosmos DiT of {source!r} has in_channels={in_ch}, out_channels={out_ch}; rollout needs a "
            f"Video2World DiT with in_channels={latent_channels + 1} (latents + condition mask) and "
            f"out_channels={latent_channels}. Point cosmos_model_name at a Cosmos-Predict2 Video2World pipeline, or "
            "set num_world_steps=0 and load_full_cosmos_pipeline=False."
        )


class TheWorldRollout(nn.Module):
    """The frozen Cosmos-Predict2 Video2World DiT plus its fixed text condition (see the module docstring).

    Args:
        transformer_config: the diffusers ``CosmosTransformer3DModel`` config dict.
        scheduler_config: the diffusers ``FlowMatchEulerDiscreteScheduler`` config dict.
        diffusers: the ``diffusers`` module (from ``modeling_theworld._import_diffusers()``).

    Holds ``transformer`` (the DiT) and the buffer ``prompt_embeds`` ``(1, PROMPT_ROWS, text_dim)``.
    """

    def __init__(self, transformer_config: dict[str, Any], scheduler_config: dict[str, Any], diffusers: Any):
        super().__init__()
        self.transformer = diffusers.CosmosTransformer3DModel.from_config(strip_private(transformer_config))
        self.transformer.requires_grad_(False)
        # The padding-mask channel is appended here, not inside the transformer (which would need torchvision).
        self.pad_channel = bool(self.transformer.config.concat_padding_mask)
        if self.pad_channel:
            self.transformer.register_to_config(concat_padding_mask=False)
        self.scheduler_config = strip_private(scheduler_config)
        self._scheduler_cls = diffusers.FlowMatchEulerDiscreteScheduler
        self.register_buffer("prompt_embeds", torch.zeros(1, PROMPT_ROWS, text_context_dim(transformer_config)))

    # ------------------------------------------------------------------ pieces
    def make_scheduler(self, num_inference_steps: int, device: torch.device):
        """A fresh scheduler set up exactly as ``Cosmos2VideoToWorldPipeline.__call__`` sets up its own."""
        init = {k: v for k, v in self.scheduler_config.items() if k not in PIPELINE_SCHEDULER_SETTINGS}
        scheduler = self._scheduler_cls.from_config(init)
        scheduler.register_to_config(**PIPELINE_SCHEDULER_SETTINGS)
        sigmas = torch.linspace(0, 1, num_inference_steps, dtype=torch.float64).tolist()  # as the pipeline; Karras
        scheduler.set_timesteps(sigmas=sigmas, device=device)
        if scheduler.config.final_sigmas_type == "sigma_min":
            scheduler.sigmas[-1] = scheduler.sigmas[-2]
        return scheduler

    def text_context(self, batch: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The pipeline's prompt embedding ``(batch, TEXT_SEQUENCE_LENGTH, text_dim)``: stored rows + zero rows."""
        rows = self.prompt_embeds.to(device=device, dtype=dtype)
        pad = rows.new_zeros(1, TEXT_SEQUENCE_LENGTH - rows.shape[1], rows.shape[2])
        return torch.cat([rows, pad], dim=1).expand(batch, -1, -1)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.proj_out.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.transformer.proj_out.weight.device

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def forward(self, current: torch.Tensor, num_steps: int, num_inference_steps: int, seed: int) -> torch.Tensor:
        """Predict ``num_steps`` future latent frames.

        Args:
            current: ``(B, z, 1, h, w)`` normalised latents of the current frame.
            num_steps: ``k``, frames to predict (autoregressively, one per step).
            num_inference_steps: denoising steps per predicted frame (at least 2: the last one is a no-op).
            seed: seed of the CPU generator that draws the noise.

        Returns:
            ``(B, z, num_steps, h, w)`` float32 normalised latents, on ``current``'s device.
        """
        if current.ndim != 5 or current.shape[2] != 1:
            raise ValueError(f"current must have shape (B, z, 1, h, w), got {tuple(current.shape)}.")
        b, z, _, h, w = current.shape
        _, p_h, p_w = self.transformer.config.patch_size
        if h % p_h or w % p_w:
            raise ValueError(
                f"The latent grid {h}x{w} is not divisible by the Cosmos DiT patch size {p_h}x{p_w}; choose "
                f"world_image_size as a multiple of {8 * p_h} pixels for rollout."
            )
        if num_inference_steps < 2:
            raise ValueError(
                f"rollout_num_inference_steps={num_inference_steps} is too small: with the pipeline's "
                "final_sigmas_type='sigma_min' the last Euler step is a no-op, so one step returns pure noise. Use >= 2."
            )
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        noises = [torch.randn((z, 1, h, w), generator=generator, dtype=torch.float32) for _ in range(num_steps)]
        sigma_data = float(PIPELINE_SCHEDULER_SETTINGS["sigma_data"])
        condition = current.to(device=self.device, dtype=torch.float32) * sigma_data
        frames = []
        for noise in noises:
            condition = self.denoise_next(condition, noise.to(self.device), num_inference_steps)
            frames.append(condition)
        return (torch.cat(frames, dim=2) / sigma_data).to(current.device)

    def denoise_next(self, condition: torch.Tensor, noise: torch.Tensor, num_inference_steps: int) -> torch.Tensor:
        """One Video2World denoising of the frame after ``condition``.

        Args:
            condition: ``(B, z, 1, h, w)`` float32 conditioning latents (normalised, times ``sigma_data``).
            noise: ``(z, 1, h, w)`` standard normal noise, shared by the batch.
            num_inference_steps: denoising steps.

        Returns:
            ``(B, z, 1, h, w)`` float32 latents of the next frame (same space as ``condition``).
        """
        b, _, _, h, w = condition.shape
        device, dtype = condition.device, self.dtype
        scheduler = self.make_scheduler(num_inference_steps, device)
        x = noise.unsqueeze(0).expand(b, -1, -1, -1, -1) * float(scheduler.config.sigma_max)
        indicator = torch.tensor([1.0, 0.0], device=device).view(1, 1, 2, 1, 1)
        masks = [indicator.expand(b, 1, 2, h, w)]
        if self.pad_channel:
            masks.append(torch.zeros(b, 1, 2, h, w, device=device))
        mask = torch.cat(masks, dim=1).to(dtype)
        text = self.text_context(b, dtype, device)
        sigma_cond = torch.tensor(SIGMA_CONDITIONING, dtype=torch.float32, device=device)
        t_cond = sigma_cond / (sigma_cond + 1)
        cond_in = condition.to(dtype)
        for i, t in enumerate(scheduler.timesteps):
            sigma = scheduler.sigmas[i]
            t_cur = sigma / (sigma + 1)
            c_in = c_skip = 1 - t_cur
            c_out = -t_cur
            hidden = torch.cat([cond_in, (x * c_in).to(dtype)], dim=2)
            timestep = torch.stack([t_cond, t_cur]).view(1, 1, 2, 1, 1).expand(b, -1, -1, -1, -1).to(dtype)
            out = self.transformer(
                hidden_states=hidden,
                timestep=timestep,
                encoder_hidden_states=text,
                fps=ROLLOUT_FPS,
                condition_mask=mask,
                return_dict=False,
            )[0]
            denoised = (c_skip * x + c_out * out[:, :, 1:].float()).to(dtype)
            velocity = (x - denoised) / sigma
            x = scheduler.step(velocity, t, x, return_dict=False)[0]
        return x


def encode_fixed_prompt(source: str, hub_kwargs: dict[str, Any], dim: int, device, dtype) -> torch.Tensor:
    """Encode :data:`ROLLOUT_PROMPT` with the Cosmos source's T5 (``text_encoder/`` + ``tokenizer/``), once.

    Mirrors ``Cosmos2VideoToWorldPipeline._get_t5_prompt_embeds`` (rows past the prompt length are zero there; the
    attention mask makes the padded rows irrelevant to the kept ones, so only the prompt's tokens are encoded).

    Returns:
        ``(1, PROMPT_ROWS, dim)`` in ``dtype`` on ``device``.
    """
    from transformers import AutoTokenizer, T5EncoderModel

    tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **hub_kwargs)
    tokens = tokenizer([ROLLOUT_PROMPT], padding="longest", return_tensors="pt")
    length = int(tokens.attention_mask.sum())
    if length > PROMPT_ROWS:
        raise ValueError(
            f"The Cosmos tokenizer turns the rollout prompt {ROLLOUT_PROMPT!r} into {length} tokens; at most "
            f"{PROMPT_ROWS} fit the stored prompt embedding. Use a T5 tokenizer (Cosmos-Predict2's own)."
        )
    out = torch.zeros(1, PROMPT_ROWS, dim, dtype=dtype, device=device)
    if length == 0:
        return out
    encoder = T5EncoderModel.from_pretrained(
        source, subfolder="text_encoder", dtype=dtype, use_safetensors=True, **hub_kwargs
    ).to(device)
    encoder.eval()
    if encoder.config.d_model != dim:
        raise ValueError(
            f"The Cosmos text encoder has width {encoder.config.d_model} but the DiT expects {dim}; the text_encoder/ "
            "and transformer/ folders of the Cosmos source do not belong together."
        )
    with torch.no_grad():
        hidden = encoder(
            input_ids=tokens.input_ids.to(device), attention_mask=tokens.attention_mask.bool().to(device)
        ).last_hidden_state
    out[:, :length] = hidden[:, :length].to(dtype)
    del encoder
    return out


__all__ = ["TheWorldRollout", "encode_fixed_prompt", "ROLLOUT_PROMPT", "PROMPT_ROWS", "TEXT_SEQUENCE_LENGTH"]
