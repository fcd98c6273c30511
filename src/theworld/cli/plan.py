"""``theworld plan``: what a TheWorld setting costs on the real bases, offline (see `theworld.planning`).

Prints a readable table, or with ``--json`` one JSON object (the dict `theworld.planning.plan` returns). Bases are
resolved without the network: a local folder, the hub cache, or the configs shipped for ``google/gemma-3-4b-it`` and
``nvidia/Cosmos-Predict2-2B-Video2World``. Exit status 2 with ``error: ...`` on stderr when a base cannot be found or
a setting is invalid.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..configuration_theworld import (
    DEFAULT_COSMOS,
    DEFAULT_GEMMA,
    PROJECTION_ARCHITECTURES,
    WORLD_PLACEMENTS,
    WORLD_PROJECTION_MODES,
)


def _dtype_or_none(value: str) -> str | None:
    return None if value.lower() in ("none", "model") else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..planning import DEFAULT_PROMPT_TOKENS

    bases = parser.add_argument_group("bases (resolved offline: local folder, hub cache, or shipped config)")
    bases.add_argument("--gemma", default=DEFAULT_GEMMA, help=f"Gemma 3 base (default {DEFAULT_GEMMA})")
    bases.add_argument("--cosmos", default=DEFAULT_COSMOS, help=f"Cosmos-Predict2 base (default {DEFAULT_COSMOS})")
    bases.add_argument("--gemma-revision", default=None, help="hub-cache revision of the Gemma base")
    bases.add_argument("--cosmos-revision", default=None, help="hub-cache revision of the Cosmos base")
    bases.add_argument("--cache-dir", default=None, help="hub cache folder (default: HF_HUB_CACHE)")

    world = parser.add_argument_group("world setting")
    world.add_argument("--world-image-size", type=int, default=512, help="world image side in pixels (default 512)")
    world.add_argument("--world-pooling", type=int, default=4, help="latent-grid pooling factor (default 4)")
    world.add_argument("--world-projection-mode", choices=WORLD_PROJECTION_MODES, default="spatial")
    world.add_argument("--projection-architecture", choices=PROJECTION_ARCHITECTURES, default="mlp")
    world.add_argument("--world-placement", choices=WORLD_PLACEMENTS, default="after_image")
    world.add_argument("--num-world-steps", type=int, default=0, help="rollout steps k (default 0)")
    world.add_argument("--no-world", action="store_true", help="plan plain Gemma 3 (enable_world=False)")
    world.add_argument(
        "--world-encoder-dtype",
        type=_dtype_or_none,
        default="float32",
        help="dtype of the world encoder: float32 (default), bfloat16, float16, or none (follow --dtype)",
    )

    train = parser.add_argument_group("training")
    train.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS,
                       help=f"text tokens of the question (default {DEFAULT_PROMPT_TOKENS})")  # fmt: skip
    train.add_argument("--batch-size", type=int, default=1, help="samples per step (default 1)")
    train.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    train.add_argument("--attn-implementation", choices=("sdpa", "eager"), default="sdpa")
    for part, what in (("gemma-vision", "SigLIP + multimodal projector"), ("gemma-language", "the language model"),
                       ("cosmos-vae", "the world encoder")):  # fmt: skip
        train.add_argument(f"--freeze-{part}", action=argparse.BooleanOptionalAction, default=True,
                           help=f"keep {what} frozen (default: frozen)")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def run(args: argparse.Namespace) -> int:
    from ..planning import BaseNotFoundError, format_plan, plan
    from . import echo

    try:
        result = plan(
            args.gemma,
            args.cosmos,
            world_image_size=args.world_image_size,
            world_pooling=args.world_pooling,
            world_projection_mode=args.world_projection_mode,
            projection_architecture=args.projection_architecture,
            world_placement=args.world_placement,
            num_world_steps=args.num_world_steps,
            prompt_tokens=args.prompt_tokens,
            batch_size=args.batch_size,
            dtype=args.dtype,
            world_encoder_dtype=args.world_encoder_dtype,
            freeze_gemma_vision=args.freeze_gemma_vision,
            freeze_gemma_language=args.freeze_gemma_language,
            freeze_cosmos_vae=args.freeze_cosmos_vae,
            enable_world=not args.no_world,
            attn_implementation=args.attn_implementation,
            gemma_revision=args.gemma_revision,
            cosmos_revision=args.cosmos_revision,
            cache_dir=args.cache_dir,
        )
    except (BaseNotFoundError, ValueError) as error:
        echo(f"error: {error}", stream=sys.stderr)
        return 2
    echo(json.dumps(result, indent=2) if args.json else format_plan(result))
    return 0
