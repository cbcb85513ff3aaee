"""dataset.yaml loading, image/mask decoding and image/mask pairing (small files made in tmp_path)."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtune.data.decode import image_size, mask_values_summary, read_image, read_mask
from segtune.data.pairing import find_pairs, list_files
from segtune.data.spec import DatasetSpec, Split, load_dataset_spec
from segtune.errors import ConfigError, DataError

CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"
REPO = Path(__file__).resolve().parents[1]


def _spec(tmp_path: Path, n: int = 3, **kw) -> DatasetSpec:
    return DatasetSpec(root=tmp_path, classes=[f"c{i}" for i in range(n)], **kw)


def _save(arr: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def _rgb(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ masks
def test_16bit_mask_values_above_255_preserved(tmp_path):
    a = np.array([[0, 300, 1000], [65535, 256, 7]], dtype=np.uint16)
    p = _save(a, tmp_path / "m16.png")
    assert Image.open(p).mode.startswith("I;16")
    m = read_mask(p, _spec(tmp_path, 2, mask_format="index"))
    assert m.dtype == np.int64 and m.shape == (2, 3)
    np.testing.assert_array_equal(m, a.astype(np.int64))


def test_16bit_tif_mask(tmp_path):
    a = np.array([[0, 1], [2, 4000]], dtype=np.uint16)
    p = _save(a, tmp_path / "m.tif")
    np.testing.assert_array_equal(read_mask(p, _spec(tmp_path)), a)


def test_palette_png_indices_are_class_ids(tmp_path):
    idx = np.array([[0, 1, 2], [3, 3, 1]], dtype=np.uint8)
    im = Image.fromarray(idx, mode="P")
    # Bright colours on low indices: convert('L') would give luminance, not indices.
    im.putpalette([255, 255, 255, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 - 4) * 3)
    p = tmp_path / "pal.png"
    im.save(p)
    assert Image.open(p).mode == "P"
    m = read_mask(p, _spec(tmp_path, 4))
    np.testing.assert_array_equal(m, idx)
    vals, pal, is_color = mask_values_summary(p)
    assert list(vals) == [0, 1, 2, 3] and not is_color
    assert pal[:2] == [(255, 255, 255), (255, 0, 0)]


def test_rgb_mask_mapped_through_colors(tmp_path):
    colors = [(0, 0, 0), (255, 0, 0), (0, 128, 255)]
    ids = np.array([[0, 1, 2, 1], [2, 2, 0, 1]])
    rgb = np.array(colors, dtype=np.uint8)[ids]
    p = _save(rgb, tmp_path / "rgb.png")
    for fmt in ("auto", "rgb"):
        m = read_mask(p, _spec(tmp_path, 3, colors=colors, mask_format=fmt))
        np.testing.assert_array_equal(m, ids)


def test_rgb_mask_ignore_color(tmp_path):
    colors = [(10, 20, 30), (200, 0, 0)]
    rgb = np.array([[[10, 20, 30], [200, 0, 0], [1, 1, 1]]], dtype=np.uint8)
    p = _save(rgb, tmp_path / "rgb.png")
    spec = _spec(
        tmp_path, 2, colors=colors, mask_format="rgb", ignore_index=99, ignore_color=(1, 1, 1)
    )
    np.testing.assert_array_equal(read_mask(p, spec), [[0, 1, 99]])


def test_rgb_mask_unknown_colour_error_names_colour_count_and_file(tmp_path):
    colors = [(0, 0, 0), (255, 0, 0)]
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[0, :3] = (12, 34, 56)
    p = _save(rgb, tmp_path / "weird.png")
    with pytest.raises(DataError) as ei:
        read_mask(p, _spec(tmp_path, 2, colors=colors, mask_format="rgb"))
    msg = str(ei.value)
    assert "weird.png" in msg and "(12, 34, 56)" in msg and "3 px" in msg and "colors" in msg
    assert "\n" not in msg


def test_rgb_mask_without_colour_map_says_add_colors(tmp_path):
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    p = _save(rgb, tmp_path / "c.png")
    with pytest.raises(DataError, match="colors:"):
        read_mask(p, _spec(tmp_path, 2))
    with pytest.raises(DataError, match="mask_format: rgb"):
        read_mask(p, _spec(tmp_path, 2, mask_format="index"))


def test_gray_stored_as_rgb_is_index(tmp_path):
    g = np.array([[0, 1], [2, 1]], np.uint8)
    p = _save(np.repeat(g[:, :, None], 3, axis=2), tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(p, _spec(tmp_path)), g)
    # ... also with a constant alpha channel
    rgba = np.concatenate(
        [np.repeat(g[:, :, None], 3, axis=2), np.full((2, 2, 1), 255, np.uint8)], axis=2
    )
    p2 = _save(rgba, tmp_path / "ga.png")
    np.testing.assert_array_equal(read_mask(p2, _spec(tmp_path)), g)


def test_mask_with_varying_alpha_is_an_error(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 3] = [[0, 255], [255, 255]]
    p = _save(rgba, tmp_path / "a.png")
    with pytest.raises(DataError, match="alpha"):
        read_mask(p, _spec(tmp_path))
    la = np.zeros((2, 2, 2), np.uint8)
    la[..., 1] = [[0, 255], [9, 255]]
    p2 = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(p2)
    with pytest.raises(DataError, match="2-channel"):
        read_mask(p2, _spec(tmp_path))


def test_binary_0_255_auto_detected_with_notice(tmp_path, capsys):
    from segtune.data import decode

    decode._NOTICED.discard("binary_auto")
    a = np.array([[0, 255], [255, 0]], np.uint8)
    p = _save(a, tmp_path / "b.png")
    m = read_mask(p, _spec(tmp_path, 2))
    np.testing.assert_array_equal(m, [[0, 1], [1, 0]])
    assert "0 and 255" in capsys.readouterr().err
    # explicit binary format
    np.testing.assert_array_equal(
        read_mask(p, _spec(tmp_path, 2, mask_format="binary")), [[0, 1], [1, 0]]
    )
    # 255 declared as ignore in dataset.yaml: kept as 255
    spec = _spec(tmp_path, 2, ignore_index=255, ignore_index_explicit=True)
    np.testing.assert_array_equal(read_mask(p, spec), a)
    # more than two classes: not binary
    np.testing.assert_array_equal(read_mask(p, _spec(tmp_path, 3)), a)


def test_one_bit_mask_reads_as_0_1(tmp_path):
    a = np.array([[0, 1], [1, 0]], bool)
    p = tmp_path / "bit.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode == "1"
    np.testing.assert_array_equal(read_mask(p, _spec(tmp_path, 2)), a.astype(int))


def test_jpeg_mask_warns(tmp_path, capsys):
    from segtune.data import decode

    decode._NOTICED.discard("jpeg_mask")
    p = tmp_path / "m.jpg"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(p)
    assert read_mask(p, _spec(tmp_path)).shape == (8, 8)
    assert "lossy" in capsys.readouterr().err


# ------------------------------------------------------------------ images
def test_grayscale_jpeg_becomes_three_channels(tmp_path):
    g = np.tile(np.arange(0, 240, 15, dtype=np.uint8), (10, 1))
    p = tmp_path / "g.jpg"
    Image.fromarray(g).save(p, quality=100)
    a = read_image(p)
    assert a.shape == (10, 16, 3) and a.dtype == np.uint8
    assert np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])
    assert abs(int(a[0, -1, 0]) - 225) <= 3


def test_one_bit_image_becomes_three_channels(tmp_path):
    p = tmp_path / "bit.png"
    Image.fromarray(np.array([[0, 1]], bool)).save(p)
    np.testing.assert_array_equal(read_image(p), [[[0, 0, 0], [255, 255, 255]]])


def test_rgba_image_alpha_dropped_and_warned_when_varying(tmp_path, capsys):
    from segtune.data import decode

    decode._NOTICED.discard("alpha_varies")
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 255
    p = _save(rgba, tmp_path / "const.png")
    a = read_image(p)
    assert a.shape == (4, 4, 3) and (a[..., 0] == 200).all()
    assert "alpha" not in capsys.readouterr().err
    rgba[0, 0, 3] = 0
    p2 = _save(rgba, tmp_path / "vary.png")
    assert read_image(p2).shape == (4, 4, 3)
    assert "alpha" in capsys.readouterr().err


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (9, 7), (0, 255, 255, 0)).save(p, quality=100)
    assert Image.open(p).mode == "CMYK"
    a = read_image(p)
    assert a.shape == (7, 9, 3) and a.dtype == np.uint8
    r, g, b = (int(v) for v in a[3, 4])
    assert r > 200 and g < 60 and b < 60  # cyan-free, magenta+yellow = red


def test_16bit_image_scaled_not_clipped(tmp_path):
    a = np.array([[0, 32768, 65535, 257]], dtype=np.uint16)
    p = _save(a, tmp_path / "i16.png")
    out = read_image(p)
    np.testing.assert_array_equal(out[..., 0], [[0, 128, 255, 1]])


def test_multiframe_tiff_uses_first_frame(tmp_path):
    p = tmp_path / "multi.tif"
    f1 = Image.new("RGB", (5, 4), (10, 20, 30))
    f2 = Image.new("RGB", (5, 4), (200, 200, 200))
    f1.save(p, save_all=True, append_images=[f2])
    assert Image.open(p).n_frames == 2
    np.testing.assert_array_equal(read_image(p)[0, 0], [10, 20, 30])


def test_exif_rotated_jpeg_is_transposed(tmp_path):
    p = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 20), (0, 0, 255)).save(p, exif=exif.tobytes())
    assert Image.open(p).size == (40, 20)
    assert read_image(p).shape == (40, 20, 3)
    assert image_size(p) == (20, 40)


def test_image_size_reads_header_only(tmp_path):
    p = _save(_rgb(30, 50), tmp_path / "a.png")
    assert image_size(p) == (50, 30)
    # A truncated file still has a readable header.
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    assert image_size(p) == (50, 30)


def test_truncated_png_is_data_error_with_pillow_message(tmp_path):
    p = _save(_rgb(64, 64), tmp_path / "trunc.png")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as ei:
        read_image(p)
    msg = str(ei.value)
    assert "trunc.png" in msg and "truncated" in msg and "\n" not in msg


def test_zero_byte_file(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(DataError, match="empty file"):
        read_image(p)
    with pytest.raises(DataError, match="empty file"):
        read_mask(p, _spec(tmp_path))


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello, not an image\n")
    with pytest.raises(DataError, match="cannot identify") as ei:
        read_image(p)
    assert str(ei.value).startswith(str(p))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_max_pixels_refused_with_hint(tmp_path):
    p = _save(_rgb(20, 20), tmp_path / "big.png")
    with pytest.raises(DataError, match="max-pixels"):
        read_image(p, max_pixels=100)
    with pytest.raises(DataError, match="max_pixels"):
        read_mask(p, _spec(tmp_path), max_pixels=100)
    assert read_image(p, max_pixels=400).shape == (20, 20, 3)


# ------------------------------------------------------------------ pairing
def _touch_png(path: Path, h: int = 4, w: int = 4) -> Path:
    return _save(np.zeros((h, w), np.uint8), path)


def test_uppercase_extensions_pair(tmp_path):
    _save(_rgb(), tmp_path / "im" / "A.JPG")
    _touch_png(tmp_path / "mk" / "A.PNG")
    _save(_rgb(), tmp_path / "im" / "b.Tiff")
    _touch_png(tmp_path / "mk" / "b.png")
    pairs, problems = find_pairs(tmp_path / "im", tmp_path / "mk")
    assert [(i.name, m.name) for i, m in pairs] == [("A.JPG", "A.PNG"), ("b.Tiff", "b.png")]
    assert problems == []


def test_same_stem_is_ambiguous_and_lists_candidates(tmp_path):
    _save(_rgb(), tmp_path / "im" / "a.jpg")
    _save(_rgb(), tmp_path / "im" / "a.png")
    _save(_rgb(), tmp_path / "im" / "b.png")
    _touch_png(tmp_path / "mk" / "a.png")
    _touch_png(tmp_path / "mk" / "b.png")
    _touch_png(tmp_path / "mk" / "b.tif")
    pairs, problems = find_pairs(tmp_path / "im", tmp_path / "mk")
    assert pairs == []
    msgs = [str(p) for p in problems]
    assert any("ambiguous" in m and "a.jpg" in m and "a.png" in m for m in msgs)
    assert any("ambiguous" in m and "b.png" in m and "b.tif" in m for m in msgs)
    assert all(p.level == "error" for p in problems)


def test_image_without_mask_and_mask_without_image(tmp_path):
    _save(_rgb(), tmp_path / "im" / "a.png")
    _save(_rgb(), tmp_path / "im" / "lonely.png")
    _touch_png(tmp_path / "mk" / "a.png")
    _touch_png(tmp_path / "mk" / "orphan.png")
    pairs, problems = find_pairs(tmp_path / "im", tmp_path / "mk")
    assert [i.name for i, _ in pairs] == ["a.png"]
    by_file = {Path(p.path).name: p for p in problems}
    assert "no mask" in by_file["lonely.png"].message
    assert "no image" in by_file["orphan.png"].message
    assert {p.level for p in problems} == {"warning"}


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "im").mkdir()
    (tmp_path / "im" / "readme.txt").write_text("x")
    pairs, problems = find_pairs(tmp_path / "im", tmp_path / "nowhere")
    assert pairs == []
    msgs = [str(p) for p in problems]
    assert any("no image files found" in m and ".txt" in m for m in msgs)
    assert any("not found" in m and "nowhere" in m for m in msgs)
    files, probs = list_files(tmp_path / "im")
    assert files == [] and len(probs) == 1


def test_hidden_files_ignored(tmp_path):
    _save(_rgb(), tmp_path / "im" / "a.jpg")
    (tmp_path / "im" / "._a.jpg").write_bytes(b"\x00\x05junk")
    (tmp_path / "im" / ".DS_Store").write_bytes(b"junk")
    _touch_png(tmp_path / "mk" / "a.png")
    (tmp_path / "mk" / "._a.png").write_bytes(b"junk")
    pairs, problems = find_pairs(tmp_path / "im", tmp_path / "mk")
    assert len(pairs) == 1 and problems == []


def test_non_ascii_space_and_nfd_names(tmp_path):
    nfc = unicodedata.normalize("NFC", "café été 1")
    nfd = unicodedata.normalize("NFD", "café été 1")
    assert nfc != nfd
    _save(_rgb(), tmp_path / "im" / f"{nfc}.jpg")
    _touch_png(tmp_path / "mk" / f"{nfd}.png")
    _save(_rgb(), tmp_path / "im" / "日本 語.png")
    _touch_png(tmp_path / "mk" / "日本 語.png")
    pairs, problems = find_pairs(tmp_path / "im", tmp_path / "mk")
    assert problems == []
    assert len(pairs) == 2
    for img, mask in pairs:
        assert read_image(img).shape[2] == 3 and read_mask(mask, _spec(tmp_path)).ndim == 2


def test_mask_suffix_convention_pairs(tmp_path):
    _save(_rgb(), tmp_path / "im" / "x1.jpg")
    _touch_png(tmp_path / "mk" / "x1_mask.png")
    pairs, problems = find_pairs(tmp_path / "im", tmp_path / "mk")
    assert [(i.name, m.name) for i, m in pairs] == [("x1.jpg", "x1_mask.png")] and problems == []


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlinks_followed_and_broken_ones_reported(tmp_path):
    real = _save(_rgb(), tmp_path / "elsewhere" / "real.png")
    (tmp_path / "im").mkdir()
    os.symlink(real, tmp_path / "im" / "a.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "im" / "broken.png")
    os.symlink(tmp_path / "im" / "loop.png", tmp_path / "im" / "loop.png")
    _touch_png(tmp_path / "mk" / "a.png")
    pairs, problems = find_pairs(tmp_path / "im", tmp_path / "mk")
    assert [i.name for i, _ in pairs] == ["a.png"]
    assert read_image(pairs[0][0]).shape == (12, 16, 3)
    msgs = {Path(p.path).name: p.message for p in problems}
    assert "broken symbolic link" in msgs["broken.png"]
    assert "loop" in msgs["loop.png"]


# ------------------------------------------------------------------ spec
def _write_yaml(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / "dataset.yaml"
    p.write_text(text)
    return p


def test_typo_top_level_key_names_valid_keys(tmp_path):
    _write_yaml(tmp_path, "clases: [a, b]\nsplits: {train: {images: i, masks: m}}\n")
    with pytest.raises(ConfigError) as ei:
        load_dataset_spec(tmp_path)
    msg = str(ei.value)
    assert "clases" in msg and "did you mean 'classes'" in msg
    for k in ("name", "classes", "colors", "ignore_index", "mask_format", "splits"):
        assert k in msg


def test_typo_split_keys(tmp_path):
    p = _write_yaml(tmp_path, "classes: [a, b]\nsplits: {trian: {images: i, masks: m}}\n")
    with pytest.raises(ConfigError, match="did you mean 'train'.*valid keys: train, val, test"):
        load_dataset_spec(p)
    _write_yaml(tmp_path, "classes: [a, b]\nsplits: {train: {image: i, masks: m}}\n")
    with pytest.raises(ConfigError, match="did you mean 'images'.*valid keys: images, masks"):
        load_dataset_spec(p)
    _write_yaml(
        tmp_path, "classes: [a, b]\nmask_format: rbg\nsplits: {train: {images: i, masks: m}}\n"
    )
    with pytest.raises(ConfigError, match="did you mean 'rgb'"):
        load_dataset_spec(p)


def test_bad_values_in_yaml(tmp_path):
    p = _write_yaml(
        tmp_path, "classes: [a, b]\ncolors: [[0, 0, 0]]\nsplits: {train: {images: i, masks: m}}\n"
    )
    with pytest.raises(ConfigError, match="1 colors for 2 classes"):
        load_dataset_spec(p)
    _write_yaml(
        tmp_path, "classes: [a, b]\nignore_index: 1\nsplits: {train: {images: i, masks: m}}\n"
    )
    with pytest.raises(ConfigError, match="ignore_index 1 is also a class"):
        load_dataset_spec(p)
    _write_yaml(
        tmp_path,
        "classes: [a, b]\ncolors: [[0, 0, 0], [0, 0, 300]]\nsplits: {train: {images: i}}\n",
    )
    with pytest.raises(ConfigError, match="0..255"):
        load_dataset_spec(p)
    with pytest.raises(DataError, match="not found"):
        load_dataset_spec(tmp_path / "missing")


def test_relative_split_dirs_resolve_against_yaml_folder(tmp_path, monkeypatch):
    p = _write_yaml(
        tmp_path / "ds",
        "name: toy\nclasses: [bg, fg]\nignore_index: 255\n"
        "splits:\n  train: {images: imgs/tr, masks: ../elsewhere/masks}\n  val: {images: /abs/v}\n",
    )
    monkeypatch.chdir(tmp_path.parent)
    spec = load_dataset_spec(p)
    assert spec.name == "toy" and spec.num_classes == 2 and spec.ignore_index == 255
    assert spec.ignore_index_explicit and spec.mask_format == "auto"
    assert spec.splits["train"] == Split(
        (tmp_path / "ds/imgs/tr").resolve(), (tmp_path / "elsewhere/masks").resolve()
    )
    assert spec.splits["val"].masks is None and spec.splits["val"].images == Path("/abs/v")
    assert spec.yaml_path == p.resolve()
    assert load_dataset_spec(tmp_path / "ds").splits == spec.splits  # folder form


def test_folder_without_yaml_infers_classes(tmp_path, capsys):
    for i, vals in enumerate([[0, 1], [3, 255]]):
        _save(_rgb(2, 2, i), tmp_path / "images" / f"{i}.jpg")
        _save(np.array([vals, vals], np.uint8), tmp_path / "masks" / f"{i}.png")
    spec = load_dataset_spec(tmp_path)
    assert spec.classes == ["class_0", "class_1", "class_2", "class_3"]
    assert spec.ignore_index == 255 and list(spec.splits) == ["train"]
    assert spec.splits["train"].images == tmp_path.resolve() / "images"
    assert "255" in capsys.readouterr().err


def test_folder_without_yaml_binary_masks(tmp_path):
    _save(_rgb(2, 2), tmp_path / "images" / "a.png")
    _save(np.array([[0, 255], [0, 0]], np.uint8), tmp_path / "masks" / "a.png")
    spec = load_dataset_spec(tmp_path)
    assert spec.classes == ["class_0", "class_1"] and spec.mask_format == "binary"
    np.testing.assert_array_equal(read_mask(tmp_path / "masks" / "a.png", spec), [[0, 1], [0, 0]])


def test_folder_without_anything_is_data_error(tmp_path):
    with pytest.raises(DataError, match="no dataset.yaml"):
        load_dataset_spec(tmp_path)


@pytest.mark.realdata
@pytest.mark.skipif(not CAMVID.is_dir(), reason="CamVid data not available")
def test_camvid_yaml_loads():
    spec = load_dataset_spec(CAMVID)
    assert spec.name == "camvid" and spec.num_classes == 11 and spec.ignore_index == 11
    assert (
        spec.mask_format == "index" and len(spec.colors) == 11 and spec.colors[0] == (128, 128, 128)
    )
    assert spec.splits["train"].images == CAMVID.resolve() / "train"
    assert spec.splits["val"].masks == CAMVID.resolve() / "valannot"
    ex = load_dataset_spec(REPO / "examples" / "camvid.yaml")
    assert ex.classes == spec.classes and ex.colors == spec.colors and ex.ignore_index == 11
    assert ex.splits == spec.splits


def test_png_exif_orientation_from_header(tmp_path):
    p = tmp_path / "o.png"
    exif = Image.Exif()
    exif[0x0112] = 8
    Image.new("RGB", (7, 5)).save(p, exif=exif.tobytes())
    assert image_size(p) == (5, 7)
    assert read_image(p).shape == (7, 5, 3)


def test_non_utf8_file_names(tmp_path):
    img_dir, mask_dir = tmp_path / "im", tmp_path / "mk"
    img_dir.mkdir()
    mask_dir.mkdir()
    name = os.fsdecode(b"caf\xe9 x.png")  # latin-1 bytes, not valid UTF-8
    try:
        _save(_rgb(), img_dir / name)
    except (OSError, UnicodeError):
        pytest.skip("file system refuses non-UTF-8 names")
    _touch_png(mask_dir / name)
    (mask_dir / os.fsdecode(b"orph\xe9.png")).write_bytes(b"")
    pairs, problems = find_pairs(img_dir, mask_dir)
    assert len(pairs) == 1
    assert "orph\\xe9.png" in str(problems[0])
    str(problems[0]).encode("utf-8")  # printable


def test_derived_data_is_a_loadable_index_data_set_moved_into_place(tmp_path: Path) -> None:
    from segtune.data.derived import DERIVED_IGNORE, DerivedData

    src = tmp_path / "user.JPG"
    Image.new("RGB", (6, 4)).save(src, format="JPEG")
    run = tmp_path / "run"
    run.mkdir()
    out = DerivedData(run, "step_data")
    mask = np.ones((4, 6), np.int64)
    mask[0, 0] = DERIVED_IGNORE
    out.add("train", "a", src, mask)
    out.add("val", "b", src, np.zeros_like(mask))
    assert not (run / "step_data").exists()  # nothing under the final name before finish
    final = out.finish("derived", ["bg", "x"], None)
    assert final == run / "step_data" and sorted(p.name for p in run.iterdir()) == ["step_data"]
    assert (final / "train" / "images" / "a.jpg").resolve() == src.resolve()
    spec = load_dataset_spec(final)
    assert spec.classes == ["bg", "x"] and spec.ignore_index == DERIVED_IGNORE
    got = read_mask(final / "train" / "masks" / "a.png", spec)
    assert got.dtype == np.int64 and got[0, 1] == 1 and got[0, 0] == DERIVED_IGNORE
