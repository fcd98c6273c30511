"""Data: a seeded synthetic spatial-relations generator and VSR loaders that count what they skip.

Names are imported lazily, so ``python -m theworld.data.synthetic`` runs cleanly and using the generator alone
does not import ``torch``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "COLORS": "synthetic",
    "OPPOSITE": "synthetic",
    "RELATIONS": "synthetic",
    "SHAPES": "synthetic",
    "SceneGeometry": "synthetic",
    "caption_for": "synthetic",
    "generate_synthetic_vsr": "synthetic",
    "label_stats": "synthetic",
    "make_shape_scene": "synthetic",
    "relation_holds": "synthetic",
    "sample_layout": "synthetic",
    "split_stats": "synthetic",
    "SKIP_REASONS": "vsr",
    "VSRDataset": "vsr",
    "VSRExample": "vsr",
    "build_vsr_dataset": "vsr",
    "check_image": "vsr",
    "load_vsr_hub": "vsr",
    "load_vsr_jsonl": "vsr",
    "parse_label": "vsr",
    "resolve_image_path": "vsr",
    "PROMPT_TEMPLATE": "collator",
    "VSRCollator": "collator",
    "build_conversation": "collator",
    "supervised_positions": "collator",
}

__all__ = [
    "COLORS",
    "OPPOSITE",
    "PROMPT_TEMPLATE",
    "RELATIONS",
    "SHAPES",
    "SKIP_REASONS",
    "SceneGeometry",
    "VSRCollator",
    "VSRDataset",
    "VSRExample",
    "build_conversation",
    "build_vsr_dataset",
    "caption_for",
    "check_image",
    "generate_synthetic_vsr",
    "label_stats",
    "load_vsr_hub",
    "load_vsr_jsonl",
    "make_shape_scene",
    "parse_label",
    "relation_holds",
    "resolve_image_path",
    "sample_layout",
    "split_stats",
    "supervised_positions",
]

if TYPE_CHECKING:
    from .collator import PROMPT_TEMPLATE, VSRCollator, build_conversation, supervised_positions
    from .synthetic import (
        COLORS,
        OPPOSITE,
        RELATIONS,
        SHAPES,
        SceneGeometry,
        caption_for,
        generate_synthetic_vsr,
        label_stats,
        make_shape_scene,
        relation_holds,
        sample_layout,
        split_stats,
    )
    from .vsr import (
        SKIP_REASONS,
        VSRDataset,
        VSRExample,
        build_vsr_dataset,
        check_image,
        load_vsr_hub,
        load_vsr_jsonl,
        parse_label,
        resolve_image_path,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
