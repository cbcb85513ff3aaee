"""Report pictures: colours, overlays, PNG files of the documented sizes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segtune.metrics import segmentation_metrics
from segtune.report import (
    colorize,
    default_palette,
    overlay,
    plot_comparison,
    plot_curves,
    plot_per_class,
    save_mask_png,
    save_triptych,
)
from segtune.report.plots import TRIPTYCH_GAP, TRIPTYCH_HEADER

COLORS = [(10, 20, 30), (200, 0, 0), (0, 200, 0)]
MASK = np.array([[0, 1, 2, 255], [2, 1, 0, 0], [0, 0, 255, 1]], dtype=np.int64)


def test_default_palette_distinct_and_not_black():
    pal = default_palette(40)
    assert len(pal) == 40 and len(set(pal)) == 40
    assert (0, 0, 0) not in pal
    assert all(0 <= v <= 255 for c in pal for v in c)


def test_colorize_maps_classes_and_ignore():
    rgb = colorize(MASK, COLORS, ignore_index=255)
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 1]) == (200, 0, 0)
    assert tuple(rgb[0, 0]) == (10, 20, 30)
    assert tuple(rgb[0, 3]) == (0, 0, 0)
    default = colorize(MASK, None, 255)
    assert tuple(default[0, 2]) == default_palette(3)[2]


def test_overlay_shape_dtype_and_ignore_untouched():
    image = np.full((3, 4, 3), 100, dtype=np.uint8)
    out = overlay(image, MASK, COLORS, alpha=0.5, ignore_index=255)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    assert tuple(out[0, 3]) == (100, 100, 100)
    assert tuple(out[0, 1]) == (150, 50, 50)
    with pytest.raises(ValueError):
        overlay(image, MASK[:2], COLORS)


def test_triptych_png_size(tmp_path):
    h, w = 40, 30
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    truth = rng.integers(0, 3, (h, w))
    pred = rng.integers(0, 3, (h, w))
    truth[0, :5] = 255
    path = tmp_path / "trip.png"
    save_triptych(path, image, truth, pred, COLORS, 255)
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (3 * w + 2 * TRIPTYCH_GAP, h + TRIPTYCH_HEADER)
        arr = np.asarray(im.convert("RGB"))
    # prediction panel pixel (row 5, col 7) has the class colour
    x0 = 2 * (w + TRIPTYCH_GAP)
    assert tuple(arr[TRIPTYCH_HEADER + 5, x0 + 7]) == COLORS[pred[5, 7]]
    # with a legend the image grows in height only; no leftover temporary files
    save_triptych(path, image, truth, pred, COLORS, 255, class_names=["a", "b", "c"])
    with Image.open(path) as im:
        assert im.size[0] == 3 * w + 2 * TRIPTYCH_GAP and im.size[1] > h + TRIPTYCH_HEADER
    assert [p.name for p in tmp_path.iterdir()] == ["trip.png"]


def test_triptych_downscales_large_panels(tmp_path):
    image = np.zeros((100, 50, 3), dtype=np.uint8)
    mask = np.zeros((100, 50), dtype=np.int64)
    save_triptych(tmp_path / "t.png", image, mask, mask, None, 255, max_size=40)
    with Image.open(tmp_path / "t.png") as im:
        assert im.size == (3 * 20 + 2 * TRIPTYCH_GAP, 40 + TRIPTYCH_HEADER)


def test_mask_png_preserves_indices(tmp_path):
    path = tmp_path / "mask.png"
    save_mask_png(path, MASK, COLORS)
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.asarray(im), MASK.astype(np.uint8))
        pal = im.getpalette()
    assert tuple(pal[3:6]) == COLORS[1]
    with pytest.raises(ValueError):
        save_mask_png(tmp_path / "bad.png", np.array([[0, 300]]), COLORS)


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_plots_write_pngs(tmp_path):
    history = [
        {"epoch": 0, "train_loss": 1.2, "val_loss": None, "lr": 1e-3},
        {"epoch": 0, "val_loss": 1.0, "val_miou": 0.3},
        {"epoch": 1, "train_loss": 0.8, "val_loss": 0.7, "val_miou": 0.45, "lr": 5e-4},
        {"epoch": 2, "train_loss": float("nan")},
    ]
    plot_curves(history, tmp_path / "curves.png")
    assert _png_size(tmp_path / "curves.png") == (1000, 400)
    plot_curves([], tmp_path / "empty.png")
    assert _png_size(tmp_path / "empty.png") == (1000, 400)

    cm = np.array([[5, 1, 0], [0, 3, 0], [0, 0, 0]])
    metrics = segmentation_metrics(cm, ["bg", "cat", "dog"])
    plot_per_class(metrics, tmp_path / "per_class.png", title="val")
    assert _png_size(tmp_path / "per_class.png")[0] == 800

    rows = [{"strategy": "head", "val_miou": 0.4}, {"strategy": "full", "val_miou": None}]
    plot_comparison(rows, tmp_path / "cmp.png")
    assert _png_size(tmp_path / "cmp.png")[1] == 400
