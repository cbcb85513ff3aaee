"""The layout registry: a folder in a well-known structure -> a ``dataset.yaml``-style dict.

Each :class:`Layout` is one row: how to find its root from a folder the user gives (the folder
itself or a known subfolder), and what the data set looks like (classes, colours, ignore value,
label map, splits). The dict returned by :func:`describe_layout` uses the keys of dataset.yaml
(see :mod:`segtune.data.spec`) with absolute paths; keys written in the user's dataset.yaml
override it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._registry import Registry
from ..errors import ConfigError
from . import classes as _c

__all__ = ["Layout", "LAYOUTS", "describe_layout", "detect_layouts", "list_layouts"]


@dataclass(frozen=True)
class Layout:
    """A standard data set layout.

    Attributes:
        name: the ``format:`` value in dataset.yaml.
        detected_by: what a folder must hold to be detected as this layout (for help and errors).
        find_root: folder -> the layout's root inside it (the folder itself or a known subfolder),
            or ``None`` when the folder is not in this layout.
        describe: root -> dataset.yaml-style dict (absolute paths).
    """

    name: str
    detected_by: str
    find_root: Callable[[Path], Path | None]
    describe: Callable[[Path], dict[str, Any]]


LAYOUTS: Registry[Layout] = Registry("data layout", "format")


def _add(layout: Layout) -> Layout:
    return LAYOUTS.register(layout.name)(layout)


def list_layouts() -> list[str]:
    """Registered layout names, in registration order."""
    return LAYOUTS.names()


def detect_layouts(folder: str | Path) -> list[str]:
    """Names of the layouts whose structure ``folder`` holds (empty when none; several = ambiguous)."""
    p = Path(folder)
    return [n for n in LAYOUTS.names() if LAYOUTS.get(n).find_root(p) is not None]


def describe_layout(name: str, folder: str | Path) -> dict[str, Any]:
    """The dataset.yaml-style description of ``folder`` read as layout ``name``.

    Raises:
        ConfigError: unknown layout name, or the folder does not have that layout's structure.
    """
    layout = LAYOUTS.get(name)
    p = Path(folder).expanduser().resolve()
    root = layout.find_root(p)
    if root is None:
        raise ConfigError(
            f"{p}: format: {layout.name} but the folder does not look like it (expected {layout.detected_by}; "
            "set root: to the data set's folder, or remove format:)"
        )
    d = layout.describe(root)
    d.setdefault("format", layout.name)
    return d


def _first_dir(folder: Path, candidates: tuple[str, ...], need: tuple[str, ...]) -> Path | None:
    for c in candidates:
        root = folder / c if c else folder
        if all((root / n).is_dir() for n in need):
            return root
    return None


# ------------------------------------------------------------------ Pascal VOC
_VOC_NEED = ("JPEGImages", "SegmentationClass")


def _voc_root(folder: Path) -> Path | None:
    found = _first_dir(folder, ("", "VOC2012", "VOCdevkit/VOC2012"), _VOC_NEED)
    if found is None and (folder / "VOCdevkit").is_dir():
        for sub in sorted((folder / "VOCdevkit").glob("VOC*")):
            if all((sub / n).is_dir() for n in _VOC_NEED):
                return sub
    return found


def _voc(root: Path) -> dict[str, Any]:
    lists = root / "ImageSets" / "Segmentation"
    base = {"images": str(root / "JPEGImages"), "masks": str(root / "SegmentationClass")}
    splits = {s: {**base, "list": str(lists / f"{s}.txt")} for s in ("train", "val") if (lists / f"{s}.txt").is_file()}
    return {
        "name": root.name,
        "classes": list(_c.VOC_CLASSES),
        "colors": [list(c) for c in _c.voc_colors()],
        "ignore_index": 255,  # the boundary/"difficult" band
        "mask_format": "palette",
        "splits": splits or {"train": base},
    }


_add(Layout("voc", "JPEGImages/ + SegmentationClass/ (ImageSets/Segmentation/*.txt optional)", _voc_root, _voc))


# ------------------------------------------------------------------ Cityscapes
def _cityscapes_root(folder: Path) -> Path | None:
    return _first_dir(folder, ("", "cityscapes"), ("leftImg8bit", "gtFine"))


def _cityscapes(root: Path) -> dict[str, Any]:
    splits = {
        s: {
            "images": str(root / "leftImg8bit" / s),
            "masks": str(root / "gtFine" / s),
            "image_suffix": "_leftImg8bit",
            "mask_suffix": "_gtFine_labelIds",
            "recursive": True,
        }
        for s in ("train", "val")
        if (root / "leftImg8bit" / s).is_dir() and (root / "gtFine" / s).is_dir()
    }
    return {
        "name": "cityscapes",
        "classes": list(_c.CITYSCAPES_CLASSES),
        "colors": [list(c) for c in _c.CITYSCAPES_COLORS],
        "ignore_index": 255,
        "mask_format": "index",
        "label_map": {k: ("ignore" if v is None else v) for k, v in _c.CITYSCAPES_LABEL_TO_TRAIN.items()},
        "splits": splits,
    }


_add(Layout(
    "cityscapes",
    "leftImg8bit/<split>/<city>/*_leftImg8bit.png + gtFine/<split>/<city>/*_gtFine_labelIds.png",
    _cityscapes_root,
    _cityscapes,
))


# ------------------------------------------------------------------ ADE20K
def _ade_root(folder: Path) -> Path | None:
    return _first_dir(folder, ("", "ADEChallengeData2016"), ("images/training", "annotations/training"))


def _ade20k(root: Path) -> dict[str, Any]:
    splits = {
        s: {"images": str(root / "images" / sub), "masks": str(root / "annotations" / sub)}
        for s, sub in (("train", "training"), ("val", "validation"))
        if (root / "images" / sub).is_dir() and (root / "annotations" / sub).is_dir()
    }
    label_map: dict[int, Any] = {0: "ignore"}
    label_map.update({k: k - 1 for k in range(1, len(_c.ADE20K_CLASSES) + 1)})
    return {
        "name": "ade20k",
        "classes": list(_c.ADE20K_CLASSES),
        "ignore_index": 255,
        "mask_format": "index",
        "label_map": label_map,
        "splits": splits,
    }


_add(Layout(
    "ade20k",
    "[ADEChallengeData2016/]images/{training,validation}/ + annotations/{training,validation}/",
    _ade_root,
    _ade20k,
))


# ------------------------------------------------------------------ COCO JSON
def _coco_root(folder: Path) -> Path | None:
    from .coco import find_coco_jsons

    return folder if find_coco_jsons(folder) else None


def _coco(root: Path) -> dict[str, Any]:
    from .coco import describe_coco

    return describe_coco(root)


_add(Layout(
    "coco",
    "a COCO JSON (images, annotations, categories) in annotations/ or the folder, images beside it",
    _coco_root,
    _coco,
))
