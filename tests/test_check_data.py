"""check_data: every problem in one pass, class frequencies and size statistics."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.data.check import DataReport, Problem, check_data
from segtune.data.spec import load_dataset_spec
from segtune.errors import ConfigError

CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"


def _img(path: Path, h: int = 40, w: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
        path
    )
    return path


def _mask(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _by_name(report: DataReport) -> dict[str, list[Problem]]:
    out: dict[str, list[Problem]] = {}
    for p in report.problems:
        out.setdefault(Path(p.path).name, []).append(p)
    return out


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    """A 3-class data set (ignore 255) with many problems at once."""
    root = tmp_path / "messy"
    (root / "dataset.yaml").parent.mkdir(parents=True)
    (root / "dataset.yaml").write_text(
        "name: messy\nclasses: [bg, cat, dog]\nignore_index: 255\nmask_format: index\n"
        "splits:\n  train: {images: train/images, masks: train/masks}\n"
        "  val: {images: val/images, masks: val/masks}\n  test: {images: test/images, masks: test/masks}\n"
    )
    ti, tm = root / "train/images", root / "train/masks"
    good = np.zeros((40, 48), np.uint8)
    good[:10] = 1
    good[-5:] = 255
    _img(ti / "good1.png", seed=1)
    _mask(tm / "good1.png", good)
    _img(ti / "good2.jpg", seed=2)
    _mask(tm / "good2.png", np.zeros((40, 48), np.uint8))
    # size mismatch
    _img(ti / "sizes.png", seed=3)
    _mask(tm / "sizes.png", np.zeros((40, 47), np.uint8))
    # values outside the classes
    bad = np.zeros((40, 48), np.uint8)
    bad[0, :3] = 7
    bad[1, :2] = 9
    _img(ti / "values.png", seed=4)
    _mask(tm / "values.png", bad)
    # truncated image
    p = _img(ti / "trunc.png", 64, 64, seed=5)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    _mask(tm / "trunc.png", np.zeros((64, 64), np.uint8))
    # zero-byte mask
    _img(ti / "emptymask.png", seed=6)
    (tm / "emptymask.png").write_bytes(b"")
    # image without mask, mask without image
    _img(ti / "lonely.png", seed=7)
    _mask(tm / "orphan.png", np.zeros((40, 48), np.uint8))
    # ambiguous stem
    _img(ti / "twice.png", seed=8)
    _img(ti / "twice.jpg", seed=8)
    _mask(tm / "twice.png", np.zeros((40, 48), np.uint8))
    # all-ignore mask (a warning, pair still usable)
    _img(ti / "allign.png", seed=9)
    _mask(tm / "allign.png", np.full((40, 48), 255, np.uint8))
    # tiny image (warning)
    _img(ti / "tiny.png", 20, 24, seed=10)
    _mask(tm / "tiny.png", np.zeros((20, 24), np.uint8))
    # 4-channel mask with varying alpha
    _img(ti / "alpha.png", seed=11)
    rgba = np.zeros((40, 48, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    _mask(tm / "alpha.png", rgba)
    # text file named .png as an image
    (ti / "text.png").write_text("not an image")
    _mask(tm / "text.png", np.zeros((40, 48), np.uint8))
    # val: one image identical to a train image (leakage) + a clean one
    vi, vm = root / "val/images", root / "val/masks"
    vi.mkdir(parents=True)
    shutil.copy(ti / "good1.png", vi / "copy_of_good1.png")
    _mask(vm / "copy_of_good1.png", good)
    _img(vi / "v1.png", 30, 50, seed=20)
    _mask(vm / "v1.png", np.full((30, 50), 2, np.uint8))
    # test: empty folders
    (root / "test/images").mkdir(parents=True)
    (root / "test/masks").mkdir(parents=True)
    return root


def test_check_data_reports_every_problem_at_once(messy):
    report = check_data(messy, progress=False)
    assert not report.ok
    by = _by_name(report)

    def one(name: str, level: str, *words: str) -> Problem:
        hits = [p for p in by.get(name, []) if p.level == level and all(w in str(p) for w in words)]
        assert hits, f"{name}: no {level} with {words}; got {[str(p) for p in by.get(name, [])]}"
        return hits[0]

    one("sizes.png", "error", "48x40", "47x40")
    one("values.png", "error", "7 (3 px)", "9 (2 px)")
    one("trunc.png", "error", "truncated")
    one("emptymask.png", "error", "empty file")
    one("lonely.png", "warning", "no mask")
    one("orphan.png", "warning", "no image")
    one("twice", "error", "ambiguous", "twice.jpg", "twice.png")
    one("allign.png", "warning", "ignore_index 255")
    one("tiny.png", "warning", "24x20")
    one("alpha.png", "error", "alpha")
    one("text.png", "error", "cannot identify")
    one("copy_of_good1.png", "warning", "leakage", "good1.png")
    one("dataset.yaml", "warning", "'dog'", "never occurs")
    one("images", "error", "no image files")  # the empty test folder
    # the "dog" class occurs only in val, so it is reported; cat occurs in train
    assert not any("'cat'" in str(p) for p in report.problems)

    # one line each, errors first
    assert all("\n" not in str(p) for p in report.problems)
    levels = [p.level for p in report.problems]
    assert levels == sorted(levels, key=lambda x: x != "error")

    # usable pairs and bad files
    train_names = sorted(i.name for i, _ in report.pairs["train"])
    assert train_names == ["allign.png", "good1.png", "good2.jpg", "tiny.png"]
    assert sorted(i.name for i, _ in report.pairs["val"]) == ["copy_of_good1.png", "v1.png"]
    assert report.pairs["test"] == []
    bad_names = {p.name for p in report.bad_files}
    assert bad_names == {
        "sizes.png",
        "values.png",
        "trunc.png",
        "emptymask.png",
        "alpha.png",
        "text.png",
    }

    # class frequencies of the usable train masks
    n_good1_cat = 10 * 48
    n_ign = 5 * 48 + 40 * 48
    total = 3 * 40 * 48 + 20 * 24
    assert report.class_pixels.dtype == np.int64
    assert report.class_pixels.tolist() == [total - n_good1_cat - n_ign, n_good1_cat, 0]
    assert report.ignore_pixels == n_ign

    # sizes: decoded images of the split (bad pairs included when the image itself decodes)
    st = report.size_stats
    assert st["val"] == {
        "count": 2,
        "width": {"min": 48, "median": 49, "max": 50},
        "height": {"min": 30, "median": 35, "max": 40},
    }
    assert st["test"] == {"count": 0}
    assert st["train"]["width"]["min"] == 24 and st["train"]["height"]["max"] == 40


def test_format_orders_problems_table_sizes(messy):
    report = check_data(messy, progress=False)
    text = report.format()
    i_prob, i_tab, i_size = (
        text.index("\nproblems:"),
        text.index("\nclass pixels"),
        text.index("\nimage sizes (pixels)"),
    )
    assert i_prob < i_tab < i_size
    assert "  error: " in text and "  warning: " in text
    assert "ignore (255)" in text and "(absent)" in text
    assert str(report) == text
    d = report.to_dict()
    assert (
        d["ok"] is False and d["pairs"]["train"] == 4 and len(d["problems"]) == len(report.problems)
    )


def test_strict_makes_orphans_errors(messy):
    report = check_data(messy, progress=False, strict=True)
    lonely = [p for p in report.problems if p.path.endswith("lonely.png")]
    assert lonely and lonely[0].level == "error"


def test_clean_dataset_is_ok_and_progress_flag_is_harmless(tmp_path):
    root = tmp_path / "clean"
    for i in range(3):
        _img(root / "images" / f"{i}.png", 33, 35, seed=i)
        m = np.zeros((33, 35), np.uint8)
        m[i:] = 1
        _mask(root / "masks" / f"{i}.png", m)
    (root / "dataset.yaml").write_text("classes: [bg, fg]\n")  # no splits: images/ + masks/ used
    report = check_data(root, progress=True)
    assert report.ok and report.problems == []
    assert report.class_pixels.sum() == 3 * 33 * 35 and report.ignore_pixels == 0
    assert report.bad_files == set() and len(report.pairs["train"]) == 3
    assert "OK" in report.format()


def test_rgb_masks_unknown_colours_reported(tmp_path):
    root = tmp_path / "rgb"
    (root).mkdir()
    (root / "dataset.yaml").write_text(
        "classes: [bg, road]\ncolors: [[0, 0, 0], [128, 64, 128]]\nmask_format: rgb\n"
        "splits: {train: {images: im, masks: mk}}\n"
    )
    ok = np.zeros((40, 40, 3), np.uint8)
    ok[20:] = (128, 64, 128)
    _img(root / "im/a.png", 40, 40)
    _mask(root / "mk/a.png", ok)
    weird = ok.copy()
    weird[0, :4] = (250, 1, 2)
    _img(root / "im/b.png", 40, 40, seed=1)
    _mask(root / "mk/b.png", weird)
    report = check_data(root, progress=False)
    assert not report.ok
    [err] = report.errors
    assert (
        err.path.endswith("b.png") and "(250, 1, 2) x 4 px" in err.message and "colors" in err.hint
    )
    assert report.class_pixels.tolist() == [800, 800]


def test_binary_masks_auto_detected_in_check(tmp_path):
    root = tmp_path / "bin"
    (root).mkdir()
    (root / "dataset.yaml").write_text(
        "classes: [background, crack]\nsplits: {train: {images: im, masks: mk}}\n"
    )
    m = np.zeros((40, 40), np.uint8)
    m[:10] = 255
    _img(root / "im/a.png", 40, 40)
    _mask(root / "mk/a.png", m)
    report = check_data(root, progress=False)
    assert report.ok
    assert report.class_pixels.tolist() == [1200, 400]
    assert any("0 and 255" in p.message and p.level == "warning" for p in report.problems)


def test_exif_rotated_image_with_unrotated_mask_is_explained(tmp_path):
    root = tmp_path / "exif"
    (root / "im").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (48, 40), (0, 0, 255)).save(root / "im/a.jpg", exif=exif.tobytes())
    _mask(root / "mk/a.png", np.zeros((40, 48), np.uint8))
    (root / "dataset.yaml").write_text(
        "classes: [a, b]\nsplits: {train: {images: im, masks: mk}}\n"
    )
    report = check_data(root, progress=False)
    [err] = report.errors
    assert "EXIF orientation (6)" in err.message and "40x48" in err.message


def test_typo_key_in_dataset_yaml(tmp_path):
    (tmp_path / "dataset.yaml").write_text(
        "classes: [a, b]\nignore_idx: 255\nsplits: {train: {images: i, masks: m}}\n"
    )
    with pytest.raises(ConfigError, match="did you mean 'ignore_index'.*valid keys: name, classes"):
        check_data(tmp_path, progress=False)


@pytest.mark.realdata
@pytest.mark.skipif(not CAMVID.is_dir(), reason="CamVid data not available")
def test_camvid_subset(tmp_path):
    src = load_dataset_spec(CAMVID)
    names = sorted(p.name for p in (CAMVID / "train").iterdir())[:3]
    vnames = sorted(p.name for p in (CAMVID / "val").iterdir())[:1]
    for split, folder, ann, picked in (
        ("train", "train", "trainannot", names),
        ("val", "val", "valannot", vnames),
    ):
        for n in picked:
            (tmp_path / split / "images").mkdir(parents=True, exist_ok=True)
            (tmp_path / split / "masks").mkdir(parents=True, exist_ok=True)
            (tmp_path / split / "images" / n).symlink_to(CAMVID / folder / n)
            (tmp_path / split / "masks" / n).symlink_to(CAMVID / ann / n)
    colors = ", ".join(f"[{r}, {g}, {b}]" for r, g, b in src.colors)
    (tmp_path / "dataset.yaml").write_text(
        f"name: camvid4\nclasses: [{', '.join(src.classes)}]\ncolors: [{colors}]\nignore_index: 11\n"
        "mask_format: index\nsplits:\n  train: {images: train/images, masks: train/masks}\n"
        "  val: {images: val/images, masks: val/masks}\n"
    )
    report = check_data(tmp_path, progress=False)
    assert not report.errors, report.format()
    assert len(report.pairs["train"]) == 3 and len(report.pairs["val"]) == 1
    assert int(report.class_pixels.sum()) + report.ignore_pixels == 3 * 480 * 360
    assert report.class_pixels[3] > 0  # Road is everywhere in CamVid
    assert report.size_stats["train"]["width"] == {"min": 480, "median": 480, "max": 480}
    assert "Road" in report.format()


def test_collect_images_one_rule_for_predict_and_onnx_predict(tmp_path: Path) -> None:
    from segtune.data.pairing import collect_images
    from segtune.errors import DataError

    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "A.JPG", ".hidden.png", "sub/c.tif", "notes.txt"):
        Image.new("RGB", (4, 4)).save(folder / name, format="PNG")
    single = tmp_path / "single.png"
    Image.new("RGB", (4, 4)).save(single)
    got = collect_images([folder, single])
    assert [p.relative_to(tmp_path).as_posix() for p in got] == ["imgs/A.JPG", "imgs/b.png", "imgs/sub/c.tif",
                                                                 "single.png"]
    assert collect_images(str(single)) == [single]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        collect_images(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file or folder"):
        collect_images(tmp_path / "missing")
    Image.new("RGB", (4, 4)).save(folder / "sub" / "b.png")
    with pytest.raises(DataError, match="same name as"):
        collect_images(folder)


def test_many_absent_classes_are_one_warning_few_are_one_each(tmp_path):
    root = tmp_path / "many"
    names = [f"c{i}" for i in range(12)]
    (tmp_path / "many").mkdir()
    (root / "dataset.yaml").write_text(f"classes: [{', '.join(names)}]\nsplits: {{train: {{images: im, masks: mk}}}}\n")
    m = np.zeros((40, 40), np.uint8)
    m[:10] = 1
    _img(root / "im/a.png", 40, 40)
    _mask(root / "mk/a.png", m)
    absent = [p for p in check_data(root, progress=False).problems if "never occur" in p.message]
    assert len(absent) == 1 and absent[0].level == "warning"
    assert "10 of 12 classes never occur" in absent[0].message and "2 'c2'" in absent[0].message
    assert "5 more" in absent[0].message and "\n" not in absent[0].message
    (root / "dataset.yaml").write_text("classes: [c0, c1, c2, c3]\nsplits: {train: {images: im, masks: mk}}\n")
    absent = [p.message for p in check_data(root, progress=False).problems if "never occur" in p.message]
    assert absent == ["class 2 'c2' never occurs in the train masks", "class 3 'c3' never occurs in the train masks"]


def test_one_jpeg_mask_among_png_masks_does_not_invent_classes(tmp_path):
    """0/255 PNG masks plus one JPEG: the JPEG's compression noise must not become classes."""
    from PIL import Image

    from segtune.data import load_dataset_spec

    root = tmp_path / "mixed"
    m = np.zeros((40, 48), np.uint8)
    m[8:30, 6:40] = 255
    for i in range(3):
        _img(root / "images" / f"{i}.png", 40, 48, seed=i)
    for i in range(2):
        _mask(root / "masks" / f"{i}.png", m)
    Image.fromarray(m).save(root / "masks" / "2.jpg", quality=60)
    spec = load_dataset_spec(root)
    assert spec.classes == ["class_0", "class_1"] and spec.mask_format == "binary"
    report = check_data(root, progress=False)
    assert report.ok and report.class_pixels.sum() == 3 * 40 * 48
