"""Seeded synthetic spatial-relation data in the VSR format.

Each example is a small PNG showing two coloured shapes on a white background, a caption such as
``"The red circle is left of the blue square."`` and a label (1 = the caption is true for the image,
0 = false).  The geometry is made unambiguous on purpose: a true directional caption has its subject
clearly on that side of the object (by a margin, and more along that axis than across it), and a false
one has the subject clearly on the *opposite* side; ``near``/``far from`` use centre distances well
below/above two separated thresholds.  Shapes never overlap, so every object stays fully visible.

The output folder looks like::

    out_dir/images/train_00000.png ...
    out_dir/train.jsonl  out_dir/validation.jsonl  out_dir/test.jsonl  out_dir/meta.json

with one JSON object per line: ``image`` (path relative to ``out_dir``), ``caption``, ``label``,
``relation``, ``subj``, ``obj``.  The same arguments always give byte-identical files.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below", "near", "far from")
"""Relations the generator can render."""

OPPOSITE: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
    "near": "far from",
    "far from": "near",
}
"""The clearly-violating counterpart of each relation (used to render false examples)."""

SYMMETRIC_RELATIONS: frozenset[str] = frozenset({"near", "far from"})

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "blue": (40, 80, 220),
    "green": (40, 170, 70),
    "yellow": (235, 200, 30),
}
"""Object colours (exact RGB values; rendering is not anti-aliased, so pixels match exactly)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
SPLITS: tuple[str, ...] = ("train", "validation", "test")
NEGATIVE_MODES: tuple[str, ...] = ("geometry", "swap")
MIN_IMAGE_SIZE = 32

Point = tuple[int, int]


@dataclass(frozen=True)
class SceneGeometry:
    """Size-dependent constants of a scene (all in pixels, derived from ``image_size``)."""

    image_size: int

    @property
    def half_size(self) -> int:
        """Half the side of an object's bounding box."""
        return max(3, round(0.09 * self.image_size))

    @property
    def min_separation(self) -> int:
        """Minimum Chebyshev distance between centres, so bounding boxes never touch."""
        return 2 * self.half_size + 2

    @property
    def direction_margin(self) -> float:
        """How far (along the relation's axis) the subject must be from the object for left/right/above/below."""
        return 0.2 * self.image_size

    @property
    def near_max(self) -> float:
        """Centre distance at or below which two objects are "near"."""
        return 0.3 * self.image_size

    @property
    def far_min(self) -> float:
        """Centre distance at or above which two objects are "far from" each other."""
        return 0.55 * self.image_size

    @property
    def coord_range(self) -> tuple[int, int]:
        """Inclusive range of centre coordinates that keeps a 1 px border around each object."""
        return self.half_size + 1, self.image_size - self.half_size - 2


def caption_for(subj: str, relation: str, obj: str) -> str:
    """The caption text, e.g. ``caption_for("red circle", "left of", "blue square")``."""
    return f"The {subj} is {relation} the {obj}."


def parse_object(name: str) -> tuple[str, str]:
    """Split ``"red circle"`` into ``("red", "circle")``, checking both parts are known."""
    parts = name.strip().split()
    if len(parts) != 2 or parts[0] not in COLORS or parts[1] not in SHAPES:
        raise ValueError(
            f"object must be '<colour> <shape>' with colour in {sorted(COLORS)} and shape in {SHAPES}; got {name!r}"
        )
    return parts[0], parts[1]


def relation_holds(relation: str, subj: Point, obj: Point, geometry: SceneGeometry) -> bool:
    """Whether ``relation`` holds *clearly* between the subject and object centres (image y grows downwards)."""
    dx = obj[0] - subj[0]  # > 0: subject is left of the object
    dy = obj[1] - subj[1]  # > 0: subject is above the object
    margin = geometry.direction_margin
    if relation == "left of":
        return dx >= margin and abs(dy) <= dx
    if relation == "right of":
        return -dx >= margin and abs(dy) <= -dx
    if relation == "above":
        return dy >= margin and abs(dx) <= dy
    if relation == "below":
        return -dy >= margin and abs(dx) <= -dy
    if relation == "near":
        return math.hypot(dx, dy) <= geometry.near_max
    if relation == "far from":
        return math.hypot(dx, dy) >= geometry.far_min
    raise ValueError(f"unknown relation {relation!r}; known: {RELATIONS}")


