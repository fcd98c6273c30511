"""Tests for theworld.data: the synthetic generator and the VSR loaders (real files, no mocks)."""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

try:
    import theworld.data  # noqa: F401
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from theworld.data import (  # noqa: E402
    COLORS,
    RELATIONS,
    SceneGeometry,
    VSRDataset,
    generate_synthetic_vsr,
    load_vsr_hub,
    load_vsr_jsonl,
    parse_label,
    split_stats,
)

IMAGE_SIZE = 64


def read_rows(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def object_box(pixels: np.ndarray, name: str) -> tuple[float, float, int, int]:
    """(centre x, centre y, width, height) of the bounding box of the object's colour in the image."""
    color = np.array(COLORS[name.split()[0]], dtype=np.uint8)
    ys, xs = np.nonzero(np.all(pixels == color, axis=-1))
    assert xs.size > 0, f"no {name} pixels"
    return (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2, int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1


def judge_from_pixels(out_dir: Path, row: dict) -> bool:
    """Decide the caption's truth from the rendered pixels only, asserting the scene is unambiguous."""
    pixels = np.asarray(Image.open(out_dir / row["image"]).convert("RGB"))
    sx, sy, sw, sh = object_box(pixels, row["subj"])
    ox, oy, ow, oh = object_box(pixels, row["obj"])
    full = 2 * SceneGeometry(IMAGE_SIZE).half_size + 1
    assert (sw, sh, ow, oh) == (full, full, full, full), "objects must be fully visible"
    relation = row["relation"]
    if relation in ("left of", "right of", "above", "below"):
        horizontal = relation in ("left of", "right of")
        along = (ox - sx) if horizontal else (oy - sy)  # > 0: subject left of / above the object
        across = (oy - sy) if horizontal else (ox - sx)
        assert abs(along) >= 0.15 * IMAGE_SIZE, f"ambiguous scene {row}"
        assert abs(across) <= abs(along), f"ambiguous scene {row}"
        return along > 0 if relation in ("left of", "above") else along < 0
    distance = math.hypot(ox - sx, oy - sy)
    assert distance < 0.35 * IMAGE_SIZE or distance > 0.5 * IMAGE_SIZE, f"ambiguous distance {distance} {row}"
    is_near = distance < 0.42 * IMAGE_SIZE
    return is_near if relation == "near" else not is_near


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("synthetic")
    paths = generate_synthetic_vsr(out, num_train=240, num_val=61, num_test=59, image_size=IMAGE_SIZE, seed=3)
    return out, paths


# --------------------------------------------------------------------------- generator


def test_generator_writes_splits_and_rows(synthetic: tuple[Path, dict[str, str]]) -> None:
    out, paths = synthetic
    assert set(paths) == {"train", "validation", "test"}
    assert [len(read_rows(paths[s])) for s in ("train", "validation", "test")] == [240, 61, 59]
    for row in read_rows(paths["validation"]):
        assert set(row) == {"image", "caption", "label", "relation", "subj", "obj"}
        assert row["caption"] == f"The {row['subj']} is {row['relation']} the {row['obj']}."
        assert row["label"] in (0, 1) and row["relation"] in RELATIONS
        assert not os.path.isabs(row["image"])
        with Image.open(out / row["image"]) as im:
            assert im.size == (IMAGE_SIZE, IMAGE_SIZE)


def test_generator_is_deterministic(tmp_path: Path) -> None:
    kwargs = dict(num_train=30, num_val=12, num_test=12, image_size=48)
    a = generate_synthetic_vsr(tmp_path / "a", seed=7, **kwargs)
    b = generate_synthetic_vsr(tmp_path / "b", seed=7, **kwargs)
    c = generate_synthetic_vsr(tmp_path / "c", seed=8, **kwargs)
    for split in a:
        assert Path(a[split]).read_bytes() == Path(b[split]).read_bytes()
    images_a = sorted((tmp_path / "a" / "images").iterdir())
    assert len(images_a) == 54
    for image in images_a:
        assert image.read_bytes() == (tmp_path / "b" / "images" / image.name).read_bytes()
    assert Path(a["train"]).read_bytes() != Path(c["train"]).read_bytes()
    differing = [p.name for p in images_a if p.read_bytes() != (tmp_path / "c" / "images" / p.name).read_bytes()]
    assert len(differing) > 40


def test_labels_balanced_per_split_and_relation(synthetic: tuple[Path, dict[str, str]]) -> None:
    _, paths = synthetic
    for path in paths.values():
        stats = split_stats(path)
        assert abs(stats["labels"][0] - stats["labels"][1]) <= 1
        assert stats["majority_rate"] <= 0.5 + 1 / stats["n"] + 1e-9
        assert set(stats["relations"]) == set(RELATIONS)
        per_relation = [c[0] + c[1] for c in stats["relations"].values()]
        assert max(per_relation) - min(per_relation) <= 1
        for counts in stats["relations"].values():
            assert abs(counts[0] - counts[1]) <= 1


def test_captions_match_rendered_geometry(synthetic: tuple[Path, dict[str, str]]) -> None:
    out, paths = synthetic
    rows = read_rows(paths["train"])
    for row in rows:
        assert judge_from_pixels(out, row) == bool(row["label"]), row


def test_single_relation_fixed_objects_slice(tmp_path: Path) -> None:
    paths = generate_synthetic_vsr(
        tmp_path,
        num_train=41,
        num_val=10,
        num_test=10,
        relations=("left of",),
        fixed_objects=("red circle", "blue square"),
        seed=1,
    )
    rows = read_rows(paths["train"])
    assert {r["caption"] for r in rows} == {"The red circle is left of the blue square."}
    assert {(r["subj"], r["obj"], r["relation"]) for r in rows} == {("red circle", "blue square", "left of")}
    assert sorted(split_stats(paths["train"])["labels"].values()) == [20, 21]
    for row in rows:
        pixels = np.asarray(Image.open(tmp_path / row["image"]).convert("RGB"))
        red_x = object_box(pixels, "red circle")[0]
        blue_x = object_box(pixels, "blue square")[0]
        assert (red_x < blue_x) == bool(row["label"])
        assert judge_from_pixels(tmp_path, row) == bool(row["label"])


def test_swap_negatives_keep_the_image_fixed_and_change_the_caption(tmp_path: Path) -> None:
    paths = generate_synthetic_vsr(
        tmp_path,
        num_train=20,
        num_val=0,
        num_test=0,
        relations=("left of",),
        fixed_objects=("red circle", "blue square"),
        negatives="swap",
    )
    rows = read_rows(paths["train"])
    assert read_rows(paths["test"]) == []
    captions = {r["label"]: r["caption"] for r in rows}
    assert captions == {
        1: "The red circle is left of the blue square.",
        0: "The blue square is left of the red circle.",
    }
    for row in rows:
        pixels = np.asarray(Image.open(tmp_path / row["image"]).convert("RGB"))
        assert object_box(pixels, "red circle")[0] < object_box(pixels, "blue square")[0]
        assert judge_from_pixels(tmp_path, row) == bool(row["label"])


def test_generator_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_vsr(tmp_path, num_train=2, relations=("inside",))
    with pytest.raises(ValueError):
        generate_synthetic_vsr(tmp_path, num_train=2, fixed_objects=("red circle", "red square"))
    with pytest.raises(ValueError):
        generate_synthetic_vsr(tmp_path, num_train=2, fixed_objects=("purple circle", "red square"))
    with pytest.raises(ValueError):
        generate_synthetic_vsr(tmp_path, num_train=2, image_size=16)


# --------------------------------------------------------------------------- loaders


def save_image(path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0], channels) if channels else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path, format=fmt)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_synthetic_output_loads_cleanly(synthetic: tuple[Path, dict[str, str]]) -> None:
    _, paths = synthetic
    ds = load_vsr_jsonl(paths["validation"])
    assert len(ds) == 61 and ds.num_skipped == 0
    summary = ds.summary()
    assert summary["n"] == 61 and sum(summary["labels"].values()) == 61
    assert summary["skipped"] == {k: 0 for k in summary["skipped"]}
    item = ds[0]
    assert item["image"].mode == "RGB" and item["image"].size == (IMAGE_SIZE, IMAGE_SIZE)
    assert item["label"] in (0, 1) and item["relation"] in RELATIONS


