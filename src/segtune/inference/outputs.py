"""Optional outputs of ``segtune predict``: per-class probability maps and a CSV of class areas.

* Probability maps (``--probabilities``): ``OUT/probabilities/<stem>/<k>_<class>.png``, one
  8-bit grayscale PNG per class ``k`` (two digits, then the class name with characters other
  than letters, digits, ``-`` and ``_`` replaced by ``_``), pixel value = round(255 x p), the
  class's softmax probability (averaged over the TTA views and blended over tiles when those
  are on). The image's mask is the class with the highest probability, so at every pixel the
  mask's class has the largest value of all the maps.
* Areas (``--areas FILE.csv``): one row per image and class: ``image`` (file name),
  ``class_index``, ``class``, ``pixels`` (count in the predicted mask), ``fraction`` (pixels
  divided by the image's height x width, 6 decimals).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .._io import atomic_path, atomic_write_text

__all__ = ["AREA_COLUMNS", "area_rows", "probability_map_paths", "quantize_probabilities",
           "write_areas_csv", "write_probability_maps"]

AREA_COLUMNS = ("image", "class_index", "class", "pixels", "fraction")


def quantize_probabilities(probs: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` float probabilities in [0, 1] -> ``(C, H, W)`` uint8 = round(255 x p)."""
    return probs.mul(255).round_().clamp_(0, 255).to(torch.uint8).numpy()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(name)).strip("_") or "class"


def probability_map_paths(out_dir: str | Path, stem: str, classes: Sequence[str]) -> list[Path]:
    """Where the maps of image ``stem`` go: ``out_dir/probabilities/<stem>/<k>_<class>.png``."""
    folder = Path(out_dir) / "probabilities" / stem
    return [folder / f"{k:02d}_{_safe(c)}.png" for k, c in enumerate(classes)]


def write_probability_maps(out_dir: str | Path, stem: str, probs_u8: np.ndarray, classes: Sequence[str]) -> list[Path]:
    """Write one grayscale PNG per class (rename-atomic each).

    Args:
        out_dir: predict's output folder.
        stem: the image's file name without extension.
        probs_u8: ``(C, H, W)`` uint8 probabilities x 255 (:func:`quantize_probabilities`).
        classes: the C class names.

    Returns:
        The paths written, in class order.
    """
    from PIL import Image

    names = list(classes) if len(classes) == probs_u8.shape[0] else [f"class_{k}" for k in range(probs_u8.shape[0])]
    paths = probability_map_paths(out_dir, stem, names)
    paths[0].parent.mkdir(parents=True, exist_ok=True)
    for path, plane in zip(paths, probs_u8, strict=True):
        with atomic_path(path, durable=False) as tmp:
            Image.fromarray(np.ascontiguousarray(plane)).save(tmp, format="PNG")
    return paths


def area_rows(image_name: str, mask: np.ndarray, classes: Sequence[str]) -> list[dict[str, object]]:
    """One row per class: pixels of the ``(H, W)`` class-index mask in that class, and their fraction."""
    counts = np.bincount(mask.reshape(-1).astype(np.int64, copy=False), minlength=len(classes))
    total = int(mask.size)
    return [
        {"image": image_name, "class_index": k, "class": name, "pixels": int(counts[k]),
         "fraction": round(int(counts[k]) / total, 6) if total else 0.0}
        for k, name in enumerate(classes)
    ]


def write_areas_csv(path: str | Path, rows: Sequence[dict[str, object]]) -> Path:
    """Write the rows of :func:`area_rows` as CSV (header :data:`AREA_COLUMNS`), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(AREA_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buf.getvalue())
    return path
