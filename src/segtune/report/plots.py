"""Pictures of masks and training runs: colourised masks, overlays, triptychs and plots.

Images are written with Pillow (masks, overlays, triptychs) or matplotlib's Agg renderer
(curves and bar charts; matplotlib is imported lazily, and pyplot is never used, so no global
backend state is touched). Every file is written atomically through
:func:`segtune._io.atomic_path`.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._io import atomic_path

__all__ = [
    "default_palette",
    "colorize",
    "overlay",
    "save_triptych",
    "save_mask_png",
    "plot_curves",
    "plot_per_class",
    "plot_comparison",
    "finite_or_none",
]

Color = tuple[int, int, int]
PathLike = str | os.PathLike[str]

# Distinct, colour-blind-friendlier first colours (Tableau 10 + 10 more), then golden-angle hues.
_BASE_PALETTE: list[Color] = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]  # fmt: skip


def default_palette(n: int) -> list[Color]:
    """``n`` distinct RGB colours (deterministic; never pure black, which marks ignore).

    Args:
        n: number of colours.

    Returns:
        list of ``n`` ``(r, g, b)`` int tuples in 0..255.
    """
    out = list(_BASE_PALETTE[: max(n, 0)])
    k = 0
    while len(out) < n:
        hue = (k * 0.618033988749895) % 1.0
        sat = 0.55 + 0.35 * ((k // 7) % 2)
        val = 0.95 - 0.25 * ((k // 3) % 2)
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
        k += 1
    return out


def _lut(colors: Sequence[Sequence[int]] | None, n: int) -> np.ndarray:
    """(n, 3) uint8 colour table: ``colors`` first, default palette for the rest."""
    given = [tuple(int(v) for v in c[:3]) for c in (colors or [])]
    fill = default_palette(max(n, len(given)))
    table = given + fill[len(given) :]
    return np.asarray(table[: max(n, len(given))], dtype=np.uint8).reshape(-1, 3)


def colorize(
    mask: np.ndarray,
    colors: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Colour a class-index mask.

    Args:
        mask: (H, W) integer class indices.
        colors: per-class ``(r, g, b)``; ``None`` uses :func:`default_palette`. Indices beyond
            the list get default-palette colours.
        ignore_index: value drawn black (as are negative values).

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    m = m.astype(np.int64, copy=False)
    skip = m < 0
    if ignore_index is not None:
        skip |= m == ignore_index
    top = int(m[~skip].max()) + 1 if (~skip).any() else 0
    lut = _lut(colors, top)
    out = np.zeros((*m.shape, 3), dtype=np.uint8)
    if lut.shape[0]:
        idx = np.where(skip, 0, m)
        out[...] = lut[idx]
    out[skip] = 0
    return out


def _as_rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {img.shape}")
    img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    colors: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.5,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Blend a colourised mask over an image; ignored pixels show the image unchanged.

    Args:
        image: (H, W, 3) uint8 RGB (gray (H, W) is accepted).
        mask: (H, W) integer class indices.
        colors: per-class ``(r, g, b)`` or ``None`` for the default palette.
        alpha: mask opacity in [0, 1].
        ignore_index: label left uncoloured.

    Returns:
        (H, W, 3) uint8 RGB image.
    """
    img = _as_rgb(image)
    m = np.asarray(mask)
    if img.shape[:2] != m.shape:
        raise ValueError(f"image {img.shape[:2]} and mask {m.shape} sizes differ")
    a = float(np.clip(alpha, 0.0, 1.0))
    col = colorize(m, colors, ignore_index).astype(np.float32)
    blend = (1.0 - a) * img.astype(np.float32) + a * col
    out = np.rint(blend).clip(0, 255).astype(np.uint8)
    keep = m < 0
    if ignore_index is not None:
        keep |= m == ignore_index
    out[keep] = img[keep]
    return out