def test_jsonl_loader_counts_and_logs_skipped_rows(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_image(tmp_path / "good.png", (32, 24), mode="RGBA")
    save_image(tmp_path / "gray.png", (20, 20), mode="L")
    save_image(tmp_path / "tiny.png", (8, 40))
    (tmp_path / "corrupt.png").write_bytes(b"this is not an image at all")
    save_image(tmp_path / "big.jpg", (200, 160), fmt="JPEG")
    data = (tmp_path / "big.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 3])  # header fine, pixels cut off
    rows = [
        {"image": "good.png", "caption": "A is left of B.", "label": 1, "relation": "left of", "subj": "A"},
        {"image": "gray.png", "caption": "A is above B.", "label": "False"},
        {"image": "good.png", "caption": "B is left of A.", "label": False, "relation": "left of"},
        {"image": "missing.png", "caption": "x", "label": 1},
        {"image": "tiny.png", "caption": "x", "label": 0},
        {"image": "corrupt.png", "caption": "x", "label": 1},
        {"image": "truncated.jpg", "caption": "x", "label": "true"},
        {"image": "good.png", "caption": "x", "label": 2},
        {"image": "good.png", "caption": "x", "label": "maybe"},
        {"image": "good.png", "caption": "x"},
        {"image": "good.png", "label": 1},
    ]
    jsonl = write_jsonl(tmp_path / "data.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="theworld.data.vsr"):
        ds = load_vsr_jsonl(jsonl)
    assert isinstance(ds, VSRDataset)
    assert len(ds) == 3
    assert ds.labels == [1, 0, 0]
    assert ds.skipped == {
        "missing_image": 1,
        "unreadable_image": 2,
        "too_small": 1,
        "bad_label": 3,
        "bad_row": 1,
    }
    reasons = {(r, os.path.basename(w) if isinstance(w, str) else None) for r, w in ds.skipped_examples}
    assert ("missing_image", "missing.png") in reasons
    assert ("too_small", "tiny.png") in reasons
    assert ("unreadable_image", "corrupt.png") in reasons
    assert ("unreadable_image", "truncated.jpg") in reasons
    bad_labels = [w["label"] if "label" in w else None for r, w in ds.skipped_examples if r == "bad_label"]
    assert bad_labels == [2, "maybe", None]

    warnings = [rec for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "skipped 8 of 11 rows" in message and "unreadable_image=2" in message and "bad_label=3" in message

    item = ds[1]
    assert item["image"].mode == "RGB" and item["image"].size == (20, 20)
    assert item["caption"] == "A is above B." and item["label"] == 0 and item["relation"] is None
    assert ds[0]["image"].mode == "RGB" and ds[0]["relation"] == "left of"
    assert ds.examples[0].meta["subj"] == "A"

    # Only decoding the pixels catches the truncated JPEG; the header alone looks fine.
    header_only = load_vsr_jsonl(jsonl, decode_check=False)
    assert header_only.skipped["unreadable_image"] == 1
    assert any(ex.image_path.endswith("truncated.jpg") for ex in header_only.examples)

    summary = ds.summary()
    assert summary["n"] == 3 and summary["labels"] == {0: 2, 1: 1}
    assert summary["majority_label"] == 0 and summary["majority_rate"] == pytest.approx(2 / 3)
    assert summary["num_skipped"] == 8


def test_min_image_size_is_configurable(tmp_path: Path) -> None:
    save_image(tmp_path / "img.png", (20, 30))
    jsonl = write_jsonl(tmp_path / "d.jsonl", [{"image": "img.png", "caption": "x", "label": 1}])
    assert len(load_vsr_jsonl(jsonl)) == 1
    assert load_vsr_jsonl(jsonl, min_image_size=25).skipped["too_small"] == 1


def test_image_link_resolves_to_file_name_in_image_dir(tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    (coco / "val2017").mkdir(parents=True)
    save_image(coco / "000000000285.jpg", (40, 30), fmt="JPEG")
    save_image(coco / "val2017" / "000000000139.jpg", (40, 30), fmt="JPEG")
    rows = [
        {"image_link": "http://images.cocodataset.org/train2017/000000000285.jpg", "caption": "x", "label": 1},
        {"image_link": "http://images.cocodataset.org/val2017/000000000139.jpg", "caption": "y", "label": 0},
        {"image_link": "http://images.cocodataset.org/train2017/000000000999.jpg", "caption": "z", "label": 0},
    ]
    jsonl = write_jsonl(tmp_path / "rows.jsonl", rows)
    ds = load_vsr_jsonl(jsonl, image_dir=coco)
    assert [ex.image_path for ex in ds.examples] == [
        str(coco / "000000000285.jpg"),
        str(coco / "val2017" / "000000000139.jpg"),
    ]
    assert ds.skipped_examples == [("missing_image", str(coco / "000000000999.jpg"))]
    assert ds[0]["image"].size == (40, 30)


def hub_rows() -> list[dict]:
    base = "http://images.cocodataset.org/train2017/"
    rows = []
    for i, (label, relation) in enumerate([(1, "left of"), (0, "above"), (1, "near"), (0, "left of")]):
        name = f"{i:012d}.jpg"
        rows.append(
            {
                "image": name,
                "image_link": base + name,
                "caption": f"The cat is {relation} the dog {i}.",
                "label": label,
                "relation": relation,
                "subj": "cat",
                "obj": "dog",
            }
        )
    return rows


def test_hub_loader_on_local_dataset_folder(tmp_path: Path) -> None:
    from datasets import Dataset

    images = tmp_path / "images"
    images.mkdir()
    rows = hub_rows()
    for row in rows[:3]:  # the last image is missing
        save_image(images / row["image"], (48, 32), fmt="JPEG")
    local = tmp_path / "vsr_local"
    local.mkdir()
    Dataset.from_list(rows).to_parquet(str(local / "test.parquet"))
    Dataset.from_list(rows[:2]).to_parquet(str(local / "train.parquet"))

    ds = load_vsr_hub(str(local), split="test", image_dir=images, cache_dir=str(tmp_path / "hf_cache"))
    assert len(ds) == 3 and ds.skipped["missing_image"] == 1
    assert [ex.relation for ex in ds.examples] == ["left of", "above", "near"]
    assert ds.examples[0].meta["subj"] == "cat" and ds.examples[0].meta["image_link"].endswith("000000000000.jpg")
    assert ds[2]["caption"] == "The cat is near the dog 2." and ds[2]["label"] == 1

    train = load_vsr_hub(str(local), split="train", image_dir=images, cache_dir=str(tmp_path / "hf_cache"))
    assert len(train) == 2 and train.num_skipped == 0


def test_hub_loader_with_json_builder_and_string_labels(tmp_path: Path) -> None:
    rows = hub_rows()
    for row in rows:
        save_image(tmp_path / row["image"], (32, 32), fmt="JPEG")
        row["label"] = "True" if row["label"] else "False"
    jsonl = write_jsonl(tmp_path / "vsr.jsonl", rows)
    ds = load_vsr_hub(
        "json", split="test", image_dir=tmp_path, data_files={"test": str(jsonl)}, cache_dir=str(tmp_path / "c")
    )
    assert ds.labels == [1, 0, 1, 0] and ds.num_skipped == 0


def test_hub_loader_needs_image_dir_for_hub_ids() -> None:
    with pytest.raises(ValueError, match="image_dir"):
        load_vsr_hub("cambridgeltl/vsr_random", split="test")


def test_parse_label() -> None:
    valid = [(0, 0), (1, 1), (True, 1), (False, 0), ("1", 1), (" TRUE ", 1), ("false", 0), (1.0, 1), (np.int64(1), 1)]
    assert [parse_label(v) for v, _ in valid] == [expected for _, expected in valid]
    assert [parse_label(v) for v in (2, -1, 0.5, "yes", None, "", float("nan"), [1])] == [None] * 8


def test_dataset_works_with_dataloader(synthetic: tuple[Path, dict[str, str]]) -> None:
    from torch.utils.data import DataLoader

    _, paths = synthetic
    ds = load_vsr_jsonl(paths["test"])
    batches = list(DataLoader(ds, batch_size=8, collate_fn=list))
    assert sum(len(b) for b in batches) == len(ds) == 59
    assert all(isinstance(item["image"], Image.Image) for b in batches for item in b)


def test_public_names_resolve() -> None:
    import theworld.data as data

    assert sorted(data.__all__) == sorted(data._EXPORTS)
    for name in data.__all__:
        assert getattr(data, name) is not None
