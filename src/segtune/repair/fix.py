"""Write a repaired copy of a data set: ``segtune check-data DATA --fix OUT``.

What is repaired, pair by pair (the originals are only read):

* masks at another resolution than their image, when the aspect ratios agree within 1%: resized
  with nearest neighbour (labels are never blended);
* EXIF-rotated images: the orientation is applied and the image saved as PNG; a mask that matches
  the image as stored (not as displayed) gets the same rotation;
* JPEG masks: compression noise snapped to the nearest valid value, saved as PNG;
* RGB colour masks, palette masks, binary 0/255 masks and masks read through a ``label_map``
  (standard layouts): saved as single-channel class-index PNGs (8 bit, or 16 bit when the class
  ids or ``ignore_index`` need it);
* everything else is copied byte for byte.

Not repairable, listed and left out of the copy: unreadable or truncated files, masks whose aspect
ratio differs from their image's, mask values outside the classes, unknown colours, unpaired or
ambiguous files. The copy gets a ``dataset.yaml`` (``mask_format: index``) and ``repair.json``
(every action and every file left out) and passes ``segtune check-data``. It is built in a
temporary folder beside ``OUT`` and renamed into place at the end, so an interrupted run leaves
no half-written copy; an existing ``OUT`` is never overwritten.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._io import atomic_write_json, atomic_write_yaml, temp_dir
from .._progress import progress_iter
from ..data.dataset import mask_storage_dtype
from ..data.decode import DEFAULT_MAX_PIXELS, DecodeError, _read_image, _read_mask
from ..data.pairing import LOSSY_MASK_EXTS, Problem, split_items
from ..data.spec import DatasetSpec, load_dataset_spec
from ..errors import RunError

__all__ = ["FixReport", "fix_dataset", "ASPECT_TOLERANCE"]

ASPECT_TOLERANCE = 0.01  # masks are resized only when (mask W/H) / (image W/H) is within 1% of 1
_ORIENT_OPS = {  # EXIF orientation -> the transpose that displays it (as ImageOps.exif_transpose)
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SHOWN = 20  # repairs printed by FixReport.format (repair.json has them all)
_NOT_COPIED = ("image has no mask (skipped)", "mask has no image (skipped)")


@dataclass
class FixReport:
    """Result of :func:`fix_dataset`.

    Attributes:
        out: the repaired copy's folder.
        pairs: split name -> pairs (or images, for unlabelled splits) written.
        repaired: ``(file, what was done)`` for every file that was changed, not just copied.
        not_repaired: problems of the files left out of the copy.
    """

    out: Path
    pairs: dict[str, int] = field(default_factory=dict)
    repaired: list[tuple[str, str]] = field(default_factory=list)
    not_repaired: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``repair.json`` holds)."""
        return {
            "out": str(self.out),
            "pairs": dict(self.pairs),
            "repaired": [{"file": f, "action": a} for f, a in self.repaired],
            "not_repaired": [{"path": p.path, "message": p.message, "hint": p.hint} for p in self.not_repaired],
        }

    def format(self) -> str:
        """Readable summary: counts, each repair, each file left out."""
        counts = ", ".join(f"{k} {v}" for k, v in self.pairs.items()) or "none"
        lines = [f"wrote a repaired copy to {self.out} (pairs: {counts})", f"repaired: {len(self.repaired)} file(s)"]
        lines += [f"  {f}: {a}" for f, a in self.repaired[:_SHOWN]]
        if len(self.repaired) > _SHOWN:
            lines.append(f"  ... and {len(self.repaired) - _SHOWN} more (all in {self.out / 'repair.json'})")
        lines.append(f"not repairable, left out of the copy: {len(self.not_repaired)} file(s)")
        lines += [f"  {p}" for p in self.not_repaired]
        return "\n".join(lines)