def _font(size: int = 12) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _resize_panels(
    image: np.ndarray, masks: list[np.ndarray], max_size: int | None
) -> tuple[np.ndarray, list[np.ndarray]]:
    from PIL import Image

    h, w = image.shape[:2]
    if not max_size or max(h, w) <= max_size:
        return image, masks
    s = max_size / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    img = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
    out = [np.asarray(Image.fromarray(m).resize(size, Image.Resampling.NEAREST)) for m in masks]
    return img, out


def _labelled(m: np.ndarray, ignore_index: int | None) -> np.ndarray:
    keep = m >= 0
    if ignore_index is not None:
        keep &= m != ignore_index
    return keep


TRIPTYCH_GAP = 4
TRIPTYCH_HEADER = 18


def save_triptych(
    path: PathLike,
    image: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    colors: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = 255,
    class_names: Sequence[str] | None = None,
    max_size: int | None = 1024,
) -> None:
    """Write ``input | ground truth | prediction`` side by side as a PNG.

    Layout: a ``TRIPTYCH_HEADER`` (18) px title strip, then the panels separated by
    ``TRIPTYCH_GAP`` (4) px white gaps, then (if ``class_names``) a legend strip listing the
    classes that occur in truth or prediction. Without a legend the PNG is
    ``(3 W + 2 gap) x (H + header)`` (``2 W + gap`` when ``truth`` is None). Panels larger
    than ``max_size`` on their longest side are downscaled first.

    Args:
        path: output ``.png`` path (written atomically).
        image: (H, W, 3) uint8 input image.
        truth: (H, W) int ground truth, or ``None`` (panel left out).
        pred: (H, W) int prediction.
        colors: per-class ``(r, g, b)``, ``None`` for the default palette.
        ignore_index: label drawn black.
        class_names: names for the legend; no legend when ``None``.
        max_size: longest panel side in pixels (``None``: keep full size).
    """
    from PIL import Image, ImageDraw

    img = _as_rgb(image)
    masks = [np.asarray(pred)] if truth is None else [np.asarray(truth), np.asarray(pred)]
    for m in masks:
        if m.shape != img.shape[:2]:
            raise ValueError(f"image {img.shape[:2]} and mask {m.shape} sizes differ")
    # int32 for PIL resizing (mode "I"); values preserved
    masks = [m.astype(np.int32) for m in masks]
    img, masks = _resize_panels(img, masks, max_size)
    h, w = img.shape[:2]
    n_classes = len(class_names) if class_names is not None else 0
    tops = [int(m[_labelled(m, ignore_index)].max(initial=-1)) + 1 for m in masks]
    n_colors = max([n_classes, len(colors or []), *tops])
    lut_colors = [tuple(int(v) for v in c) for c in _lut(colors, n_colors)]
    panels = [img] + [colorize(m, lut_colors, ignore_index) for m in masks]
    titles = ["input"] + (["prediction"] if truth is None else ["ground truth", "prediction"])

    font = _font(12)
    legend: list[tuple[str, Color]] = []
    if class_names is not None:
        seen: set[int] = set()
        for m in masks:
            seen.update(int(v) for v in np.unique(m))
        for i, name in enumerate(class_names):
            if i in seen:
                legend.append((str(name), lut_colors[i]))
    total_w = len(panels) * w + (len(panels) - 1) * TRIPTYCH_GAP

    # legend layout: swatch + name, wrapped into rows of the canvas width
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    row_h, sw, pad = 16, 12, 6
    items: list[tuple[int, int, str, Color]] = []
    x = y = pad
    for name, col in legend:
        iw = sw + 4 + int(math.ceil(probe.textlength(name, font=font))) + 2 * pad
        if x + iw > total_w and x > pad:
            x, y = pad, y + row_h
        items.append((x, y, name, col))
        x += iw
    legend_h = (y + row_h + pad) if items else 0

    canvas = Image.new("RGB", (total_w, TRIPTYCH_HEADER + h + legend_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for k, (panel, title) in enumerate(zip(panels, titles, strict=True)):
        x0 = k * (w + TRIPTYCH_GAP)
        canvas.paste(Image.fromarray(panel), (x0, TRIPTYCH_HEADER))
        draw.text((x0 + 3, 2), title, fill=(0, 0, 0), font=font)
    top = TRIPTYCH_HEADER + h
    for x, y, name, col in items:
        draw.rectangle([x, top + y + 2, x + sw, top + y + 2 + sw], fill=col, outline=(0, 0, 0))
        draw.text((x + sw + 4, top + y), name, fill=(0, 0, 0), font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")


def save_mask_png(
    path: PathLike,
    mask: np.ndarray,
    colors: Sequence[Sequence[int]] | None = None,
    durable: bool = True,
) -> None:
    """Write a class-index mask as a palette PNG (mode ``P``); pixel values are the indices.

    Reading it back with ``np.asarray(Image.open(path))`` returns the original indices.
    Palette entries 0..len(colors)-1 hold the class colours (the default palette when
    ``colors`` is None, sized to the largest index); other entries, including the usual ignore
    value 255, are black.

    Args:
        path: output ``.png`` path (written atomically).
        mask: (H, W) integer class indices in 0..255.
        colors: per-class ``(r, g, b)`` or ``None``.
        durable: fsync before the rename (see :func:`segtune._io.atomic_path`).

    Raises:
        ValueError: values outside 0..255 (they cannot be stored in a palette PNG).
    """
    from PIL import Image

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    if m.size and (int(m.min()) < 0 or int(m.max()) > 255):
        raise ValueError(
            f"mask values must be in 0..255 for a palette PNG, got {int(m.min())}..{int(m.max())}"
        )
    if colors is None:
        top = int(m[m != 255].max(initial=-1)) + 1
        colors = default_palette(top)
    pal = np.zeros((256, 3), dtype=np.uint8)
    given = np.asarray([tuple(int(v) for v in c[:3]) for c in colors][:256], dtype=np.uint8)
    pal[: len(given)] = given.reshape(-1, 3)
    pimg = Image.fromarray(np.ascontiguousarray(m, dtype=np.uint8))  # mode "L"
    pimg.putpalette(pal.flatten().tolist())  # turns "L" into "P" keeping the index values
    with atomic_path(path, durable=durable) as tmp:
        pimg.save(tmp, format="PNG")


def finite_or_none(v: Any) -> float | None:
    """``v`` as a float, or ``None`` when missing, a bool, not a number, NaN or infinite."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig: Any, path: PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_curves(history: Sequence[dict[str, Any]], path: PathLike) -> None:
    """Plot training curves: losses (left) and validation mIoU (right); PNG 1000x400 px.

    Args:
        history: rows with any of ``epoch``, ``train_loss``, ``val_loss``, ``val_miou``, ``lr``;
            missing, ``None`` or non-finite values are skipped (rows without ``epoch`` use
            their position). ``lr`` is drawn on a log-scale secondary axis of the loss panel.
        path: output ``.png`` path (written atomically).
    """

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i, row in enumerate(history):
            y = finite_or_none(row.get(key))
            if y is None:
                continue
            x = finite_or_none(row.get("epoch"))
            xs.append(float(i) if x is None else x)
            ys.append(y)
        return xs, ys

    fig = _new_figure(10, 4)
    ax_loss, ax_miou = fig.subplots(1, 2)
    drawn = False
    for key, label, style in (("train_loss", "train loss", "-o"), ("val_loss", "val loss", "-s")):
        xs, ys = series(key)
        if xs:
            ax_loss.plot(xs, ys, style, label=label, markersize=3)
            drawn = True
    xs, ys = series("lr")
    if xs and any(y > 0 for y in ys):
        ax_lr = ax_loss.twinx()
        ax_lr.plot(xs, ys, ":", color="gray", label="lr")
        ax_lr.set_yscale("log")
        ax_lr.set_ylabel("learning rate", color="gray")
    ax_loss.set_title("loss")
    ax_loss.set_xlabel("epoch")
    if drawn:
        ax_loss.legend(loc="upper right")
    else:
        ax_loss.text(
            0.5, 0.5, "no loss values", ha="center", va="center", transform=ax_loss.transAxes
        )

    xs, ys = series("val_miou")
    if xs:
        ax_miou.plot(xs, ys, "-o", color="tab:green", markersize=3, label="val mIoU")
        best = int(np.argmax(ys))
        ax_miou.plot([xs[best]], [ys[best]], "*", color="tab:red", markersize=10,
                     label=f"best {ys[best]:.3f}")  # fmt: skip
        ax_miou.legend(loc="lower right")
    else:
        ax_miou.text(0.5, 0.5, "no validation yet", ha="center", va="center",
                     transform=ax_miou.transAxes)  # fmt: skip
    ax_miou.set_ylim(0, 1)
    ax_miou.set_title("validation mIoU")
    ax_miou.set_xlabel("epoch")
    for ax in (ax_loss, ax_miou):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_per_class(metrics: dict[str, Any], path: PathLike, title: str | None = None) -> None:
    """Horizontal bars of per-class IoU; classes absent from truth and prediction say N/A.

    Args:
        metrics: dict from :func:`segtune.metrics.segmentation_metrics`.
        path: output ``.png`` path (written atomically); 800 px wide, height grows with C.
        title: figure title (default shows the mIoU).
    """
    rows = list(metrics.get("per_class", []))
    n = max(len(rows), 1)
    fig = _new_figure(8, min(2.0 + 0.3 * n, 40.0))
    ax = fig.subplots()
    names = [str(r.get("name", r.get("index", i))) for i, r in enumerate(rows)]
    vals = [finite_or_none(r.get("iou")) for r in rows]
    ys = np.arange(len(rows))
    palette = default_palette(len(rows))
    ax.barh(ys, [v or 0.0 for v in vals],
            color=[tuple(c / 255 for c in col) for col in palette])  # fmt: skip
    for y, v in zip(ys, vals, strict=True):
        text = "N/A" if v is None else f"{v:.3f}"
        ax.text((v or 0.0) + 0.01, y, text, va="center", fontsize=8,
                color="gray" if v is None else "black")  # fmt: skip
    ax.set_yticks(ys)
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("IoU")
    miou = finite_or_none(metrics.get("miou"))
    if miou is not None:
        ax.axvline(miou, color="tab:red", linestyle="--", linewidth=1)
    if title is None:
        title = "per-class IoU" + (f" (mIoU {miou:.3f})" if miou is not None else "")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_comparison(rows: Sequence[dict[str, Any]], path: PathLike) -> None:
    """Bar chart of validation mIoU per strategy (missing values shown as N/A).

    Args:
        rows: dicts with ``strategy`` (str) and ``val_miou`` (float or None).
        path: output ``.png`` path (written atomically).
    """
    names = [str(r.get("strategy", f"run {i}")) for i, r in enumerate(rows)]
    vals = [finite_or_none(r.get("val_miou")) for r in rows]
    fig = _new_figure(max(5.0, 1.2 * len(rows) + 2), 4)
    ax = fig.subplots()
    xs = np.arange(len(rows))
    palette = default_palette(len(rows))
    ax.bar(xs, [v or 0.0 for v in vals], color=[tuple(c / 255 for c in col) for col in palette])
    for x, v in zip(xs, vals, strict=True):
        ax.text(x, (v or 0.0) + 0.01, "N/A" if v is None else f"{v:.3f}", ha="center",
                va="bottom", fontsize=9)  # fmt: skip
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=20 if len(rows) > 4 else 0)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("val mIoU")
    ax.set_title("transfer strategies")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)
