"""Bad input, one test per case (ux_reliability.md B3 + the bad-input issue), through the real CLI.

Every case is generated under ``tmp_path`` by the builders in ``tests/_cases.py``. Error cases
must give exit code 2 with a line that names the file, what is wrong and how to fix it (one
``error:`` line on stderr for train/predict, a problem line in check-data's report), never a
traceback and no partial output; usable cases must load correctly and print a notice.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import _cases as C
import numpy as np
import pytest
from PIL import Image

from segtune.cli import main
from segtune.data import SegDataset, find_pairs, load_dataset_spec
from segtune.data import decode as _decode

TRAIN_FAST = ["--max-steps", "1", "--crop-size", "64", "--batch-size", "2", "--no-progress",
              "--set", "train.num_overlays=1"]


@pytest.fixture(autouse=True)
def _fresh_notices():
    """Per-file notices are printed once per kind per process: start each test afresh."""
    _decode._NOTICED.clear()
    yield
    _decode._NOTICED.clear()


# ---------------------------------------------------------------------------- helpers
def check(capsys, root: Path, *flags: str) -> tuple[int, str, str]:
    rc = main(["check-data", str(root), *flags])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out, err


def problem_lines(out: str, level: str) -> list[str]:
    return [ln.strip()[len(level) + 2 :] for ln in out.splitlines() if ln.startswith(f"  {level}: ")]


def assert_reported(out: str, e: C.Expect) -> str:
    """The report has a problem line of level ``e.level`` naming the file, the fault and the fix."""
    lines = [ln for ln in problem_lines(out, e.level) if e.name in ln and e.what in ln]
    assert len(lines) == 1, f"{e} not reported once in:\n{out}"
    line = lines[0]
    assert e.hint in line
    if e.level == "error":
        assert line.endswith(")") and " (" in line, line  # "<file>: <what> (<how to fix>)"
    return line


def one_line_error(rc: int, err: str, *fragments: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def load(root: Path, stem: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Decoded (image, mask) of one pair exactly as training reads it."""
    spec = load_dataset_spec(root)
    pairs, _ = find_pairs(spec.splits[split].images, spec.splits[split].masks)
    pair = [p for p in pairs if p[0].stem == stem]
    assert len(pair) == 1, (stem, pairs)
    image, mask = SegDataset(pair, spec, transform=None, cache=False).load(0)
    return image, mask.astype(np.int64)


def no_output(folder: Path) -> bool:
    return not folder.exists() or not any(folder.rglob("*"))