def fix_dataset(
    data: DatasetSpec | str | Path,
    out: str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
) -> FixReport:
    """Write a repaired copy of a data set to ``out`` (see the module docstring for the rules).

    Args:
        data: a :class:`DatasetSpec` or anything :func:`load_dataset_spec` accepts.
        out: the new folder; must not exist (or be empty) and must not lie inside the data set.
        max_pixels: refuse images above this many pixels (left out as not repairable).
        progress: show a progress bar.

    Returns:
        A :class:`FixReport`; the copy holds ``dataset.yaml`` and ``repair.json``.

    Raises:
        RunError: ``out`` exists and is not empty, or lies inside the data set folder.
    """
    spec = data if isinstance(data, DatasetSpec) else load_dataset_spec(data)
    out = _check_out(Path(out).expanduser().resolve(), spec)
    tmp = temp_dir(out.parent, prefix=f".{out.name}.", suffix=".fix-tmp")  # renamed to out when complete
    try:
        report = FixReport(out=out)
        tasks = _collect(spec, report)
        for sname, img, mask in progress_iter(tasks, "repairing data", show=None if progress else False):
            _fix_one(spec, sname, img, mask, tmp, max_pixels, report)
        atomic_write_yaml(tmp / "dataset.yaml", _copy_yaml(spec, report))
        atomic_write_json(tmp / "repair.json", report.to_dict())
        tmp.replace(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _check_out(out: Path, spec: DatasetSpec) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"{out}: already exists (give a new folder for the repaired copy; nothing is overwritten)")
    roots = [spec.root, *(s.images for s in spec.splits.values()), *(s.masks for s in spec.splits.values() if s.masks)]
    for r in roots:
        if out == r or r in out.parents:
            raise RunError(f"{out}: inside the data set ({r}); write the repaired copy to a folder outside it")
    return out


def _collect(spec: DatasetSpec, report: FixReport) -> list[tuple[str, Path, Path | None]]:
    """Every (split, image, mask or None) to copy; unpaired and ambiguous files go to ``not_repaired``."""
    tasks: list[tuple[str, Path, Path | None]] = []
    for sname, split in spec.splits.items():
        report.pairs[sname] = 0
        items, probs = split_items(split)
        tasks += [(sname, i, m) for i, m in items]
        report.not_repaired += [p for p in probs if p.is_error or p.message in _NOT_COPIED]
    return tasks


def _fix_one(spec: DatasetSpec, sname: str, img: Path, mask: Path | None, tmp: Path, max_pixels: int,
             report: FixReport) -> None:
    """Repair one pair into ``tmp/<split>/{images,masks}``; a failure goes to ``report.not_repaired``."""
    try:
        dimg = _read_image(img, max_pixels)
        arr, actions = (None, []) if mask is None else _fixed_mask(spec, img, mask, dimg, max_pixels)
    except _Unfixable as e:
        report.not_repaired.append(e.problem)
        return
    except DecodeError as e:
        report.not_repaired.append(Problem(e.path, e.what, e.hint))
        return
    img_dir, mask_dir = tmp / sname / "images", tmp / sname / "masks"
    name = img.name if dimg.orientation == 1 else f"{img.stem}.png"
    if (img_dir / name).exists() or any(img_dir.glob(f"{_glob_escape(img.stem)}.*")):
        report.not_repaired.append(Problem(str(img), f"another image of the split has the stem '{img.stem}'",
                                           "rename one of them"))
        return
    img_dir.mkdir(parents=True, exist_ok=True)
    if dimg.orientation == 1:
        shutil.copyfile(img, img_dir / name)
    else:
        Image.fromarray(dimg.array).save(img_dir / name)
        report.repaired.append((str(img), f"EXIF orientation {dimg.orientation} applied, saved as {name}"))
    if arr is not None:
        mask_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(mask_dir / f"{img.stem}.png")
        if actions:
            report.repaired.append((str(mask), "; ".join(actions)))
    report.pairs[sname] += 1


def _glob_escape(s: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in s)


