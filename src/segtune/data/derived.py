"""Data sets a run derives from the user's data (``segtune update``'s ``step_data``,
``segtune distill``'s ``distill_data``): images linked, masks rewritten as uint8 index PNGs.

The folder is filled under ``<name>.tmp`` and renamed into place by :meth:`DerivedData.finish`,
so a run folder never holds a half-written data set; the user's files are never changed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_yaml, link_or_copy

__all__ = ["DerivedData", "DERIVED_IGNORE"]

#: the ignore value of every derived data set's masks
DERIVED_IGNORE = 255
_SPLITS = ("train", "val")


class DerivedData:
    """Writer of ``run_dir/name``: ``{train,val}/{images,masks}`` + ``dataset.yaml``.

    Args:
        run_dir: the run folder.
        name: the data folder's name in it (an earlier ``name.tmp`` is removed first).
    """

    def __init__(self, run_dir: Path, name: str) -> None:
        self.final = Path(run_dir) / name
        self.tmp = Path(run_dir) / (name + ".tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        for split in _SPLITS:
            (self.tmp / split / "images").mkdir(parents=True)
            (self.tmp / split / "masks").mkdir(parents=True)

    def add(self, split: str, stem: str, image: str | Path, mask: np.ndarray) -> None:
        """Link ``image`` as ``split/images/<stem><suffix>``; write ``mask`` (H, W) as uint8
        ``split/masks/<stem>.png`` (values already class indices or ``DERIVED_IGNORE``)."""
        from PIL import Image

        image = Path(image)
        link_or_copy(image, self.tmp / split / "images" / f"{stem}{image.suffix.lower()}")
        Image.fromarray(mask.astype(np.uint8), mode="L").save(self.tmp / split / "masks" / f"{stem}.png")

    def finish(self, title: str, classes: list[str], colors: Any) -> Path:
        """Write ``dataset.yaml`` (index masks, ignore 255) and move the folder into place."""
        atomic_write_yaml(self.tmp / "dataset.yaml", {
            "name": title,
            "classes": list(classes),
            "colors": colors,
            "ignore_index": DERIVED_IGNORE,
            "mask_format": "index",
            "splits": {s: {"images": f"{s}/images", "masks": f"{s}/masks"} for s in _SPLITS},
        })
        shutil.rmtree(self.final, ignore_errors=True)
        os.replace(self.tmp, self.final)
        return self.final
