"""Loaders for VSR-style (image, caption, 0/1 label) data, from jsonl files or through ``datasets``.

Rows whose image is missing, unreadable or too small, or whose label is not 0/1, are *not* silently
dropped: they are counted per reason in :attr:`VSRDataset.skipped`, kept in
:attr:`VSRDataset.skipped_examples`, and reported with one ``logger.warning``.

Row format (one JSON object / dataset row):

* ``image`` (a path, relative to ``image_dir`` unless absolute) or ``image_link`` (a URL; its file name is
  looked up in ``image_dir``, then in ``image_dir/<URL parent folder>``, e.g. ``train2017/``);
* ``caption`` (str), ``label`` (0/1, bool, or "0"/"1"/"true"/"false" in any case);
* optional ``relation``; every other field is kept in :attr:`VSRExample.meta`.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import posixpath
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from PIL import Image
from torch.utils.data import Dataset

from .synthetic import label_stats

logger = logging.getLogger(__name__)

SKIP_REASONS: tuple[str, ...] = ("missing_image", "unreadable_image", "too_small", "bad_label", "bad_row")
"""Reasons a row can be skipped.  ``bad_row``: not a mapping, no usable caption, or no image field."""

_RESERVED_FIELDS = frozenset({"caption", "label", "relation"})
_META_TYPES = (str, int, float, bool, type(None), list, tuple, dict)


@dataclass
class VSRExample:
    """One validated example; the image is loaded only when the dataset is indexed."""

    image_path: str
    caption: str
    label: int
    relation: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class VSRDataset(Dataset):
    """A ``torch`` dataset of :class:`VSRExample` whose items are dicts with the image loaded as RGB.

    Attributes:
        examples: The kept examples, in input order.
        skipped: Count per reason in :data:`SKIP_REASONS` (all keys present).
        skipped_examples: ``(reason, image_path)`` for image problems, ``(reason, row)`` for label/row problems.
        source: Where the rows came from (for messages).
    """

    def __init__(
        self,
        examples: Iterable[VSRExample],
        skipped: Mapping[str, int] | None = None,
        skipped_examples: Iterable[tuple[str, Any]] | None = None,
        source: str | None = None,
    ) -> None:
        self.examples: list[VSRExample] = list(examples)
        self.skipped: dict[str, int] = dict.fromkeys(SKIP_REASONS, 0)
        self.skipped.update(skipped or {})
        self.skipped_examples: list[tuple[str, Any]] = list(skipped_examples or [])
        self.source = source

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[index]
        with Image.open(ex.image_path) as im:
            image = im.convert("RGB")
        return {
            "image": image,
            "caption": ex.caption,
            "label": ex.label,
            "relation": ex.relation,
            "image_path": ex.image_path,
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    @property
    def labels(self) -> list[int]:
        """Labels of the kept examples, in order."""
        return [ex.label for ex in self.examples]

    @property
    def num_skipped(self) -> int:
        """Total number of skipped rows."""
        return sum(self.skipped.values())

    def summary(self) -> dict[str, Any]:
        """Counts: ``n``, ``labels`` {0, 1}, ``majority_label``, ``majority_rate``, ``relations``, ``skipped``, ``num_skipped``."""
        stats = label_stats(self.labels, [ex.relation for ex in self.examples])
        stats["skipped"] = dict(self.skipped)
        stats["num_skipped"] = self.num_skipped
        stats["source"] = self.source
        return stats

    def __repr__(self) -> str:
        return f"VSRDataset(n={len(self)}, skipped={self.num_skipped}, source={self.source!r})"


def parse_label(value: Any) -> int | None:
    """Return 0/1 for 0/1 ints or floats, bools and "0"/"1"/"true"/"false" strings; ``None`` otherwise."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return int(value) if value in (0, 1) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true"):
            return 1
        if text in ("0", "false"):
            return 0
    return None


def _url_parts(url: str) -> tuple[str, str]:
    """(parent folder name, file name) of a URL's path."""
    path = urlparse(url).path
    return posixpath.basename(posixpath.dirname(path)), posixpath.basename(path)


def resolve_image_path(row: Mapping[str, Any], image_dir: str | os.PathLike[str]) -> str | None:
    """The image path for a row, or ``None`` if the row names no image.

    ``image`` wins over ``image_link``.  Candidates are tried in order and the first existing file is returned;
    if none exists, the first candidate is returned (so it can be reported as missing).
    """
    image_dir = os.fspath(image_dir)
    candidates: list[str] = []
    image = row.get("image")
    if isinstance(image, str) and image:
        if "://" in image:
            parent, name = _url_parts(image)
            candidates.append(os.path.join(image_dir, name))
            if parent:
                candidates.append(os.path.join(image_dir, parent, name))
        else:
            candidates.append(image if os.path.isabs(image) else os.path.join(image_dir, image))
    link = row.get("image_link")
    if isinstance(link, str) and link:
        parent, name = _url_parts(link)
        if name:
            candidates.append(os.path.join(image_dir, name))
            if parent:
                candidates.append(os.path.join(image_dir, parent, name))
    if not candidates:
        return None
    for path in candidates:
        if os.path.isfile(path):
            return path
    return candidates[0]