class _Unfixable(Exception):
    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _fixed_mask(spec: DatasetSpec, img: Path, mask: Path, dimg: Any, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """The repaired ``(H, W)`` index mask (storage dtype) and the actions taken."""
    dm = _read_mask(mask, spec, max_pixels)
    m, actions = dm.array, _format_actions(spec, mask, dm.changed)
    ih, iw = dimg.array.shape[:2]
    dtype = np.uint8 if mask_storage_dtype(spec.num_classes, spec.ignore_index) == np.uint8 else np.uint16
    _check_values(spec, mask, m)
    m = m.astype(dtype)
    if m.shape != (ih, iw) and dimg.orientation != 1 and (m.shape[1], m.shape[0]) == tuple(dimg.raw_size):
        m = np.asarray(Image.fromarray(m).transpose(_ORIENT_OPS[dimg.orientation]))
        actions.append(f"rotated like its image (EXIF orientation {dimg.orientation})")
    if m.shape != (ih, iw):
        m = _resize_nearest(mask, img, m, ih, iw)
        actions.append(f"resized {dm.array.shape[1]}x{dm.array.shape[0]} -> {iw}x{ih} (nearest neighbour)")
    return np.ascontiguousarray(m), actions


def _format_actions(spec: DatasetSpec, mask: Path, changed: int) -> list[str]:
    actions = []
    if mask.suffix.lower() in LOSSY_MASK_EXTS:
        actions.append(f"JPEG mask: {changed} px snapped to the nearest valid value, saved as PNG")
    elif changed:
        actions.append(f"{changed} px thresholded at {spec.binary_threshold}")
    with Image.open(mask) as im:
        mode = im.mode
    if mode in ("RGB", "RGBA", "RGBX") and spec.colors is not None and spec.mask_format != "binary":
        actions.append("colour mask converted to class indices")
    elif mode in ("P", "PA"):
        actions.append("palette mask saved as class indices")
    if spec.mask_format == "binary":
        actions.append("binary mask saved as 0/1")
    if spec.label_map:
        actions.append("stored values mapped to class ids (label_map)")
    return actions


def _check_values(spec: DatasetSpec, mask: Path, m: np.ndarray) -> None:
    if not 0 <= spec.ignore_index <= 65535:
        raise _Unfixable(Problem(str(mask), f"ignore_index {spec.ignore_index} does not fit a 16-bit PNG",
                                 "not repairable: set ignore_index to a value 0..65535"))
    bad = (m != spec.ignore_index) & ((m < 0) | (m >= spec.num_classes))
    if bad.any():
        vals = np.unique(m[bad])[:8].tolist()
        raise _Unfixable(Problem(str(mask), f"mask values {vals} outside the {spec.num_classes} classes and not "
                                 f"ignore_index {spec.ignore_index}", "not repairable: fix the mask or classes:"))


def _resize_nearest(mask: Path, img: Path, m: np.ndarray, ih: int, iw: int) -> np.ndarray:
    mh, mw = m.shape
    if not mh or not ih or abs((mw / mh) / (iw / ih) - 1.0) > ASPECT_TOLERANCE:
        raise _Unfixable(Problem(
            str(mask), f"mask is {mw}x{mh} but image {img.name} is {iw}x{ih}: the aspect ratios differ by more than 1%",
            "not repairable: re-export the mask at the image's size",
        ))
    rows = np.minimum((np.arange(ih) + 0.5) * mh / ih, mh - 1).astype(np.int64)
    cols = np.minimum((np.arange(iw) + 0.5) * mw / iw, mw - 1).astype(np.int64)
    return m[rows][:, cols]


def _copy_yaml(spec: DatasetSpec, report: FixReport) -> dict[str, Any]:
    d: dict[str, Any] = {"name": spec.name, "classes": list(spec.classes)}
    if spec.colors is not None:
        d["colors"] = [list(c) for c in spec.colors]
    d["ignore_index"] = int(spec.ignore_index)
    d["mask_format"] = "index"
    d["splits"] = {
        s: {"images": f"{s}/images", **({"masks": f"{s}/masks"} if split.masks is not None else {})}
        for s, split in spec.splits.items()
        if report.pairs.get(s)
    }
    return d
