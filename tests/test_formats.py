"""Standard layouts (VOC, Cityscapes, ADE20K), COCO JSON, binary thresholds and JPEG masks.

Each layout is a small generated folder in the real structure; the tests read it through the
normal API (``load_dataset_spec``, ``check_data``, ``read_mask``, ``segtune.train``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import segtune
from segtune.cli import main
from segtune.config import Config
from segtune.data import check_data, load_dataset_spec, read_mask
from segtune.data.pairing import split_pairs
from segtune.errors import ConfigError
from segtune.formats import LAYOUTS, detect_layouts, list_layouts
from segtune.formats.classes import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES, voc_colors

H, W = 32, 40
README = Path(__file__).resolve().parents[1] / "README.md"


def _img(path: Path, seed: int, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path, format=fmt)


def _mask(path: Path, arr: np.ndarray, palette: list[tuple[int, int, int]] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr.astype(np.uint8))
    if palette is not None:
        im = im.convert("P")
        im.putpalette([v for c in palette for v in c] + [0] * (768 - 3 * len(palette)))
    im.save(path)


def _blocks(values: list[int]) -> np.ndarray:
    """(H, W) mask of vertical bands holding ``values`` left to right."""
    m = np.zeros((H, W), np.uint8)
    for i, v in enumerate(values):
        m[:, i * W // len(values) : (i + 1) * W // len(values)] = v
    return m


def make_voc(root: Path, n: int = 4) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    stems = [f"2007_{i:06d}" for i in range(n)]
    for i, s in enumerate(stems):
        _img(voc / "JPEGImages" / f"{s}.jpg", i, "JPEG")
        _mask(voc / "SegmentationClass" / f"{s}.png", _blocks([0, 15, 255, 12 if i % 2 else 0]), voc_colors(256))
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(stems[: n - 1]) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text(stems[-1] + "\n")
    return root


def make_cityscapes(root: Path) -> Path:
    for split, city, k in (("train", "aachen", 0), ("train", "bochum", 1), ("val", "lindau", 2)):
        stem = f"{city}_{k:06d}_000019"
        _img(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", k)
        gt = root / "gtFine" / split / city
        _mask(gt / f"{stem}_gtFine_labelIds.png", _blocks([7, 26, 0, 4]))  # road, car, unlabeled, static
        _mask(gt / f"{stem}_gtFine_instanceIds.png", _blocks([7, 26, 0, 4]) * 3)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(gt / f"{stem}_gtFine_color.png")
    return root


def make_ade20k(root: Path) -> Path:
    ade = root / "ADEChallengeData2016"
    for sub, k in (("training", 1), ("training", 2), ("validation", 3)):
        stem = f"ADE_{sub[:5]}_{k:08d}"
        _img(ade / "images" / sub / f"{stem}.jpg", k, "JPEG")
        _mask(ade / "annotations" / sub / f"{stem}.png", _blocks([0, 1, 3, 150]))
    return root


# ------------------------------------------------------------------ layouts
def test_layout_registry_and_readme_names_every_layout() -> None:
    assert list_layouts() == ["voc", "cityscapes", "ade20k", "coco"]
    readme = README.read_text(encoding="utf-8")
    for name in list_layouts():
        assert f"`{name}`" in readme, name
    with pytest.raises(ConfigError, match="did you mean 'voc'"):
        LAYOUTS.get("vco")
    assert len(VOC_CLASSES) == 21 and len(CITYSCAPES_CLASSES) == 19 and len(ADE20K_CLASSES) == 150
    assert len(set(ADE20K_CLASSES)) == 150
    assert voc_colors()[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def test_voc_detected_with_split_lists_palette_and_boundary_ignore(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    assert detect_layouts(root) == ["voc"]
    spec = load_dataset_spec(root)
    assert spec.format == "voc" and spec.classes[15] == "person" and spec.ignore_index == 255
    assert {k: len(split_pairs(s)[0]) for k, s in spec.splits.items()} == {"train": 3, "val": 1}
    m = read_mask(spec.splits["val"].masks / "2007_000003.png", spec)
    assert np.array_equal(m, _blocks([0, 15, 255, 12]).astype(np.int64))
    report = check_data(spec, progress=False)
    assert report.ok, report.format()
    table = {r["name"]: r["pixels"] for r in report.class_table()}
    band = H * (W // 4)
    assert table["person"] == 3 * band and table["dog"] == band and report.ignore_pixels == 3 * band


def test_cityscapes_label_ids_mapped_to_19_train_ids(tmp_path: Path) -> None:
    root = make_cityscapes(tmp_path / "cityscapes")
    assert detect_layouts(root) == ["cityscapes"]
    spec = load_dataset_spec(root)
    assert spec.num_classes == 19 and spec.colors[13] == (0, 0, 142)
    pairs, problems = split_pairs(spec.splits["train"])
    assert [p[0].parent.name for p in pairs] == ["aachen", "bochum"] and problems == []
    assert all(p[1].name.endswith("_gtFine_labelIds.png") for p in pairs)
    m = read_mask(pairs[0][1], spec)
    assert np.array_equal(m, _blocks([0, 13, 255, 255]).astype(np.int64))  # road, car, ignored, ignored
    report = check_data(spec, progress=False)
    assert report.ok, report.format()
    assert report.pairs["val"] and report.class_table()[13]["pixels"] == 2 * H * (W // 4)


def test_ade20k_other_ignored_and_labels_shifted_down(tmp_path: Path) -> None:
    root = make_ade20k(tmp_path / "ade")
    assert detect_layouts(root) == ["ade20k"]
    spec = load_dataset_spec(root)
    assert spec.num_classes == 150 and spec.classes[0] == "wall"
    pairs, _ = split_pairs(spec.splits["train"])
    m = read_mask(pairs[0][1], spec)
    assert np.array_equal(m, _blocks([255, 0, 2, 149]).astype(np.int64))
    report = check_data(spec, progress=False)
    assert report.ok, report.format()


def test_named_format_with_root_and_a_split_list_in_a_plain_layout(tmp_path: Path) -> None:
    make_ade20k(tmp_path / "ade")
    yaml = tmp_path / "elsewhere" / "dataset.yaml"
    yaml.parent.mkdir()
    yaml.write_text(f"format: ade20k\nroot: {tmp_path / 'ade'}\nname: mine\n")
    spec = load_dataset_spec(yaml)
    assert spec.name == "mine" and spec.format == "ade20k" and len(split_pairs(spec.splits["val"])[0]) == 1
    yaml.write_text(f"format: voc\nroot: {tmp_path / 'ade'}\n")
    with pytest.raises(ConfigError, match="does not look like it"):
        load_dataset_spec(yaml)
    # a split list file for a plain images/ + masks/ layout: only the listed stems, missing ones warned
    plain = tmp_path / "plain"
    for i in range(4):
        _img(plain / "images" / f"{i}.png", i)
        _mask(plain / "masks" / f"{i}.png", _blocks([0, 1]))
    (plain / "train.txt").write_text("0\n2\n# comment\n\n9\n")
    (plain / "dataset.yaml").write_text("classes: [a, b]\nsplits:\n  train: {images: images, masks: masks, list: train.txt}\n")
    report = check_data(plain, progress=False)
    assert [p[0].name for p in report.pairs["train"]] == ["0.png", "2.png"]
    assert any("1 listed stem(s) have no image, e.g. 9" in str(p) for p in report.warnings)
    assert not any("has no mask" in str(p) or "has no image (skipped)" in str(p) for p in report.problems)


def test_two_layouts_in_one_folder_are_ambiguous(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "both")
    make_cityscapes(root)
    with pytest.raises(ConfigError, match="several layouts"):
        load_dataset_spec(root)


# ------------------------------------------------------------------ COCO
def _rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = mask.T.ravel().astype(np.uint8)
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return counts


def make_coco(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """CVAT-style export: annotations/instances_default.json + images/; polygon, RLE and crowd."""
    from pycocotools import mask as mu

    for i in range(2):
        _img(root / "images" / f"frame_{i}.png", i)
    dog = np.zeros((H, W), np.uint8)
    dog[4:20, 20:36] = 1
    crowd = np.zeros((H, W), np.uint8)
    crowd[24:30, 2:38] = 1
    crowd_rle = mu.encode(np.asfortranarray(crowd))
    anns = [
        # a large cat polygon (rows 2..21, cols 2..29) under a smaller dog RLE that overlaps it
        {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
         "segmentation": [[2, 2, 30, 2, 30, 22, 2, 22]]},
        {"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,
         "segmentation": {"size": [H, W], "counts": _rle_counts(dog)}},
        {"id": 3, "image_id": 1, "category_id": 3, "iscrowd": 1,
         "segmentation": {"size": [H, W], "counts": crowd_rle["counts"].decode("ascii")}},
    ]
    coco = {
        "images": [{"id": 1, "file_name": "frame_0.png", "width": W, "height": H},
                   {"id": 2, "file_name": "frame_1.png", "width": W, "height": H}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 3, "name": "person"}],
    }
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_default.json").write_text(json.dumps(coco))
    return root, {"dog": dog.astype(bool), "crowd": crowd.astype(bool)}


def test_coco_polygon_rle_and_crowd_rasterised_and_cached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, parts = make_coco(tmp_path / "export")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert detect_layouts(root) == ["coco"]
    spec = load_dataset_spec(root)
    assert spec.classes == ["background", "cat", "dog", "person"] and spec.format == "coco"
    pairs, problems = split_pairs(spec.splits["train"])
    assert [p[0].name for p in pairs] == ["frame_0.png", "frame_1.png"] and problems == []
    m = read_mask(pairs[0][1], spec)
    assert (m[parts["dog"]] == 2).all()  # the smaller dog wins where it overlaps the cat
    cat = np.zeros((H, W), bool)
    cat[2:22, 2:30] = True
    assert (m[cat & ~parts["dog"]] == 1).all() and (m[parts["crowd"]] == 3).all()
    assert (m[~(cat | parts["dog"] | parts["crowd"])] == 0).all()
    assert (read_mask(pairs[1][1], spec) == 0).all()  # listed without annotations: background
    assert check_data(spec, progress=False).ok
    # cached: a second load reuses the folder (nothing rewritten); the data set is untouched
    cache_json = spec.splits["train"].masks / "cache.json"
    stamp = cache_json.stat().st_mtime_ns
    assert load_dataset_spec(root).splits["train"].masks == spec.splits["train"].masks
    assert cache_json.stat().st_mtime_ns == stamp
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    # crowd regions as ignore: another cache entry
    (root / "dataset.yaml").write_text("format: coco\ncoco_crowd: ignore\n")
    spec2 = load_dataset_spec(root)
    assert spec2.splits["train"].masks != spec.splits["train"].masks
    m2 = read_mask(split_pairs(spec2.splits["train"])[0][0][1], spec2)
    assert (m2[parts["crowd"]] == 255).all() and (m2[parts["dog"]] == 2).all()


def test_coco_categories_missing_from_classes_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root, _ = make_coco(tmp_path / "export")
    (root / "dataset.yaml").write_text(
        "classes: [background, cat]\nsplits:\n  train: {images: images, coco: annotations/instances_default.json}\n"
    )
    with pytest.raises(ConfigError, match=r"categories \['dog', 'person'\] are not in classes"):
        load_dataset_spec(root)
    assert not (tmp_path / "cache" / "segtune" / "coco").exists() or not any(
        p.name.endswith(".tmp") for p in (tmp_path / "cache" / "segtune" / "coco").iterdir()
    )


# ------------------------------------------------------------------ binary and JPEG masks
def _jpeg_mask(path: Path, arr: np.ndarray, quality: int = 75) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), "L").save(path, format="JPEG", quality=quality)


def test_binary_threshold_on_a_jpeg_mask(tmp_path: Path, capsys) -> None:
    truth = np.zeros((H, W), np.uint8)
    truth[5:25, 8:30] = 1
    root = tmp_path / "bin"
    _img(root / "images" / "a.png", 0)
    _jpeg_mask(root / "masks" / "a.jpg", truth * 255)
    raw = np.asarray(Image.open(root / "masks" / "a.jpg")).astype(int)
    assert not np.isin(raw, [0, 255]).all()  # compression noise is there
    (root / "dataset.yaml").write_text("classes: [bg, fg]\nmask_format: binary\n")
    spec = load_dataset_spec(root)
    m = read_mask(root / "masks" / "a.jpg", spec)
    assert set(np.unique(m).tolist()) <= {0, 1}
    assert np.array_equal(m, (raw >= 128).astype(np.int64))
    assert (m == truth).mean() > 0.99
    report = check_data(spec, progress=False)
    assert report.ok
    noisy = int((~np.isin(raw, [0, 255])).sum())
    assert any(f"{noisy:,} mask pixels in 1 mask(s) of train were thresholded at binary_threshold 128" in str(p)
               for p in report.warnings), report.format()
    (root / "dataset.yaml").write_text("classes: [bg, fg]\nmask_format: binary\nbinary_threshold: 250\n")
    m250 = read_mask(root / "masks" / "a.jpg", load_dataset_spec(root))
    assert np.array_equal(m250, (raw >= 250).astype(np.int64)) and m250.sum() < m.sum()


def test_jpeg_index_mask_snapped_to_valid_values_with_count(tmp_path: Path) -> None:
    yy, xx = np.indices((H, W))
    truth = (((yy // 4 + xx // 4) % 2) * 3).astype(np.uint8)  # a 0/3 checkerboard: JPEG blurs its edges
    root = tmp_path / "idx"
    _img(root / "images" / "a.png", 0)
    _jpeg_mask(root / "masks" / "a.jpg", truth, quality=50)
    raw = np.asarray(Image.open(root / "masks" / "a.jpg")).astype(int)
    (root / "dataset.yaml").write_text("classes: [a, b, c, d]\nignore_index: 255\nmask_format: index\n")
    spec = load_dataset_spec(root)
    m = read_mask(root / "masks" / "a.jpg", spec)
    expected = np.clip(raw, 0, 3)  # the nearest of 0..3 and 255 for values below 129
    assert raw.max() < 129 and np.array_equal(m, expected)
    changed = int((raw != expected).sum())
    assert changed > 0
    report = check_data(spec, progress=False)
    assert report.ok
    assert any(f"{changed:,} mask pixels in 1 mask(s) of train were snapped" in str(p) for p in report.warnings), (
        report.format())


# ------------------------------------------------------------------ end to end
def test_train_and_check_data_cli_on_a_voc_layout(tmp_path: Path, capsys) -> None:
    root = make_voc(tmp_path / "voc", n=6)
    assert main(["check-data", str(root)]) == 0
    assert "person" in capsys.readouterr().out
    cfg = Config()
    cfg.data.root = str(root)
    cfg.data.crop_size = 32
    cfg.data.batch_size = 2
    cfg.model.encoder = "tf_efficientnet_lite0"
    cfg.model.weights = "none"
    cfg.train.out = str(tmp_path / "runs")
    cfg.train.progress = False
    cfg.train.num_overlays = 0
    cfg.train.early_stopping = 0
    cfg.train.max_steps = 2
    cfg.train.memory = 0
    cfg.optim.warmup_steps = 1
    run = segtune.train(cfg)
    assert run.metrics and 0.0 <= run.metrics["miou"] <= 1.0
    assert segtune.load(run.dir).predict(str(next((root / "VOCdevkit/VOC2012/JPEGImages").iterdir()))).shape == (H, W)


def test_jpeg_binary_masks_without_classes_and_a_yaml_beside_a_layout(tmp_path: Path) -> None:
    """The new-user case: a classic binary data set whose masks are JPEGs, with no dataset.yaml."""
    root = tmp_path / "jpegbin"
    truth = np.zeros((H, W), np.uint8)
    truth[4:20, 6:26] = 1
    for i in range(3):
        _img(root / "images" / f"{i}.png", i)
        _jpeg_mask(root / "masks" / f"{i}.jpg", truth * 255)
    spec = load_dataset_spec(root)
    assert spec.mask_format == "binary" and spec.num_classes == 2
    assert check_data(spec, progress=False).ok
    assert (read_mask(root / "masks" / "0.jpg", spec) == truth).mean() > 0.99
    (root / "dataset.yaml").write_text("mask_format: binary\n")  # binary without classes: two classes
    assert load_dataset_spec(root).classes == ["class_0", "class_1"]
    # a dataset.yaml with only a name beside a VOC folder uses the detected layout
    voc = make_voc(tmp_path / "voc")
    (voc / "dataset.yaml").write_text("name: my-voc\n")
    spec = load_dataset_spec(voc)
    assert spec.name == "my-voc" and spec.format == "voc" and set(spec.splits) == {"train", "val"}


def test_coco_split_folders_as_roboflow_exports_them(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src, _ = make_coco(tmp_path / "one")
    coco = json.loads((src / "annotations" / "instances_default.json").read_text())
    root = tmp_path / "roboflow"
    for folder, keep in (("train", 0), ("valid", 1)):
        (root / folder).mkdir(parents=True)
        (root / folder / coco["images"][keep]["file_name"]).write_bytes(
            (src / "images" / coco["images"][keep]["file_name"]).read_bytes())
        part = {**coco, "images": [coco["images"][keep]]}
        (root / folder / "_annotations.coco.json").write_text(json.dumps(part))
    spec = load_dataset_spec(root)
    assert spec.format == "coco" and set(spec.splits) == {"train", "val"}
    assert [len(split_pairs(s)[0]) for s in spec.splits.values()] == [1, 1]
    assert check_data(spec, progress=False).ok
