"""COCO JSON (as exported by CVAT, Label Studio, Roboflow and others) -> semantic index masks.

Rasterisation rules (one mask per image listed in the JSON, the size given by its ``width`` and
``height``):

* class ids: a category is the class with the same name in the data set's ``classes``; without
  ``classes:`` they are ``background`` (0) followed by the category names in category-id order.
  Pixels no annotation covers are class 0.
* polygons (``segmentation: [[x, y, ...], ...]``) and RLE (compressed or uncompressed ``counts``)
  are decoded with ``pycocotools``.
* overlaps: crowd regions (``iscrowd: 1``) are painted first, then the other annotations from the
  largest to the smallest area, so where two annotations overlap **the smaller one wins** (a cup on
  a table stays a cup); equal areas keep the JSON order (later wins).
* crowd regions are their category's class, or ``ignore_index`` with ``coco_crowd: ignore``.

The masks are written once into a cache folder keyed by the SHA-256 of the JSON file and of these
settings (``$XDG_CACHE_HOME/segtune/coco/``, default ``~/.cache/segtune/coco/``), never into the
data set; a changed JSON gets a new folder, an unchanged one is not decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .. import _log
from .._io import atomic_write_json, sha256_file
from .._progress import progress_iter
from ..errors import ConfigError, DataError

__all__ = [
    "CROWD_MODES",
    "default_cache_dir",
    "find_coco_jsons",
    "load_coco",
    "coco_classes",
    "describe_coco",
    "rasterize_coco",
    "coco_masks",
]

CROWD_MODES = ("class", "ignore")
_CACHE_VERSION = 1
_SPLIT_WORDS = (("val", "val"), ("test", "test"))
_SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}


def default_cache_dir() -> Path:
    """Where rasterised COCO masks are kept: ``$XDG_CACHE_HOME/segtune/coco`` (``~/.cache`` default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "segtune" / "coco"


def _looks_like_coco(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    return b'"images"' in head and head.lstrip()[:1] == b"{"


def find_coco_jsons(folder: str | Path) -> list[Path]:
    """COCO JSON files in ``folder``, ``folder/annotations`` or split folders (``train/``, ``valid/``,
    ``test/``: Roboflow's export), sorted by name within each folder."""
    p = Path(folder)
    out: list[Path] = []
    for d in (p, p / "annotations", *(p / s for s in _SPLIT_FOLDERS)):
        if d.is_dir():
            out += sorted(f for f in d.iterdir() if f.suffix.lower() == ".json" and f.is_file() and _looks_like_coco(f))
    return out


def load_coco(path: str | Path) -> dict[str, Any]:
    """Read and validate a COCO JSON (keys ``images``, ``annotations``, ``categories``).

    Raises:
        DataError: unreadable or invalid JSON, or required keys missing.
    """
    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read COCO JSON ({e})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e}); re-export it from the labelling tool") from None
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "categories")):
        raise DataError(
            f"{p}: not a COCO JSON (needs lists 'images' and 'categories'; export as 'COCO 1.0' / 'COCO JSON')"
        )
    d.setdefault("annotations", [])
    for im in d["images"]:
        if not all(k in im for k in ("id", "file_name", "width", "height")):
            raise DataError(f"{p}: image entry {str(im)[:80]} lacks id, file_name, width or height (re-export it)")
    return d


def coco_classes(coco: dict[str, Any]) -> list[str]:
    """``["background", *category names in category-id order]``."""
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    return ["background", *[str(c["name"]) for c in cats]]


def _split_of(json_path: Path) -> str:
    if json_path.parent.name.lower() in _SPLIT_FOLDERS:
        return _SPLIT_FOLDERS[json_path.parent.name.lower()]
    stem = json_path.stem.lower()
    for word, split in _SPLIT_WORDS:
        if word in stem:
            return split
    return "train"


def _images_dir(root: Path, json_path: Path, coco: dict[str, Any]) -> Path:
    """The folder the JSON's ``file_name`` entries are relative to (checked on the first images)."""
    names = [im["file_name"] for im in coco["images"][:5]]
    stem = json_path.stem.split("_")[-1]  # instances_train2017 -> train2017, instances_default -> default
    for c in (root / "images" / stem, root / "images", root / stem, root, json_path.parent):
        if names and any((c / n).is_file() for n in names):
            return c
    return root / "images" if (root / "images").is_dir() else root


def describe_coco(root: Path) -> dict[str, Any]:
    """dataset.yaml-style dict of a folder holding COCO JSON files (one split per file, by its split
    folder ``train/``, ``valid/``, ``test/``, else by name: ``*val*`` -> val, ``*test*`` -> test,
    anything else -> train).

    Raises:
        ConfigError: two JSON files map to the same split.
    """
    splits: dict[str, dict[str, Any]] = {}
    first: dict[str, Any] | None = None
    for j in find_coco_jsons(root):
        s = _split_of(j)
        if s in splits:
            raise ConfigError(
                f"{root}: {Path(splits[s]['coco']).name} and {j.name} would both be the {s} split "
                "(write a dataset.yaml with splits: {train: {images: DIR, coco: FILE.json}, val: ...})"
            )
        coco = load_coco(j)
        if first is None or s == "train":
            first = coco
        splits[s] = {"images": str(_images_dir(root, j, coco)), "coco": str(j)}
    return {
        "name": root.name,
        "classes": coco_classes(first) if first else ["background"],
        "ignore_index": 255,
        "mask_format": "index",
        "splits": splits,
    }


# ------------------------------------------------------------------ rasterising
def _mask_utils() -> Any:
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise ConfigError(
            "COCO JSON annotations need pycocotools: pip install 'segtune[coco]'"
        ) from None
    return mask_utils


