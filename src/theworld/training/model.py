"""The model a `TrainConfig` describes: a fresh TheWorld around a Gemma 3 base, or a TheWorld checkpoint (stage 2)."""

from __future__ import annotations

import torch

from .config import DEFAULT_LORA_TARGETS, TrainConfig, preset_freeze_flags

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _checkpoint_enable_world(source: str) -> bool:
    """``enable_world`` of the TheWorld checkpoint ``source`` (read from its ``config.json``)."""
    from theworld.checkpoint_theworld import read_json, resolve_file

    path = resolve_file(source, "config.json")
    if path is None:
        raise FileNotFoundError(f"init_from: no config.json at {source}; pass a TheWorld checkpoint folder or hub id.")
    raw = read_json(path)
    if raw.get("model_type") not in ("theworld", "the_world"):
        raise ValueError(
            f"init_from: {source} has model_type {raw.get('model_type')!r}, not a TheWorld checkpoint. To start from a "
            "Gemma 3 base, set gemma_model_name instead."
        )
    return bool(raw.get("enable_world", True))


def build_model(config: TrainConfig):
    """The model ``config`` describes, its freeze flags set from ``freeze_preset`` and its trainable parameters in
    float32 (master weights; frozen base weights are stored in ``config.dtype``)."""
    from theworld import TheWorld
    from theworld.checkpoint_theworld import apply_freeze_flags, has_adapter
    from theworld.configuration_theworld import ARCHITECTURE_FIELDS, LOAD_TIME_FIELDS

    fields = config.model_overrides()
    lora = config.lora_settings()
    dtype = _TORCH_DTYPES[config.dtype]
    extra = {"cosmos_model_name": config.cosmos_model_name} if config.cosmos_model_name is not None else {}
    if config.init_from is not None:
        enable_world = _checkpoint_enable_world(config.init_from)
        if config.enable_world is not None and config.enable_world != enable_world:
            raise ValueError(
                f"enable_world: {config.enable_world} contradicts the init_from checkpoint ({enable_world}); drop it."
            )
        flags = preset_freeze_flags(config.freeze_preset, enable_world, adapter=lora is not None)
        loadable = {k: v for k, v in fields.items() if k in ARCHITECTURE_FIELDS + LOAD_TIME_FIELDS}
        model = TheWorld.from_pretrained(config.init_from, dtype=dtype, **loadable, **flags, **extra)
        fixed = {k: v for k, v in fields.items() if k not in loadable and getattr(model.config, k) != v}
        if fixed:
            diffs = ", ".join(f"{k}: {v!r} (the checkpoint has {getattr(model.config, k)!r})" for k, v in fixed.items())
            raise ValueError(
                f"init_from {config.init_from} fixes {', '.join(fixed)}: {diffs}. Drop these fields, or start a new "
                "model from the Gemma base (gemma_model_name) to change them."
            )
    else:
        enable_world = True if config.enable_world is None else config.enable_world
        flags = preset_freeze_flags(config.freeze_preset, enable_world, adapter=lora is not None)
        model = TheWorld.from_pretrained(
            config.gemma_model_name, dtype=dtype, enable_world=enable_world, **fields, **flags, **extra
        )
    # CODEPATH: configs with a lora: section add a LoRA adapter to the language model (an init_from checkpoint's own
    # adapter loads with it and keeps training).
    if lora is not None:
        if has_adapter(model):
            raise ValueError(
                f"init_from {config.init_from} already holds a PEFT adapter, which keeps training; drop the lora: "
                "section (or merge it first: theworld export SOURCE DEST --merge-lora)."
            )
        add_lora(model, **lora)
    apply_freeze_flags(model)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def add_lora(
    model,
    r: int = 16,
    alpha: float | None = None,
    dropout: float = 0.0,
    target_modules: str | list[str] = DEFAULT_LORA_TARGETS,
    adapter_name: str = "default",
):
    """Add a LoRA adapter (PEFT's ``inject_adapter_in_model``) to the language model of ``model``, in place, and
    set its trainable parameters: the adapter and whatever the freeze flags train (the world projector always).

    Args:
        r: the adapter's rank. alpha: its scaling numerator (default ``2 * r``). dropout: dropout on its input.
        target_modules: a regex matched against whole module names, or a list of module names (PEFT's rules);
            every module it matches must lie in Gemma's language model (``model.language_model.``).

    Returns:
        ``model``. Raises `ImportError` without peft, `ValueError` for targets that match nothing or lie outside the
        language model.
    """
    from theworld.checkpoint_theworld import PEFT_INSTALL_HINT, adapter_layers, apply_freeze_flags

    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError(f"A LoRA adapter (lora:) needs the peft library: {PEFT_INSTALL_HINT}.") from err
    config = LoraConfig(
        r=r, lora_alpha=2 * r if alpha is None else alpha, lora_dropout=dropout, target_modules=target_modules
    )
    try:
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
    except ValueError as err:
        raise ValueError(
            f"lora.target_modules {target_modules!r} matches no module of the model ({err}). Use a regex over whole "
            f"module names such as {DEFAULT_LORA_TARGETS!r}."
        ) from err
    outside = sorted(n for n in adapter_layers(model) if not n.startswith("model.language_model."))
    if outside:
        raise ValueError(
            f"lora.target_modules {target_modules!r} also matches modules outside Gemma's language model: "
            f"{outside[:5]}{' ...' if len(outside) > 5 else ''} (a list of names matches SigLIP's layers too). Use a "
            f"regex that names the language model, e.g. {DEFAULT_LORA_TARGETS!r}."
        )
    apply_freeze_flags(model)
    return model


def trainable_named_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    """``[(name, parameter), ...]`` of the parameters that train, each once (tied weights under their first name)."""
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def world_encoder_trains(model) -> bool:
    """Whether the world encoder (the Cosmos VAE encoder) has trainable parameters."""
    if not model.config.enable_world:
        return False
    return any(p.requires_grad for p in model.model.world_encoder.parameters())


def resolve_mixed_precision(value: str) -> str:
    """``"auto"`` -> ``"bf16"`` on a GPU that supports it, else ``"no"``."""
    if value == "auto":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    return value


def resolve_latent_caching(config: TrainConfig, model) -> bool:
    """Whether to train on cached world latents (``cache_world_latents`` against the model's frozen parts)."""
    if not model.config.enable_world:
        return False
    trains = world_encoder_trains(model)
    if config.cache_world_latents is True and trains:
        raise ValueError(
            "cache_world_latents: true needs a frozen VAE, but freeze_preset trains it ('vae' / 'all'); set "
            "cache_world_latents: false or auto."
        )
    if config.cache_world_latents == "auto":
        return not trains
    return bool(config.cache_world_latents)


__all__ = [
    "add_lora",
    "build_model",
    "resolve_latent_caching",
    "resolve_mixed_precision",
    "trainable_named_parameters",
    "world_encoder_trains",
]