def check_image(path: str, min_image_size: int = 16, decode: bool = True) -> str | None:
    """Return a skip reason for an image file, or ``None`` if it is usable.

    Opens the header (``unreadable_image`` if that fails), checks both sides against ``min_image_size``
    (``too_small``), and with ``decode`` decodes the pixels (JPEGs at reduced scale, which is cheap) so that
    truncated or corrupt files are caught here rather than in ``__getitem__``.
    """
    if not os.path.isfile(path):
        return "missing_image"
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width < min_image_size or height < min_image_size:
                return "too_small"
            if decode:
                im.draft(None, (max(1, width // 8), max(1, height // 8)))
                im.load()
    except Exception:  # any failure to open or decode makes the file unusable
        logger.debug("cannot read image %s", path, exc_info=True)
        return "unreadable_image"
    return None


def _meta(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in _RESERVED_FIELDS and isinstance(v, _META_TYPES)}


def build_vsr_dataset(
    rows: Iterable[Any],
    image_dir: str | os.PathLike[str],
    min_image_size: int = 16,
    decode_check: bool = True,
    source: str | None = None,
) -> VSRDataset:
    """Validate rows (mappings) into a :class:`VSRDataset`, counting and logging every skipped row.

    Checks, in order: row shape and caption (``bad_row``), label (``bad_label``), then the image
    (``missing_image``, ``unreadable_image``, ``too_small``).  Each image file is checked once.
    """
    examples: list[VSRExample] = []
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    skipped_examples: list[tuple[str, Any]] = []
    checked: dict[str, str | None] = {}
    n_rows = 0

    def skip(reason: str, what: Any) -> None:
        skipped[reason] += 1
        skipped_examples.append((reason, what))

    for row_index, row in enumerate(rows):
        n_rows += 1
        if not isinstance(row, Mapping):
            skip("bad_row", row)
            continue
        caption = row.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            skip("bad_row", dict(row))
            continue
        label = parse_label(row.get("label"))
        if label is None:
            skip("bad_label", dict(row))
            continue
        path = resolve_image_path(row, image_dir)
        if path is None:
            skip("bad_row", dict(row))
            continue
        if path not in checked:
            checked[path] = check_image(path, min_image_size, decode_check)
        reason = checked[path]
        if reason is not None:
            skip(reason, path)
            continue
        relation = row.get("relation")
        meta = _meta(row)
        meta["row_index"] = row_index
        examples.append(
            VSRExample(
                image_path=path,
                caption=caption.strip(),
                label=label,
                relation=None if relation is None else str(relation),
                meta=meta,
            )
        )

    n_skipped = sum(skipped.values())
    if n_skipped:
        reasons = ", ".join(f"{k}={v}" for k, v in skipped.items() if v)
        first = "; ".join(
            f"{r}: {w if isinstance(w, str) else json.dumps(w, default=str)[:200]}" for r, w in skipped_examples[:3]
        )
        logger.warning(
            "VSR data %s: skipped %d of %d rows (%s); kept %d. First skipped: %s",
            source,
            n_skipped,
            n_rows,
            reasons,
            len(examples),
            first,
        )
    logger.info("VSR data %s: %d examples", source, len(examples))
    return VSRDataset(examples, skipped, skipped_examples, source)


def load_vsr_jsonl(
    jsonl_path: str | os.PathLike[str],
    image_dir: str | os.PathLike[str] | None = None,
    min_image_size: int = 16,
    decode_check: bool = True,
) -> VSRDataset:
    """Load a jsonl file of VSR rows; image paths are relative to ``image_dir`` (default: the jsonl's folder).

    Raises ``ValueError`` for a line that is not valid JSON (a broken file, not a bad example).
    """
    jsonl_path = os.fspath(jsonl_path)
    if image_dir is None:
        image_dir = os.path.dirname(os.path.abspath(jsonl_path))
    rows: list[Any] = []
    with open(jsonl_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{jsonl_path}:{lineno}: invalid JSON: {e}") from e
    return build_vsr_dataset(rows, image_dir, min_image_size, decode_check, source=jsonl_path)


def load_vsr_hub(
    dataset_name_or_path: str = "cambridgeltl/vsr_random",
    split: str = "test",
    image_dir: str | os.PathLike[str] | None = None,
    min_image_size: int = 16,
    decode_check: bool = True,
    **load_dataset_kwargs: Any,
) -> VSRDataset:
    """Load VSR rows with ``datasets.load_dataset(dataset_name_or_path, split=split, **load_dataset_kwargs)``.

    ``dataset_name_or_path`` may be a hub id, a local dataset folder, or a builder name such as ``"json"`` /
    ``"parquet"`` with ``data_files=...`` in the keyword arguments.  The hub VSR rows carry only image names,
    so ``image_dir`` (e.g. a local COCO ``train2017`` folder or its parent) is required unless
    ``dataset_name_or_path`` is a local folder, which is then the default.
    """
    from datasets import load_dataset

    if image_dir is None:
        if os.path.isdir(dataset_name_or_path):
            image_dir = dataset_name_or_path
        else:
            raise ValueError(f"image_dir is required for {dataset_name_or_path!r} (a folder holding its images)")
    ds = load_dataset(dataset_name_or_path, split=split, **load_dataset_kwargs)
    return build_vsr_dataset(ds, image_dir, min_image_size, decode_check, source=f"{dataset_name_or_path}[{split}]")