def sample_layout(
    relation: str, rng: random.Random, geometry: SceneGeometry, max_tries: int = 100_000
) -> tuple[Point, Point]:
    """Sample integer (subject, object) centres for which ``relation`` clearly holds and the shapes do not overlap."""
    lo, hi = geometry.coord_range
    sep = geometry.min_separation
    for _ in range(max_tries):
        subj = (rng.randint(lo, hi), rng.randint(lo, hi))
        obj = (rng.randint(lo, hi), rng.randint(lo, hi))
        if max(abs(subj[0] - obj[0]), abs(subj[1] - obj[1])) < sep:
            continue
        if relation_holds(relation, subj, obj, geometry):
            return subj, obj
    raise RuntimeError(f"could not place a {relation!r} scene at image_size={geometry.image_size}")


def draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, center: Point, half_size: int, color: tuple[int, int, int]
) -> None:
    """Draw a filled shape whose bounding box is ``center ± half_size`` (so the box centre is ``center``)."""
    cx, cy = center
    box = (cx - half_size, cy - half_size, cx + half_size, cy + half_size)
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    elif shape == "triangle":
        draw.polygon(
            [(cx, cy - half_size), (cx - half_size, cy + half_size), (cx + half_size, cy + half_size)], fill=color
        )
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def make_shape_scene(
    image_size: int,
    objects: Iterable[tuple[str, Point]],
    half_size: int | None = None,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    """Render objects given as ``("red circle", (x, y))`` pairs onto a plain RGB background."""
    if half_size is None:
        half_size = SceneGeometry(image_size).half_size
    image = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(image)
    for name, center in objects:
        color, shape = parse_object(name)
        draw_shape(draw, shape, center, half_size, COLORS[color])
    return image


def _random_object_pair(rng: random.Random) -> tuple[str, str]:
    colors = sorted(COLORS)
    subj_color, obj_color = rng.sample(colors, 2)
    return f"{subj_color} {rng.choice(SHAPES)}", f"{obj_color} {rng.choice(SHAPES)}"


def _plan_split(n: int, relations: Sequence[str]) -> list[tuple[str, int]]:
    """Relations round-robin; labels alternate within each relation, starting point staggered across relations.

    Each relation gets labels balanced within 1, and the leftovers alternate between labels across relations,
    so the split as a whole is balanced within 1 as well.
    """
    k = len(relations)
    return [(relations[i % k], 1 - ((i // k + i % k) % 2)) for i in range(n)]


def _make_row(
    relation: str,
    label: int,
    rng: random.Random,
    geometry: SceneGeometry,
    fixed: tuple[str, str] | None,
    negatives: str,
) -> tuple[dict, list[tuple[str, Point]]]:
    subj, obj = fixed if fixed is not None else _random_object_pair(rng)
    if label == 1:
        subj_c, obj_c = sample_layout(relation, rng, geometry)
        caption_subj, caption_obj = subj, obj
    elif negatives == "swap" and relation not in SYMMETRIC_RELATIONS:
        # The scene satisfies the relation for (subj, obj); the caption swaps them, which makes it false.
        subj_c, obj_c = sample_layout(relation, rng, geometry)
        caption_subj, caption_obj = obj, subj
    else:
        subj_c, obj_c = sample_layout(OPPOSITE[relation], rng, geometry)
        caption_subj, caption_obj = subj, obj
    row = {
        "caption": caption_for(caption_subj, relation, caption_obj),
        "label": label,
        "relation": relation,
        "subj": caption_subj,
        "obj": caption_obj,
    }
    return row, [(subj, subj_c), (obj, obj_c)]


def _validate_args(
    image_size: int,
    relations: Sequence[str],
    fixed_objects: Sequence[str] | None,
    negatives: str,
    counts: Sequence[int],
) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if isinstance(relations, str):
        relations = (relations,)
    relations = tuple(relations)
    if not relations:
        raise ValueError("relations must not be empty")
    unknown = [r for r in relations if r not in OPPOSITE]
    if unknown:
        raise ValueError(f"unknown relations {unknown}; known: {RELATIONS}")
    if len(set(relations)) != len(relations):
        raise ValueError(f"duplicate relations in {relations}")
    if negatives not in NEGATIVE_MODES:
        raise ValueError(f"negatives must be one of {NEGATIVE_MODES}, got {negatives!r}")
    if any(c < 0 for c in counts):
        raise ValueError(f"split sizes must be >= 0, got {tuple(counts)}")
    fixed = None
    if fixed_objects is not None:
        if len(fixed_objects) != 2:
            raise ValueError(
                f"fixed_objects must be two names like ('red circle', 'blue square'), got {fixed_objects!r}"
            )
        (c1, _), (c2, _) = parse_object(fixed_objects[0]), parse_object(fixed_objects[1])
        if c1 == c2:
            raise ValueError("fixed_objects must have different colours")
        fixed = (fixed_objects[0].strip(), fixed_objects[1].strip())
    return relations, fixed


def generate_synthetic_vsr(
    out_dir: str | os.PathLike[str],
    num_train: int = 3000,
    num_val: int = 500,
    num_test: int = 500,
    image_size: int = 64,
    seed: int = 0,
    relations: Sequence[str] = RELATIONS,
    fixed_objects: tuple[str, str] | None = None,
    negatives: str = "geometry",
    png_compress_level: int = 1,
) -> dict[str, str]:
    """Write a seeded synthetic VSR-style dataset and return ``{split: jsonl_path}``.

    Args:
        out_dir: Output folder (created). Existing files with the same names are overwritten.
        num_train, num_val, num_test: Examples in the ``train``, ``validation`` and ``test`` splits.
        image_size: Side of the square images in pixels (>= 32).
        seed: Random seed; the same arguments give byte-identical output.
        relations: Relations to use, assigned round-robin, so each split has them equally often (within 1).
            Labels are balanced within 1 per relation and per split.
        fixed_objects: If given, e.g. ``("red circle", "blue square")``, every caption uses this subject and
            object (otherwise colours and shapes are drawn at random, subject and object colours differ).
            With a single relation and ``negatives="geometry"`` every caption is the same text and the label
            depends only on the image: the "simplest honest slice".
        negatives: How false (label 0) examples are made.  ``"geometry"``: the caption is unchanged and the scene
            shows the opposite relation (for "left of": the subject is clearly right of the object).
            ``"swap"``: the scene satisfies the relation and the caption swaps subject and object; with fixed
            objects this makes the label depend only on the text (a text-only control).  Symmetric relations
            (near / far from) always use ``"geometry"``.
        png_compress_level: zlib level for the PNG files (lower is faster).

    Returns:
        Mapping from split name (``train``, ``validation``, ``test``) to the written jsonl path.
    """
    counts = (num_train, num_val, num_test)
    relations, fixed = _validate_args(image_size, relations, fixed_objects, negatives, counts)
    geometry = SceneGeometry(image_size)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)

    paths: dict[str, str] = {}
    for split, n in zip(SPLITS, counts):
        rng = random.Random(f"theworld-synthetic-vsr:{seed}:{split}")
        plan = _plan_split(n, relations)
        rng.shuffle(plan)
        jsonl_path = out / f"{split}.jsonl"
        with open(jsonl_path, "w", encoding="utf-8", newline="\n") as f:
            for i, (relation, label) in enumerate(plan):
                row, objects = _make_row(relation, label, rng, geometry, fixed, negatives)
                rel_image = f"images/{split}_{i:05d}.png"
                make_shape_scene(image_size, objects, geometry.half_size).save(
                    out / rel_image, format="PNG", compress_level=png_compress_level
                )
                f.write(json.dumps({"image": rel_image, **row}) + "\n")
        paths[split] = str(jsonl_path)
        logger.info("wrote %d %s examples to %s", n, split, jsonl_path)

    meta = {
        "generator": "theworld.data.synthetic.generate_synthetic_vsr",
        "seed": seed,
        "image_size": image_size,
        "relations": list(relations),
        "fixed_objects": list(fixed) if fixed else None,
        "negatives": negatives,
        "splits": {split: n for split, n in zip(SPLITS, counts)},
        "geometry": {
            "half_size": geometry.half_size,
            "min_separation": geometry.min_separation,
            "direction_margin": geometry.direction_margin,
            "near_max": geometry.near_max,
            "far_min": geometry.far_min,
        },
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return paths


def label_stats(labels: Iterable[int], relations: Iterable[str | None] | None = None) -> dict:
    """Counts per label (and per relation and label), plus the majority label and its rate.

    Returns ``{"n", "labels": {0: .., 1: ..}, "majority_label", "majority_rate", "relations": {rel: {0: .., 1: ..}}}``.
    ``majority_rate`` is the accuracy of always answering the majority label (0.0 for no examples).
    """
    labels = list(labels)
    rels = list(relations) if relations is not None else [None] * len(labels)
    if len(rels) != len(labels):
        raise ValueError("labels and relations must have the same length")
    counts = {0: 0, 1: 0}
    per_relation: dict[str, dict[int, int]] = {}
    for label, rel in zip(labels, rels):
        counts[label] = counts.get(label, 0) + 1
        if rel is not None:
            per_relation.setdefault(rel, {0: 0, 1: 0})
            per_relation[rel][label] = per_relation[rel].get(label, 0) + 1
    n = len(labels)
    majority_label = max(counts, key=lambda k: (counts[k], -k)) if n else None
    return {
        "n": n,
        "labels": counts,
        "majority_label": majority_label,
        "majority_rate": counts[majority_label] / n if n else 0.0,
        "relations": dict(sorted(per_relation.items())),
    }


def split_stats(jsonl_path: str | os.PathLike[str]) -> dict:
    """:func:`label_stats` of a jsonl split file (rows need ``label``; ``relation`` is optional)."""
    labels: list[int] = []
    relations: list[str | None] = []
    with open(jsonl_path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            row = json.loads(line)
            labels.append(int(row["label"]))
            relations.append(row.get("relation"))
    return label_stats(labels, relations)


def main(argv: Sequence[str] | None = None) -> dict[str, str]:
    """Command-line entry: ``python -m theworld.data.synthetic OUT_DIR [--num-train N ...]``."""
    parser = argparse.ArgumentParser(description="Generate a synthetic VSR-style spatial-relations dataset.")
    parser.add_argument("out_dir")
    parser.add_argument("--num-train", type=int, default=3000)
    parser.add_argument("--num-val", type=int, default=500)
    parser.add_argument("--num-test", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relations", default=",".join(RELATIONS), help="comma-separated, e.g. 'left of,above'")
    parser.add_argument("--fixed-objects", default=None, help="comma-separated pair, e.g. 'red circle,blue square'")
    parser.add_argument("--negatives", choices=NEGATIVE_MODES, default="geometry")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fixed = tuple(s.strip() for s in args.fixed_objects.split(",")) if args.fixed_objects else None
    paths = generate_synthetic_vsr(
        args.out_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=args.num_test,
        image_size=args.image_size,
        seed=args.seed,
        relations=tuple(r.strip() for r in args.relations.split(",") if r.strip()),
        fixed_objects=fixed,  # type: ignore[arg-type]
        negatives=args.negatives,
    )
    for split, path in paths.items():
        logger.info("%s: %s", split, json.dumps(split_stats(path)))
    return paths


if __name__ == "__main__":
    main()
