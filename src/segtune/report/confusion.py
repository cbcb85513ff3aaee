"""Confusion-matrix plot: rows (ground truth) normalised to sum to 1, with the class names."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .plots import PathLike, _new_figure, _save_figure

__all__ = ["plot_confusion_matrix", "row_normalize"]


def row_normalize(cm: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
    """``(C, C)`` counts (rows = truth) -> ``(C, C)`` float64 fractions of each row; rows with no
    pixels (class absent from the ground truth) are NaN."""
    m = np.asarray(cm, dtype=np.float64)
    sums = m.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, m / np.where(sums > 0, sums, 1), np.nan)


def plot_confusion_matrix(cm: np.ndarray | Sequence[Sequence[int]], names: Sequence[str], path: PathLike,
                          title: str | None = None) -> None:
    """Heat map of the row-normalised confusion matrix, written atomically as PNG.

    Cell (i, j) is the fraction of class i's ground-truth pixels predicted as class j (the
    diagonal is each class's recall); values are printed in the cells (up to 20 classes).
    Classes absent from the ground truth have a grey row marked N/A.

    Args:
        cm: ``(C, C)`` pixel counts, rows = truth, columns = prediction.
        names: the C class names (axis labels).
        path: output ``.png``; about 0.45 inch per class, at least 5 inches square.
        title: figure title (default: "confusion matrix (rows normalised)").
    """
    frac = row_normalize(cm)
    c = frac.shape[0]
    side = min(max(5.0, 1.5 + 0.45 * c), 40.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.subplots()
    shown = np.ma.masked_invalid(frac)
    import matplotlib

    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#dddddd")
    im = ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class's pixels")
    ticks = np.arange(c)
    labels = [str(n) for n in names] if len(names) == c else [str(i) for i in range(c)]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if c <= 20:
        for i in range(c):
            for j in range(c):
                v = frac[i, j]
                text = "N/A" if np.isnan(v) and j == 0 else ("" if np.isnan(v) else f"{v:.2f}")
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if not np.isnan(v) and v > 0.6 else "black")
    ax.set_title(title or "confusion matrix (rows normalised)")
    fig.tight_layout()
    _save_figure(fig, path)