def _decode_segm(mu: Any, segm: Any, h: int, w: int) -> np.ndarray | None:
    """``(H, W) bool`` of one annotation's segmentation (polygons or RLE), or None when empty/invalid."""
    if isinstance(segm, list):
        polys = [p for p in segm if isinstance(p, list) and len(p) >= 6]
        if not polys:
            return None
        rle = mu.merge(mu.frPyObjects(polys, h, w))
    elif isinstance(segm, dict) and "counts" in segm:
        rle = mu.frPyObjects(segm, h, w) if isinstance(segm["counts"], list) else dict(segm)
        if isinstance(rle.get("counts"), str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        return None
    m = mu.decode(rle)
    if m.ndim == 3:
        m = m.max(axis=2)
    return m.astype(bool)


def _paint(mu: Any, im: dict[str, Any], anns: list[dict[str, Any]], cat_to_class: dict[int, int],
           crowd: str, ignore_index: int, dtype: Any) -> np.ndarray:
    """One image's ``(H, W)`` index mask from its annotations (crowd first, then largest to smallest)."""
    h, w = int(im["height"]), int(im["width"])
    out = np.zeros((h, w), dtype)
    decoded = []
    for order, a in enumerate(anns):
        m = _decode_segm(mu, a.get("segmentation"), h, w)
        if m is None or m.shape != (h, w):
            continue
        is_crowd = bool(a.get("iscrowd", 0))
        value = ignore_index if (is_crowd and crowd == "ignore") else cat_to_class[a["category_id"]]
        decoded.append((0 if is_crowd else 1, -int(m.sum()), order, m, value))
    for *_, m, value in sorted(decoded, key=lambda t: t[:3]):
        out[m] = value
    return out


def _cat_map(path: Path, coco: dict[str, Any], classes: list[str]) -> dict[int, int]:
    index = {c: i for i, c in enumerate(classes)}
    missing = [str(c["name"]) for c in coco["categories"] if str(c["name"]) not in index]
    if missing:
        raise ConfigError(
            f"{path}: categories {missing[:8]} are not in classes: of the data set "
            "(add them to classes: in dataset.yaml, or remove classes: to take them from the JSON)"
        )
    return {int(c["id"]): index[str(c["name"])] for c in coco["categories"]}


def rasterize_coco(json_path: str | Path, out_dir: str | Path, classes: list[str], crowd: str = "class",
                   ignore_index: int = 255, progress: bool = True) -> int:
    """Write one PNG index mask per image of a COCO JSON into ``out_dir`` (see the module rules).

    Args:
        json_path: the COCO JSON.
        out_dir: output folder; a mask goes to ``out_dir/<file_name with .png>`` (sub-folders kept).
        classes: class names (class id = position); every category name must be one of them.
        crowd: ``class`` (crowd regions are their category) or ``ignore`` (``ignore_index``).
        ignore_index: value of ignored pixels.
        progress: show a progress bar.

    Returns:
        The number of masks written.
    """
    mu = _mask_utils()
    p = Path(json_path)
    coco = load_coco(p)
    cat_to_class = _cat_map(p, coco, classes)
    unknown = {a.get("category_id") for a in coco["annotations"]} - set(cat_to_class)
    if unknown:
        raise DataError(f"{p}: annotations use category ids {sorted(unknown)[:8]} not listed in categories (re-export it)")
    by_image: dict[Any, list[dict[str, Any]]] = {}
    for a in coco["annotations"]:
        by_image.setdefault(a.get("image_id"), []).append(a)
    dtype = np.uint8 if max(len(classes) - 1, ignore_index) <= 255 else np.uint16
    from PIL import Image

    out = Path(out_dir)
    for im in progress_iter(coco["images"], "rasterising COCO masks", show=None if progress else False):
        mask = _paint(mu, im, by_image.get(im["id"], []), cat_to_class, crowd, ignore_index, dtype)
        dst = (out / im["file_name"]).with_suffix(".png")
        dst.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(dst)
    return len(coco["images"])


def coco_masks(json_path: str | Path, classes: list[str], crowd: str = "class", ignore_index: int = 255,
               cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """The cached mask folder of a COCO JSON, rasterising it on the first call.

    The folder is named by the SHA-256 of the JSON bytes and of (classes, crowd, ignore_index), and
    is built in a temporary folder renamed into place when complete: a killed run never leaves a
    half-filled cache, and an unchanged JSON is never decoded twice.

    Returns:
        The folder of ``.png`` index masks (same relative names as the JSON's ``file_name``).
    """
    if crowd not in CROWD_MODES:
        raise ConfigError(f"coco_crowd: {crowd!r} is not valid; choose one of: {', '.join(CROWD_MODES)}")
    p = Path(json_path)
    if not p.is_file():
        raise DataError(f"{p}: COCO JSON not found (check coco: under splits in dataset.yaml)")
    settings = json.dumps([_CACHE_VERSION, list(classes), crowd, int(ignore_index)]).encode()
    key = hashlib.sha256(sha256_file(p).encode() + settings).hexdigest()[:24]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / key
    if (final / "cache.json").is_file():
        return final
    if final.exists():  # an incomplete folder from another version: rebuild it
        shutil.rmtree(final, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=cache))
    try:
        n = rasterize_coco(p, tmp, classes, crowd, ignore_index, progress)
        atomic_write_json(tmp / "cache.json", {"json": str(p.resolve()), "masks": n, "classes": list(classes),
                                              "crowd": crowd, "ignore_index": int(ignore_index)})
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log.info(f"{p}: rasterised {n} COCO masks into {final} (cached; reused while the JSON is unchanged)")
    return final
