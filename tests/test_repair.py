"""``check-data --fix OUT``: one test per repairable defect; the copy passes check-data and the
originals are untouched; unrepairable files are listed and left out."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import _cases as C
import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.data import check_data, load_dataset_spec, read_mask
from segtune.errors import RunError
from segtune.repair import fix_dataset

H, W = C.H, C.W


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _fix_and_check(root: Path, out: Path) -> tuple[object, object]:
    before = _tree_hash(root)
    report = fix_dataset(root, out, progress=False)
    assert _tree_hash(root) == before  # the originals are only read
    checked = check_data(out, progress=False)
    assert checked.ok, checked.format()
    assert json.loads((out / "repair.json").read_text())["pairs"] == report.pairs
    return report, checked


def test_broken_data_fails_check_but_its_fixed_copy_passes(tmp_path: Path) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "small.png", seed=1)
    C.write_mask(tm / "small.png", C.label_mask(H // 2, W // 2))  # half resolution, same aspect
    assert not check_data(root, progress=False).ok
    report, checked = _fix_and_check(root, tmp_path / "fixed")
    m = np.asarray(Image.open(tmp_path / "fixed/train/masks/small.png"))
    assert m.shape == (H, W) and np.array_equal(m, C.label_mask(H, W))  # nearest neighbour, labels intact
    assert any("resized 24x20 -> 48x40 (nearest neighbour)" in a for f, a in report.repaired if "small" in f)
    assert checked.pairs["train"] and len(checked.pairs["train"]) == 4 and report.not_repaired == []


def test_other_aspect_ratio_and_bad_values_are_listed_not_copied(tmp_path: Path) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "squashed.png", seed=1)
    C.write_mask(tm / "squashed.png", C.label_mask(H, W // 2))  # aspect differs by 2x
    C.write_image(ti / "values.png", seed=2)
    C.write_mask(tm / "values.png", C.label_mask(value=7))
    C.write_image(ti / "lonely.png", seed=3)
    report, checked = _fix_and_check(root, tmp_path / "fixed")
    listed = {Path(p.path).name: p.message for p in report.not_repaired}
    assert "aspect ratios differ by more than 1%" in listed["squashed.png"]
    assert "mask values [7]" in listed["values.png"] and "has no mask" in listed["lonely.png"]
    assert not (tmp_path / "fixed/train/images/squashed.png").exists()
    assert len(checked.pairs["train"]) == 3
    assert "not repairable" in report.format() and "squashed.png" in report.format()


def test_jpeg_mask_snapped_and_saved_as_png(tmp_path: Path) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "lossy.png", seed=1)
    yy, xx = np.indices((H, W))
    C.write_mask(tm / "lossy.jpg", ((yy // 4 + xx // 4) % 2).astype(np.uint8), fmt="JPEG")
    spec = load_dataset_spec(root)
    snapped = read_mask(tm / "lossy.jpg", spec)
    report, _ = _fix_and_check(root, tmp_path / "fixed")
    out = tmp_path / "fixed/train/masks/lossy.png"
    assert np.array_equal(np.asarray(Image.open(out)), snapped) and not out.with_suffix(".jpg").exists()
    assert any("JPEG mask" in a and "saved as PNG" in a for f, a in report.repaired if "lossy" in f)


def test_exif_rotated_image_and_raw_size_mask_both_turned(tmp_path: Path) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    stored = C.image_array(H, W, 8)
    C.exif_jpeg(ti / "turned.jpg", stored, orientation=6)  # displayed W x H swapped
    raw_mask = C.label_mask(H, W)
    C.write_mask(tm / "turned.png", raw_mask)  # matches the image as stored, not as displayed
    report, _ = _fix_and_check(root, tmp_path / "fixed")
    img = Image.open(tmp_path / "fixed/train/images/turned.png")
    mask = np.asarray(Image.open(tmp_path / "fixed/train/masks/turned.png"))
    assert img.size == (H, W) and mask.shape == (W, H)
    assert np.array_equal(mask, np.asarray(Image.fromarray(raw_mask).transpose(Image.Transpose.ROTATE_270)))
    assert {a.split(",")[0] for f, a in report.repaired if "turned" in f} >= {"EXIF orientation 6 applied"}


def test_rgb_masks_converted_to_index_masks(tmp_path: Path) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "colour.png", seed=1)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[: H // 2, : W // 2] = (255, 0, 0)  # class fg's colour in dataset.yaml
    C.write_mask(tm / "colour.png", rgb)
    report, _ = _fix_and_check(root, tmp_path / "fixed")
    out = Image.open(tmp_path / "fixed/train/masks/colour.png")
    assert out.mode == "L" and np.array_equal(np.asarray(out), C.label_mask(H, W))
    assert any("colour mask converted to class indices" in a for f, a in report.repaired if "colour" in f)
    assert load_dataset_spec(tmp_path / "fixed").mask_format == "index"


def test_existing_or_inner_out_refused_and_cli_writes_a_checked_copy(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "small.png", seed=1)
    C.write_mask(tm / "small.png", C.label_mask(H // 2, W // 2))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(RunError, match="already exists"):
        fix_dataset(root, tmp_path / "taken", progress=False)
    with pytest.raises(RunError, match="inside the data set"):
        fix_dataset(root, root / "fixed", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "taken"]  # no temporary left behind
    assert main(["check-data", str(root), "--fix", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "wrote a repaired copy" in out and "checked in" in out and "OK" in out
    assert main(["check-data", str(root), "--fix", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_fix_of_a_standard_layout_gives_a_plain_index_copy(tmp_path: Path) -> None:
    from test_formats import H as FH
    from test_formats import W as FW
    from test_formats import _blocks, make_cityscapes

    root = make_cityscapes(tmp_path / "cityscapes")
    report, checked = _fix_and_check(root, tmp_path / "fixed")
    assert report.pairs == {"train": 2, "val": 1} and report.not_repaired == []
    spec = load_dataset_spec(tmp_path / "fixed")
    assert spec.format == "" and spec.label_map is None and spec.num_classes == 19
    masks = sorted((tmp_path / "fixed/train/masks").iterdir())
    assert [m.name for m in masks] == ["aachen_000000_000019_leftImg8bit.png", "bochum_000001_000019_leftImg8bit.png"]
    assert np.array_equal(np.asarray(Image.open(masks[0])), _blocks([0, 13, 255, 255]))  # train ids
    assert checked.class_table()[13]["pixels"] == 2 * FH * (FW // 4)  # one car band in each train mask


def test_fix_on_real_camvid_masks_resized_jpeg_and_rgb(camvid_small: Path, tmp_path: Path) -> None:
    """Three real CamVid masks damaged the usual ways (half resolution, JPEG, RGB colours): check-data
    refuses the half-resolution one, the fixed copy passes and stays close to the true labels."""
    spec = load_dataset_spec(camvid_small)
    ann = camvid_small / "trainannot"
    names = sorted(p.name for p in ann.iterdir())[:3]
    truth = {n: np.asarray(Image.open(ann / n)) for n in names}
    h, w = truth[names[0]].shape
    for n in names:
        (ann / n).unlink()  # the fixture's symlinks: the shared originals stay untouched
    Image.fromarray(truth[names[0]]).resize((w // 2, h // 2), Image.Resampling.NEAREST).save(ann / names[0])
    Image.fromarray(truth[names[1]]).save(ann / (Path(names[1]).stem + ".jpg"), quality=90)
    lut = np.array([*spec.colors, (0, 0, 0)], np.uint8)  # 11 = unlabelled -> ignore_color black
    Image.fromarray(lut[truth[names[2]]]).save(ann / names[2])
    (camvid_small / "dataset.yaml").write_text(
        (camvid_small / "dataset.yaml").read_text().replace("mask_format: index", "mask_format: auto\nignore_color: [0, 0, 0]")
    )
    assert not check_data(camvid_small, progress=False).ok
    report, checked = _fix_and_check(camvid_small, tmp_path / "fixed")
    assert report.pairs == {"train": 4, "val": 2} and report.not_repaired == []
    out = {n: np.asarray(Image.open(tmp_path / "fixed/train/masks" / (Path(n).stem + ".png"))) for n in names}
    assert out[names[0]].shape == (h, w) and (out[names[0]] == truth[names[0]]).mean() > 0.9
    raw = np.asarray(Image.open(ann / (Path(names[1]).stem + ".jpg")))
    agree = (out[names[1]] == truth[names[1]]).mean()  # JPEG blurs neighbouring class ids: not all come back
    assert agree > 0.9 and agree >= (raw == truth[names[1]]).mean()
    assert set(np.unique(out[names[1]]).tolist()) <= set(range(12))
    assert np.array_equal(out[names[2]], truth[names[2]])