# ============================================================= check-data: error cases
@pytest.mark.parametrize("case", list(C.ERROR_CASES))
def test_check_data_error_case(case: str, tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    e = C.ERROR_CASES[case](root)
    rc, out, _ = check(capsys, root)
    assert rc == 2
    assert_reported(out, e)
    assert "problems: 1 error(s)" in out
    # the bad pair is left out, the good ones are kept
    assert "usable pairs: train 3, val 1" in out


@pytest.mark.parametrize("case", list(C.WARNING_CASES))
def test_check_data_usable_case_gives_notice(case: str, tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    e = C.WARNING_CASES[case](root)
    rc, out, _ = check(capsys, root)
    assert rc == 0, out
    assert_reported(out, e)
    assert "problems: 0 error(s), 1 warning(s)" in out


def test_check_data_lists_every_problem_in_one_pass(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    expected = [fn(root) for fn in C.ERROR_CASES.values()]
    expected += [fn(root) for fn in C.WARNING_CASES.values()]
    rc, out, _ = check(capsys, root)
    assert rc == 2
    for e in expected:
        assert_reported(out, e)
    n_err = sum(e.level == "error" for e in expected)
    assert f"problems: {n_err} error(s), " in out
    # errors are listed before warnings, and the report goes on to the class table and sizes
    assert out.index("  error: ") < out.index("  warning: ") < out.index("class pixels")
    assert "image sizes (pixels):" in out and f"{n_err} error(s) to fix" in out


def test_image_without_mask_strict_makes_it_an_error(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    lonely, orphan = C.case_image_without_mask(root), C.case_mask_without_image(root)
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 2 warning(s)" in out
    rc, out, _ = check(capsys, root, "--strict")
    assert rc == 2 and "2 error(s), 0 warning(s)" in out
    for e in (lonely, orphan):
        e.level = "error"
        assert_reported(out, e)


# ============================================================= masks that load
def test_16bit_mask_values_read_as_integers(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "deep.png")
    m = C.label_mask().astype(np.uint16)  # 0/1 stored in a 16-bit PNG: not scaled like images
    C.write_mask(tm / "deep.png", m)
    with Image.open(tm / "deep.png") as im:
        assert im.mode.startswith("I")
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "problems: 0 error(s), 0 warning(s)" in out
    _, mask = load(root, "deep")
    assert np.array_equal(mask, m)
    # a value above 255 is kept as stored (reported as 300, never clipped to 255 or wrapped to 44)
    C.case_16bit_out_of_range(root)
    rc, out, _ = check(capsys, root)
    assert rc == 2 and "300 (1 px)" in out


def _palette_mask(path: Path, idx: np.ndarray) -> None:
    im = Image.fromarray(idx.astype(np.uint8), mode="P")
    im.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def test_palette_png_mask_indices_are_class_ids(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "pal.png")
    idx = C.label_mask()
    _palette_mask(tm / "pal.png", idx)
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out
    _, mask = load(root, "pal")
    assert np.array_equal(mask, idx)  # not the palette colours' luminance (red -> 76)


def test_palette_masks_without_yaml_import_colours(tmp_path: Path, capsys) -> None:
    root = tmp_path / "bare"
    for i in range(3):
        C.write_image(root / "images" / f"p{i}.png", seed=i)
        idx = C.label_mask()
        idx[-4:, -4:] = 2
        _palette_mask(root / "masks" / f"p{i}.png", idx)
    rc, out, err = check(capsys, root)
    assert rc == 0, out
    assert "3 classes" in out and "found 3 classes in 3 masks" in err  # notice: name them
    spec = load_dataset_spec(root)
    assert spec.colors == [(0, 0, 0), (255, 0, 0), (0, 128, 255)]
    _, mask = load(root, "p0")
    assert set(np.unique(mask)) == {0, 1, 2}


def test_rgb_mask_known_colours_mapped(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "rgb.png")
    m = np.zeros((C.H, C.W, 3), np.uint8)
    m[:10, :7] = (255, 0, 0)
    C.write_mask(tm / "rgb.png", m)
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out
    _, mask = load(root, "rgb")
    assert mask.sum() == 70 and mask[:10, :7].all()


@pytest.mark.parametrize("how", ["yaml", "flag"])
def test_rgb_unknown_colour_as_ignore_opt_in(how: str, tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    C.case_rgb_unknown_colour(root)
    flags: list[str] = []
    if how == "yaml":
        C.write_yaml(root, C.BASE_YAML + "unknown_as_ignore: true\n" + C.SPLITS_YAML)
    else:
        flags = ["--unknown-as-ignore"]
    rc, out, _ = check(capsys, root, *flags)
    assert rc == 0, out
    assert_reported(out, C.Expect("colour.png", "(7, 8, 9) x 8 px; read as ignore_index 255", "", "warning"))
    if how == "yaml":  # training reads the same spec
        _, mask = load(root, "colour")
        assert (mask == 255).sum() == 8 and (mask == 1).sum() == 25


def test_mask_255_with_explicit_ignore_index_is_ignore(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")  # yaml says ignore_index: 255
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "ign.png")
    m = C.label_mask()
    m[-6:] = 255
    C.write_mask(tm / "ign.png", m)
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out  # silent: the yaml says so
    ignore_row = next(ln for ln in out.splitlines() if "ignore (255)" in ln)
    assert f" {6 * C.W:,} " in ignore_row  # the ignored pixels are counted in the class table
    _, mask = load(root, "ign")
    assert np.array_equal(mask, m)


def test_mask_255_default_ignore_gets_notice(tmp_path: Path, capsys) -> None:
    # dataset.yaml without ignore_index: 255 falls back to the default, with a notice
    root = C.base_dataset(tmp_path / "data", yaml_head="name: cases\nclasses: [bg, fg]\n")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "ign.png")
    m = C.label_mask()
    m[-6:] = 255
    m[0, 0] = 0
    C.write_mask(tm / "ign.png", m)
    rc, out, _ = check(capsys, root)
    assert rc == 0, out
    assert_reported(out, C.Expect("dataset.yaml", "1 mask(s) hold 255, read as ignore_index 255 (the default",
                                  "write ignore_index: 255 to confirm", "warning"))
    _, mask = load(root, "ign")
    assert (mask == 255).sum() == 6 * C.W


def test_mask_255_without_yaml_is_ignore_with_notice(tmp_path: Path, capsys) -> None:
    root = tmp_path / "bare"
    for i in range(2):
        C.write_image(root / "images" / f"b{i}.png", seed=i)
        m = C.label_mask()
        m[-3:] = 2
        m[:2] = 255
        C.write_mask(root / "masks" / f"b{i}.png", m)
    rc, out, err = check(capsys, root)
    assert rc == 0, out
    assert "mask value 255 is treated as 'ignore'" in err and "write a dataset.yaml" in err
    assert "3 classes, ignore_index 255" in out


def _binary_data(root: Path, yaml_head: str | None) -> Path:
    C.base_dataset(root, yaml_head=yaml_head)
    for split in ("train", "val"):
        for f in (root / split / "masks").iterdir():
            m = np.asarray(Image.open(f)) * 255
            C.write_mask(f, m.astype(np.uint8))
    return root


def test_binary_0_255_masks_without_yaml(tmp_path: Path, capsys) -> None:
    root = _binary_data(tmp_path / "bare", None)
    (root / "train" / "images").rename(root / "images")
    (root / "train" / "masks").rename(root / "masks")
    rc, out, err = check(capsys, root)
    assert rc == 0, out
    assert "masks hold only 0 and 255: reading them as binary" in err and "ignore_index: 255" in err
    spec = load_dataset_spec(root)
    image, mask = SegDataset(find_pairs(root / "images", root / "masks")[0][:1], spec, cache=False).load(0)
    assert set(np.unique(mask)) == {0, 1}


def test_binary_0_255_masks_two_classes_in_yaml(tmp_path: Path, capsys) -> None:
    root = _binary_data(tmp_path / "data", "name: bin\nclasses: [bg, fg]\n")
    rc, out, _ = check(capsys, root)
    assert rc == 0, out
    assert_reported(out, C.Expect("train/masks/ok0.png", "reading 255 as class 1", "set mask_format: binary", "warning"))
    expected = C.label_mask()
    expected[-1, -1] = 1
    assert np.array_equal(load(root, "ok0")[1], expected)
    # mask_format: binary -> read silently as 0/1
    C.write_yaml(root, "name: bin\nclasses: [bg, fg]\nmask_format: binary\n" + C.SPLITS_YAML)
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out
    assert set(np.unique(load(root, "ok0")[1])) == {0, 1}


def test_binary_0_255_masks_with_ignore_255_follow_the_yaml(tmp_path: Path, capsys) -> None:
    root = _binary_data(tmp_path / "data", "name: bin\nclasses: [bg, fg]\nignore_index: 255\n")
    rc, out, _ = check(capsys, root)
    assert rc == 0, out  # usable, but fg never occurs: the warning says how to read 255 as fg
    assert_reported(out, C.Expect("dataset.yaml", "class 1 'fg' never occurs in the train masks",
                                  "if 255 marks the foreground, set mask_format: binary", "warning"))
    assert set(np.unique(load(root, "ok0")[1])) == {0, 255}


# ============================================================= images that load
def test_grayscale_image_becomes_three_channels(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    g = C.image_array()[:, :, 0]
    Image.fromarray(g, mode="L").save(ti / "gray.png")
    Image.fromarray(g, mode="L").save(ti / "grayj.jpg", quality=95)
    C.write_mask(tm / "gray.png", C.label_mask())
    C.write_mask(tm / "grayj.png", C.label_mask())
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out
    image, mask = load(root, "gray")
    assert image.shape == (C.H, C.W, 3) and all(np.array_equal(image[..., c], g) for c in range(3))
    image, _ = load(root, "grayj")
    assert image.shape == (C.H, C.W, 3) and np.array_equal(image[..., 0], image[..., 2])


def test_rgba_image_alpha_dropped(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    rgb = C.image_array(seed=3)
    a = np.concatenate([rgb, np.full((C.H, C.W, 1), 200, np.uint8)], axis=2)  # constant alpha
    Image.fromarray(a, mode="RGBA").save(ti / "rgba.png")
    C.write_mask(tm / "rgba.png", C.label_mask())
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out  # constant alpha: silently dropped
    image, _ = load(root, "rgba")
    assert np.array_equal(image, rgb)
    C.case_varying_alpha_image(root)  # varying alpha: dropped with a warning
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "varying alpha (transparency) channel; it is dropped" in out


def test_cmyk_jpeg_becomes_rgb_with_notice(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    rgb = np.zeros((C.H, C.W, 3), np.uint8)
    rgb[:, : C.W // 2] = (200, 40, 20)
    rgb[:, C.W // 2 :] = (10, 90, 220)
    Image.fromarray(rgb).convert("CMYK").save(ti / "print.jpg", quality=95)
    C.write_mask(tm / "print.png", C.label_mask())
    with Image.open(ti / "print.jpg") as im:
        assert im.mode == "CMYK"
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s)" in out
    image, _ = load(root, "print")
    err = capsys.readouterr().err
    assert image.shape == (C.H, C.W, 3) and np.abs(image.astype(int) - rgb).mean() < 6
    assert "print.jpg: CMYK image converted to RGB" in err


def test_exif_rotated_jpeg_image_and_mask_aligned(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    hd, wd = 48, 40  # displayed size
    shown = np.full((hd, wd, 3), 20, np.uint8)
    shown[:12, :20] = 240  # bright block top-left as displayed
    truth = np.zeros((hd, wd), np.uint8)
    truth[:12, :20] = 1
    stored = np.ascontiguousarray(np.rot90(shown, 1))  # orientation 6: viewer turns it 90 deg clockwise
    C.exif_jpeg(ti / "phone.jpg", stored, orientation=6)
    C.write_mask(tm / "phone.png", truth)  # drawn on the displayed image
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out
    image, mask = load(root, "phone")
    assert image.shape[:2] == mask.shape == (hd, wd)
    assert np.array_equal(image[..., 0] > 128, mask == 1)


def test_uppercase_extensions_pair(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "UP.PNG", fmt="PNG")
    C.write_mask(tm / "UP.PNG", C.label_mask(), fmt="PNG")
    C.write_image(ti / "Cam.JPG", fmt="JPEG")
    C.write_mask(tm / "Cam.Png", C.label_mask(), fmt="PNG")
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out and "usable pairs: train 5" in out
    assert load(root, "UP")[1].sum() == C.label_mask().sum()


def test_non_ascii_and_space_names(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    nfc = unicodedata.normalize("NFC", "café au lait")
    nfd = unicodedata.normalize("NFD", "café au lait")
    assert nfc != nfd
    C.write_image(ti / f"{nfc}.png", seed=1)
    C.write_mask(tm / f"{nfd}.png", C.label_mask())  # stored decomposed, as macOS does
    C.write_image(ti / "日本 写真 1.jpg", seed=2)
    C.write_mask(tm / "日本 写真 1.png", C.label_mask())
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out and "usable pairs: train 5" in out
    assert load(root, "日本 写真 1")[1].shape == (C.H, C.W)


def test_non_utf8_file_names(tmp_path: Path, capsys) -> None:
    import os

    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    good = os.fsdecode(b"latin1 \xe9t\xe9")  # not valid UTF-8: surrogate-escaped by Python
    C.write_image(ti / f"{good}.png")
    C.write_mask(tm / f"{good}.png", C.label_mask())
    bad = os.fsdecode(b"broken \xff")
    (ti / f"{bad}.png").write_bytes(b"")
    C.write_mask(tm / f"{bad}.png", C.label_mask())
    rc, out, _ = check(capsys, root)
    assert rc == 2 and "usable pairs: train 4" in out
    assert_reported(out, C.Expect("broken \\xff.png", "empty file (0 bytes)", "replace or re-export"))
    out.encode("utf-8")  # printable: no lone surrogates reach the terminal


def test_symlinked_files_are_followed(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    elsewhere = tmp_path / "elsewhere"
    C.write_image(elsewhere / "real.png", seed=9)
    C.write_mask(elsewhere / "real_mask.png", C.label_mask())
    (ti / "linked.png").symlink_to(elsewhere / "real.png")
    (tm / "linked.png").symlink_to(elsewhere / "real_mask.png")
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "0 error(s), 0 warning(s)" in out and "usable pairs: train 4" in out
    image, mask = load(root, "linked")
    assert np.array_equal(image, C.image_array(seed=9)) and np.array_equal(mask, C.label_mask())


def test_hidden_files_are_ignored(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    (ti / ".DS_Store").write_bytes(b"\x00\x01junk")
    (ti / "._ok0.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (tm / ".DS_Store").write_bytes(b"\x00")
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "problems: 0 error(s), 0 warning(s) - all good" in out


def test_one_by_one_image_is_padded_for_training(tmp_path: Path, capsys) -> None:
    from segtune.data import train_transforms

    root = C.base_dataset(tmp_path / "data")
    C.case_tiny_image(root)
    rc, out, _ = check(capsys, root)
    assert rc == 0 and "tiny image (1x1" in out
    spec = load_dataset_spec(root)
    ti, tm = C.train_dirs(root)
    ds = SegDataset([(ti / "dot.png", tm / "dot.png")], spec,
                    train_transforms(64, (0.5,) * 3, (0.25,) * 3, 255), cache=False)
    s = ds[0]
    assert s["image"].shape == (3, 64, 64) and s["mask"].shape == (64, 64)
    vals = set(np.unique(s["mask"].numpy()).tolist())
    assert vals <= {1, 255} and 255 in vals  # the padding is ignore


def test_class_that_never_occurs_is_warned_and_excluded_from_metrics(tmp_path: Path, capsys) -> None:
    from segtune.metrics import segmentation_metrics

    root = C.base_dataset(tmp_path / "data", yaml_head="name: c\nclasses: [bg, fg, rare]\nignore_index: 255\n")
    rc, out, _ = check(capsys, root)
    assert rc == 0
    assert_reported(out, C.Expect("dataset.yaml", "class 2 'rare' never occurs in the train masks",
                                  "metrics will exclude it as absent", "warning"))
    assert "rare" in out and "(absent)" in out
    cm = np.array([[50, 10, 0], [5, 35, 0], [0, 0, 0]])
    m = segmentation_metrics(cm, ["bg", "fg", "rare"])
    rare = m["per_class"][2]
    assert rare["iou"] is None and rare["present"] is False
    ious = [m["per_class"][i]["iou"] for i in (0, 1)]
    assert m["miou"] == pytest.approx(sum(ious) / 2) and m["num_present"] == 2


# ============================================================= folders and yaml
def test_empty_images_folder(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    ti, _ = C.train_dirs(root)
    for f in ti.iterdir():
        f.unlink()
    rc, out, _ = check(capsys, root)
    assert rc == 2
    assert_reported(out, C.Expect("images", "no image files found", "accepted extensions: bmp, jpeg, jpg"))
    rc = main(["train", str(root), "--out", str(tmp_path / "runs"), *TRAIN_FAST])
    one_line_error(rc, capsys.readouterr().err, "train/images", "no image files found", "check-data")
    assert no_output(tmp_path / "runs")


def test_empty_data_folder(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    rc = main(["check-data", str(tmp_path / "empty")])
    one_line_error(rc, capsys.readouterr().err, "empty", "no dataset.yaml and no images/ + masks/",
                   "add a dataset.yaml")


@pytest.mark.parametrize("command", ["check-data", "train"])
def test_dataset_yaml_typo_names_valid_keys(command: str, tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data", yaml_head="name: cases\nclases: [bg, fg]\n")
    extra = ["--out", str(tmp_path / "runs"), *TRAIN_FAST] if command == "train" else []
    rc = main([command, str(root), *extra])
    one_line_error(rc, capsys.readouterr().err, "dataset.yaml", "unknown key 'clases'",
                   "did you mean 'classes'?", "valid keys: name, classes, colors, ignore_index")
    assert no_output(tmp_path / "runs")


# ============================================================= decompression bombs, tiles
@pytest.mark.parametrize("size", [(20000, 20000), (15000, 13000)])
def test_decompression_bomb_refused_from_header(size: tuple[int, int], tmp_path: Path, capsys) -> None:
    # 400 Mpx trips Pillow's own bomb error; 195 Mpx only its warning, segtune's limit catches it
    root = C.base_dataset(tmp_path / "data")
    ti, tm = C.train_dirs(root)
    C.png_with_header_size(ti / "huge.png", *size)
    C.write_mask(tm / "huge.png", C.label_mask())
    assert _decode.image_size(ti / "huge.png") == size  # header only, nothing allocated
    rc, out, _ = check(capsys, root)
    assert rc == 2
    mpx = f"{size[0] * size[1] / 1e6:.0f}"
    assert_reported(out, C.Expect("huge.png", f"image is {size[0]}x{size[1]} = {mpx} Mpx, above the limit of 180 Mpx",
                                  "raise the limit with --max-pixels"))


def test_max_pixels_option_sets_the_limit(tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data")
    rc, out, _ = check(capsys, root, "--max-pixels", "1000")
    assert rc == 2 and f"image is {C.W}x{C.H} = {C.H * C.W:,} px, above the limit of 1,000 px" in out
    rc, out, _ = check(capsys, root, "--max-pixels", str(C.H * C.W))
    assert rc == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished run folder with an untrained 2-class model (no training needed for predict)."""
    from segtune.engine.run import save_model
    from segtune.models import create_model

    run = tmp_path_factory.mktemp("run")
    model = create_model("unet", "tf_efficientnet_lite0", num_classes=2, weights="none").eval()
    save_model(run, model, {
        "classes": ["bg", "fg"], "colors": [[0, 0, 0], [255, 0, 0]], "ignore_index": 255,
        "normalization": {"mean": list(model.mean), "std": list(model.std)},
    })
    return run


def test_predict_refuses_bomb_with_one_line_and_no_output(run_dir: Path, tmp_path: Path, capsys) -> None:
    inputs = tmp_path / "in"
    C.write_image(inputs / "a.png")
    C.png_with_header_size(inputs / "huge.png", 20000, 20000)
    out = tmp_path / "pred"
    rc = main(["predict", str(run_dir), str(inputs), "--out", str(out)])
    one_line_error(rc, capsys.readouterr().err, "huge.png", "20000x20000 = 400 Mpx", "--max-pixels")
    assert not out.exists()  # refused before anything was written
    rc = main(["predict", str(run_dir), str(inputs / "a.png"), "--out", str(out), "--max-pixels", "1000"])
    one_line_error(rc, capsys.readouterr().err, "a.png", "above the limit of 1,000 px", "--max-pixels")
    assert not out.exists()
    # the good image alone predicts, at its own size
    assert main(["predict", str(run_dir), str(inputs / "a.png"), "--out", str(out)]) == 0
    with Image.open(out / "a.png") as im:
        assert im.size == (C.W, C.H) and im.mode == "P"


@pytest.mark.parametrize("name", ["zero.png", "text.png", "trunc.png"])
def test_predict_bad_file_one_line(name: str, run_dir: Path, tmp_path: Path, capsys) -> None:
    f = tmp_path / name
    if name == "zero.png":
        f.write_bytes(b"")
    elif name == "text.png":
        f.write_text("hello")
    else:
        C.write_image(f, 64, 64)
        f.write_bytes(f.read_bytes()[:300])
    rc = main(["predict", str(run_dir), str(f), "--out", str(tmp_path / "pred")])
    one_line_error(rc, capsys.readouterr().err, name, "(replace or re-export the file, or leave it out of the inputs)")
    assert not (tmp_path / "pred").exists()


def test_large_image_predicted_in_tiles_keeps_size(run_dir: Path, capsys) -> None:
    from segtune.inference import Predictor

    pred = Predictor.from_run(run_dir, device="cpu", tile_size=32, tile_pixels=1000)
    calls: list[tuple[int, ...]] = []
    forward = pred._forward_padded
    pred._forward_padded = lambda x: (calls.append(tuple(x.shape)), forward(x))[1]  # type: ignore[method-assign]
    image = C.image_array(70, 50, seed=4)
    mask = pred.predict(image)
    assert mask.shape == (70, 50) and set(np.unique(mask)) <= {0, 1}
    assert len(calls) > 1 and all(s[-2] <= 32 and s[-1] <= 32 for s in calls)  # tiled
    calls.clear()
    assert pred.predict(C.image_array(1, 1)).shape == (1, 1)  # 1x1 image: untiled, same size
    assert len(calls) == 1


# ============================================================= train: refuse, skip, weights, config
def _train_data(root: Path) -> Path:
    C.base_dataset(root, n_train=4, n_val=2, size=(64, 64))
    ti, tm = C.train_dirs(root)
    C.write_image(ti / "café 1.png", 64, 64, seed=31)  # non-ASCII name with a space trains too
    C.write_mask(tm / "café 1.png", C.label_mask(64, 64))
    return root


def test_train_refuses_bad_data_without_partial_output(tmp_path: Path, capsys) -> None:
    root = _train_data(tmp_path / "data")
    C.case_truncated_png(root)
    C.case_size_mismatch(root)
    out = tmp_path / "runs"
    rc = main(["train", str(root), "--out", str(out), *TRAIN_FAST])
    one_line_error(rc, capsys.readouterr().err, "2 problem(s)", "first: ", "sizes.png: size mismatch",
                   "segtune check-data", "--skip-bad")
    assert no_output(out)  # no run folder, no config.yaml, no model files


def test_train_skip_bad_trains_on_the_rest_and_lists_skipped(tmp_path: Path, capsys) -> None:
    import json

    root = _train_data(tmp_path / "data")
    C.case_truncated_png(root)
    C.case_size_mismatch(root)
    C.case_image_without_mask(root)
    out = tmp_path / "runs"
    rc = main(["train", str(root), "--out", str(out), "--name", "sk", "--skip-bad", *TRAIN_FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    skipped = [ln for ln in captured.err.splitlines() if ln.startswith("warning: skipped: ")]
    assert len(skipped) == 2
    assert any("trunc.png: corrupt or truncated image" in ln for ln in skipped)
    assert any("sizes.png: size mismatch" in ln for ln in skipped)
    assert "lonely.png: image has no mask (skipped)" in captured.err
    run = out / "sk"
    assert (run / "model.safetensors").is_file()
    summary = json.loads((run / "metrics.json").read_text())["summary"]
    assert summary["train_images"] == 5 and summary["val_images"] == 2


def _save_weights(path: Path, arch: str, num_classes: int) -> Path:
    from safetensors.torch import save_file

    from segtune.models import create_model

    m = create_model(arch, "tf_efficientnet_lite0", num_classes=num_classes, weights="none")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path


@pytest.mark.parametrize(
    "arch,classes,fragments",
    [
        ("unet", 5, ("checkpoint has 5 classes, the data set has 2", "pass the run folder")),
        ("fpn", 2, ("in the file but", "in unet with encoder tf_efficientnet_lite0", "another architecture")),
    ],
)
def test_weights_for_another_class_count_or_architecture(arch, classes, fragments, tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data", size=(64, 64))
    w = _save_weights(tmp_path / f"{arch}{classes}.safetensors", arch, classes)
    out = tmp_path / "runs"
    rc = main(["train", str(root), "--weights", str(w), "--out", str(out), *TRAIN_FAST])
    one_line_error(rc, capsys.readouterr().err, w.name, *fragments)
    assert no_output(out)


@pytest.mark.parametrize(
    "flags,fragments",
    [
        (["--lr", "-1"], ("optim.lr", "-1")),
        (["--strategy", "frozen"], ("strategy.name='frozen'", "choose one of: auto, head, partial")),
        (["--crop-size", "50"], ("data.crop_size=50", "multiple of 32", "try 64")),
        (["--epochs", "0"], ("train.epochs",)),
        (["--set", "data.val_fraction=1.5"], ("data.val_fraction=1.5", "[0, 1)")),
        (["--set", "optim.lrr=0.1"], ("unknown key 'optim.lrr'", "did you mean 'lr'?", "valid:")),
        (["--set", "optim.lr=fast"], ("optim.lr='fast'", "must be a number")),
    ],
)
def test_config_value_out_of_range(flags, fragments, tmp_path: Path, capsys) -> None:
    root = C.base_dataset(tmp_path / "data", size=(64, 64))
    out = tmp_path / "runs"
    rc = main(["train", str(root), "--out", str(out), *TRAIN_FAST, *flags])
    one_line_error(rc, capsys.readouterr().err, *fragments)
    assert no_output(out)


@pytest.mark.parametrize("argv", [
    ["predict", "RUN", "DATA"], ["evaluate", "RUN", "DATA"], ["lr-find", "DATA"], ["rank-encoders", "DATA"],
    ["tune", "DATA"], ["train", "DATA"], ["distill", "RUN", "DATA", "--student", "unet/tf_efficientnet_lite0"],
])
def test_out_naming_an_existing_file_is_one_line(argv: list[str], tmp_path: Path, capsys) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main([*argv, "--out", str(taken)]) == 2
    assert capsys.readouterr().err == f"error: --out {taken}: is a file, not a folder (give a folder name, or move the file away)\n"
    assert taken.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
