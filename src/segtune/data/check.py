"""Pre-flight data check: every problem of a data set in one pass, plus class and size statistics.

``check_data`` reads every image and mask once, exactly as training will, and reports all problems
(one line each, with a hint) instead of stopping at the first: missing pairs, size mismatches,
out-of-range mask values, unknown RGB colours, unreadable or empty files, empty folders, bad
channel counts, all-ignore masks, classes absent from the training masks, train/val leakage and
tiny images. It also tallies the class pixel frequencies of the train split and the image sizes.
"""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._progress import progress_iter
from .decode import DEFAULT_MAX_PIXELS, DecodeError, _read_image, _read_mask
from .pairing import Problem, split_items
from .spec import DatasetSpec, load_dataset_spec

__all__ = ["Problem", "DataReport", "check_data", "MIN_SIDE"]

MIN_SIDE = 32  # images smaller than this on either side get a warning
_MAX_BINCOUNT = 1 << 20
_ORPHAN_MESSAGES = ("image has no mask (skipped)", "mask has no image (skipped)")


@dataclass
class DataReport:
    """Result of :func:`check_data`.

    Attributes:
        spec: the data set checked.
        problems: every problem found, errors and warnings (``Problem.level``).
        pairs: split name -> the usable ``(image, mask)`` pairs (pairs with an error left out).
        class_pixels: ``(C,) int64`` pixels per class over the usable train masks.
        ignore_pixels: pixels equal to ``ignore_index`` in those masks.
        size_stats: split name -> ``{"count", "width": {"min", "median", "max"}, "height": {...}}``.
        bad_files: images whose pair has an error (training with ``data.skip_bad`` drops them).
        seconds: how long the check took.
    """

    spec: DatasetSpec
    problems: list[Problem]
    pairs: dict[str, list[tuple[Path, Path]]]
    class_pixels: np.ndarray
    ignore_pixels: int
    size_stats: dict[str, Any]
    bad_files: set[Path] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        """Problems with ``level == "error"``."""
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        """Problems with ``level == "warning"``."""
        return [p for p in self.problems if p.level != "error"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def class_table(self) -> list[dict[str, Any]]:
        """Rows ``{"id", "name", "pixels", "percent"}`` of the train class frequencies.

        ``percent`` is the share of all train mask pixels (ignore pixels included in the total).
        """
        total = int(self.class_pixels.sum()) + int(self.ignore_pixels)
        return [
            {
                "id": i,
                "name": name,
                "pixels": int(self.class_pixels[i]),
                "percent": 100.0 * int(self.class_pixels[i]) / total if total else 0.0,
            }
            for i, name in enumerate(self.spec.classes)
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (problems as strings with their level, table, sizes, pair counts)."""
        return {
            "ok": self.ok,
            "dataset": self.spec.name,
            "pairs": {k: len(v) for k, v in self.pairs.items()},
            "problems": [
                {"level": p.level, "path": p.path, "message": p.message, "hint": p.hint}
                for p in self.problems
            ],
            "class_pixels": self.class_table(),
            "ignore_pixels": int(self.ignore_pixels),
            "size_stats": self.size_stats,
            "seconds": round(self.seconds, 3),
        }

    def format(self) -> str:
        """Readable report: problems first, then the train class frequency table, then sizes."""
        spec = self.spec
        lines: list[str] = []
        counts = ", ".join(f"{k} {len(v)}" for k, v in self.pairs.items()) or "none"
        lines.append(
            f"data set '{spec.name}' ({spec.source}): {spec.num_classes} classes, "
            f"ignore_index {spec.ignore_index}, usable pairs: {counts}"
        )
        ne, nw = len(self.errors), len(self.warnings)
        lines.append("")
        lines.append(
            f"problems: {ne} error(s), {nw} warning(s)" + ("" if self.problems else " - all good")
        )
        for p in self.errors + self.warnings:
            lines.append(f"  {p.level}: {p}")

        lines.append("")
        n_train = len(self.pairs.get("train", []))
        lines.append(f"class pixels (train split, {n_train} masks):")
        rows = self.class_table()
        w_name = max(
            [len("class"), len(f"ignore ({spec.ignore_index})")] + [len(r["name"]) for r in rows]
        )
        w_px = max(
            [len("pixels"), len(f"{int(self.ignore_pixels):,}")]
            + [len(f"{r['pixels']:,}") for r in rows]
        )
        lines.append(f"  {'id':>3}  {'class':<{w_name}}  {'pixels':>{w_px}}  {'%':>6}")
        total = int(self.class_pixels.sum()) + int(self.ignore_pixels)
        for r in rows:
            flag = "  (absent)" if r["pixels"] == 0 else ""
            lines.append(
                f"  {r['id']:>3}  {r['name']:<{w_name}}  {r['pixels']:>{w_px},}  {r['percent']:>6.2f}{flag}"
            )
        ign_pct = 100.0 * int(self.ignore_pixels) / total if total else 0.0
        lines.append(
            f"  {'-':>3}  {f'ignore ({spec.ignore_index})':<{w_name}}  {int(self.ignore_pixels):>{w_px},}  {ign_pct:>6.2f}"
        )

        lines.append("")
        lines.append("image sizes (pixels):")
        lines.append(
            f"  {'split':<6} {'count':>6}  {'width min/median/max':>22}  {'height min/median/max':>22}"
        )
        for split, st in self.size_stats.items():
            if not st["count"]:
                lines.append(f"  {split:<6} {0:>6}")
                continue
            w, h = st["width"], st["height"]
            ws = f"{w['min']}/{_num(w['median'])}/{w['max']}"
            hs = f"{h['min']}/{_num(h['median'])}/{h['max']}"
            lines.append(f"  {split:<6} {st['count']:>6}  {ws:>22}  {hs:>22}")
        lines.append("")
        lines.append(
            f"checked in {self.seconds:.1f} s: " + ("OK" if self.ok else f"{ne} error(s) to fix")
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:.1f}"


# ------------------------------------------------------------------ the check
class _Agg:
    """Collects per-file notes of the same kind into one warning per split."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], list[Any]] = {}

    def add(self, split: str, kind: str, path: Path, msg: str) -> None:
        item = self.items.setdefault((split, kind), [0, path, msg])
        item[0] += 1

    def problems(self) -> list[Problem]:
        out = []
        for (split, _kind), (n, path, msg) in self.items.items():
            more = f" [and {n - 1} more file(s) in {split}]" if n > 1 else ""
            out.append(Problem(str(path), msg + more, level="warning"))
        return out


_SKIP_NOTES = {"jpeg_mask", "cmyk", "binary_threshold"}  # reported per folder / by _snapped_problems / harmless


def _hash_file(path: Path) -> str | None:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _value_counts(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values of an int64 mask and their pixel counts (bincount when the range is small)."""
    flat = m.ravel()
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, hi = int(flat.min()), int(flat.max())
    if lo >= 0 and hi < _MAX_BINCOUNT:
        bc = np.bincount(flat)
        vals = np.nonzero(bc)[0]
        return vals.astype(np.int64), bc[vals].astype(np.int64)
    vals, counts = np.unique(flat, return_counts=True)
    return vals.astype(np.int64), counts.astype(np.int64)


def check_data(
    spec_or_path: DatasetSpec | str | Path,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    strict: bool = False,
) -> DataReport:
    """Check a whole data set in one pass and report every problem.

    Args:
        spec_or_path: a :class:`DatasetSpec`, or anything :func:`load_dataset_spec` accepts.
        max_pixels: refuse images above this many pixels (reported as an error for that file).
        progress: show a progress bar on stderr (only when stderr is a terminal).
        strict: report images without masks and masks without images as errors, not warnings.

    Returns:
        A :class:`DataReport`; ``report.ok`` is False when any error was found. Pairs with an error
        are left out of ``report.pairs`` and their images are in ``report.bad_files``.

    Raises:
        DataError / ConfigError: only when the data set description itself cannot be loaded.
    """
    t0 = time.perf_counter()
    spec = (
        spec_or_path if isinstance(spec_or_path, DatasetSpec) else load_dataset_spec(spec_or_path)
    )
    tally = _Tally(spec)
    tasks = _collect_pairs(spec, strict, tally)
    for sname, img, mask in progress_iter(tasks, "checking data", show=None if progress else False):
        _check_pair(sname, img, mask, max_pixels, tally)
    problems = (tally.problems + tally.agg.problems() + _snapped_problems(spec, tally) + _leakage(tally.hashes)
                + _summary_problems(spec, tally))
    problems.sort(key=lambda p: p.level != "error")  # errors first (stable), warnings after
    return DataReport(
        spec=spec,
        problems=problems,
        pairs=tally.pairs,
        class_pixels=tally.class_px,
        ignore_pixels=int(tally.ignore_px),
        size_stats={s: _size_stats(v) for s, v in tally.sizes.items()},
        bad_files=tally.bad,
        seconds=time.perf_counter() - t0,
    )


class _Tally:
    """What one pass over the pairs accumulates (problems, usable pairs, class pixels, sizes)."""

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.problems: list[Problem] = []
        self.pairs: dict[str, list[tuple[Path, Path]]] = {}
        self.bad: set[Path] = set()
        self.agg = _Agg()
        self.class_px = np.zeros(spec.num_classes, dtype=np.int64)
        self.ignore_px = 0
        self.default_ignore_masks = 0  # masks holding the default (unstated) ignore value
        self.sizes: dict[str, list[tuple[int, int]]] = {}
        self.hashes: dict[str, list[tuple[str, Path]]] = {}
        self.snapped: dict[str, list[Any]] = {}  # split -> [masks, pixels, first mask]


def _collect_pairs(spec: DatasetSpec, strict: bool, tally: _Tally) -> list[tuple[str, Path, Path | None]]:
    """Every (split, image, mask or None) to check; pairing problems go to ``tally``."""
    tasks: list[tuple[str, Path, Path | None]] = []
    for sname, split in spec.splits.items():
        tally.pairs[sname] = []
        tally.sizes[sname] = []
        items, probs = split_items(split)
        tasks += [(sname, i, m) for i, m in items]
        for p in probs:
            if strict and p.message in _ORPHAN_MESSAGES:
                p.level = "error"
            tally.problems.append(p)
    return tasks


def _check_image(sname: str, img: Path, max_pixels: int, tally: _Tally) -> Any:
    """Decode one image; its problems and notes go to ``tally``. Returns the decoded image or None."""
    digest = _hash_file(img)
    if digest is not None:
        tally.hashes.setdefault(digest, []).append((sname, img))
    try:
        dimg = _read_image(img, max_pixels)
    except DecodeError as e:
        tally.problems.append(Problem(e.path, e.what, e.hint))
        return None
    h, w = dimg.array.shape[:2]
    tally.sizes[sname].append((w, h))
    if min(w, h) < MIN_SIDE:
        tally.problems.append(
            Problem(
                str(img),
                f"tiny image ({w}x{h}, under {MIN_SIDE} px on a side)",
                "it will be padded with ignore pixels; check that it belongs to the data set",
                level="warning",
            )
        )
    for kind, msg in dimg.notes:
        if kind not in _SKIP_NOTES:
            tally.agg.add(sname, "img:" + kind, img, msg)
    return dimg


def _check_mask(sname: str, img: Path, mask: Path, dimg: Any, max_pixels: int, tally: _Tally) -> bool:
    """Decode and check one mask against its image; True when the pair is usable."""
    spec = tally.spec
    C, ign = spec.num_classes, spec.ignore_index
    try:
        dm = _read_mask(mask, spec, max_pixels)
    except DecodeError as e:
        tally.problems.append(Problem(e.path, e.what, e.hint))
        return False
    ok = True
    for kind, msg in dm.notes:
        if kind not in _SKIP_NOTES:
            tally.agg.add(sname, "mask:" + kind, mask, msg)
    if dm.changed:
        item = tally.snapped.setdefault(sname, [0, 0, mask])
        item[0] += 1
        item[1] += dm.changed
    m = dm.array
    if dimg is not None and m.shape != dimg.array.shape[:2]:
        ok = False
        tally.problems.append(_size_problem(img, mask, dimg, m))
    vals, counts = _value_counts(m)
    bad_vals = [(int(v), int(n)) for v, n in zip(vals, counts, strict=True) if not (0 <= v < C) and v != ign]
    if bad_vals:
        ok = False
        shown = ", ".join(f"{v} ({n} px)" for v, n in bad_vals[:8])
        more = f" and {len(bad_vals) - 8} more" if len(bad_vals) > 8 else ""
        tally.problems.append(
            Problem(
                str(mask),
                f"mask values outside the {C} classes (0..{C - 1}) and not ignore_index {ign}: {shown}{more}",
                _values_hint(spec, [v for v, _ in bad_vals]),
            )
        )
    n_ign = int(counts[vals == ign].sum()) if counts.size else 0
    if n_ign and not spec.ignore_index_explicit:
        tally.default_ignore_masks += 1
    if m.size and n_ign == m.size:
        tally.problems.append(
            Problem(
                str(mask),
                f"every pixel is ignore_index {ign}: the mask has no labels",
                "label it or remove the pair; it contributes nothing to training",
                level="warning",
            )
        )
    if ok and dimg is not None and sname == "train":
        ok_vals = (vals >= 0) & (vals < C)
        np.add.at(tally.class_px, vals[ok_vals], counts[ok_vals])
        tally.ignore_px += n_ign
    return ok


def _check_pair(sname: str, img: Path, mask: Path | None, max_pixels: int, tally: _Tally) -> None:
    dimg = _check_image(sname, img, max_pixels, tally)
    ok = dimg is not None
    if mask is not None:
        ok = _check_mask(sname, img, mask, dimg, max_pixels, tally) and ok
        if ok:
            tally.pairs[sname].append((img, mask))
    if not ok:
        tally.bad.add(img)


def _summary_problems(spec: DatasetSpec, tally: _Tally) -> list[Problem]:
    """Data-set-level warnings: the default ignore value in use, classes absent from training."""
    out: list[Problem] = []
    ign = spec.ignore_index
    if tally.default_ignore_masks and spec.yaml_path is not None:
        out.append(
            Problem(
                spec.source,
                f"{tally.default_ignore_masks} mask(s) hold {ign}, read as ignore_index {ign} (the default; "
                "dataset.yaml does not set ignore_index): those pixels count in no loss or metric",
                f"write ignore_index: {ign} to confirm, or list the class in classes: and set "
                "ignore_index to an unused value if it is a class",
                level="warning",
            )
        )
    if tally.pairs.get("train"):
        out += _absent_class_problems(spec, [int(c) for c in np.nonzero(tally.class_px == 0)[0]])
    return out


_MAX_ABSENT_LINES = 5  # more absent classes than this: one warning lists them all


def _absent_class_problems(spec: DatasetSpec, absent: list[int]) -> list[Problem]:
    """One warning per class absent from the train masks; one warning for all when there are many
    (e.g. classes inferred from JPEG noise: hundreds of one-line warnings would hide the rest)."""
    hint = "metrics will exclude it as absent; check classes: in dataset.yaml or the masks"
    if spec.num_classes == 2 and spec.ignore_index == 255 and spec.ignore_index_explicit:
        hint += " (if 255 marks the foreground, set mask_format: binary)"
    if len(absent) > _MAX_ABSENT_LINES:
        shown = ", ".join(f"{c} '{spec.classes[c]}'" for c in absent[:_MAX_ABSENT_LINES])
        return [Problem(spec.source, f"{len(absent)} of {spec.num_classes} classes never occur in the train "
                        f"masks ({shown}, ... {len(absent) - _MAX_ABSENT_LINES} more)",
                        hint.replace("exclude it", "exclude them"), level="warning")]
    return [Problem(spec.source, f"class {c} '{spec.classes[c]}' never occurs in the train masks", hint,
                    level="warning") for c in absent]


def _snapped_problems(spec: DatasetSpec, tally: _Tally) -> list[Problem]:
    """One warning per split: how many mask pixels were snapped (JPEG) or thresholded (binary)."""
    out = []
    for split, (n_masks, n_px, first) in tally.snapped.items():
        if spec.mask_format == "binary":
            what = f"thresholded at binary_threshold {spec.binary_threshold} (values other than 0 and 255)"
        else:
            what = "snapped to the nearest valid value (JPEG compression noise)"
        out.append(Problem(
            str(first),
            f"{n_px:,} mask pixels in {n_masks} mask(s) of {split} were {what}",
            "check-data --fix OUT writes a copy with these masks saved as PNG",
            level="warning",
        ))
    return out


def _size_problem(img: Path, mask: Path, dimg: Any, m: np.ndarray) -> Problem:
    ih, iw = dimg.array.shape[:2]
    mh, mw = m.shape
    if dimg.orientation != 1 and (mw, mh) == tuple(dimg.raw_size):
        return Problem(
            str(mask),
            f"mask is {mw}x{mh}, which matches image {img.name} as stored, but the image's EXIF orientation "
            f"({dimg.orientation}) makes it {iw}x{ih}",
            "rotate the mask to match the displayed image, or re-save the image without EXIF orientation; "
            "check-data --fix OUT writes such a copy",
        )
    same_aspect = abs((mw / mh) / (iw / ih) - 1.0) <= 0.01 if mh and ih else False
    return Problem(
        str(mask),
        f"size mismatch: image {img.name} is {iw}x{ih} but the mask is {mw}x{mh}",
        "same aspect ratio: check-data --fix OUT writes a copy with the mask resized (nearest neighbour)"
        if same_aspect else "masks must have their image's size; segtune never resizes them",
    )


def _values_hint(spec: DatasetSpec, values: list[int]) -> str:
    if 255 in values and spec.num_classes == 2 and set(values) <= {255}:
        return "for 0/255 binary masks set mask_format: binary; if 255 means unlabelled set ignore_index: 255"
    if 255 in values:
        return "if 255 means unlabelled, set ignore_index: 255 in dataset.yaml; otherwise add classes or fix the masks"
    return "add the missing classes to classes: in dataset.yaml, set ignore_index, or fix the masks"


def _leakage(hashes: dict[str, list[tuple[str, Path]]]) -> list[Problem]:
    out = []
    for entries in hashes.values():
        splits = {s for s, _ in entries}
        if len(splits) < 2:
            continue
        first = {}
        for s, p in entries:
            first.setdefault(s, p)
        ref_split = "train" if "train" in first else sorted(first)[0]
        for s, p in first.items():
            if s == ref_split:
                continue
            out.append(
                Problem(
                    str(p),
                    f"same image content as {first[ref_split]} in {ref_split} (leakage: {s} scores will be optimistic)",
                    f"remove it from {s} or {ref_split}",
                    level="warning",
                )
            )
    return out


def _size_stats(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    if not sizes:
        return {"count": 0}
    ws = [w for w, _ in sizes]
    hs = [h for _, h in sizes]

    def s(v: list[int]) -> dict[str, Any]:
        med = statistics.median(v)
        return {
            "min": int(min(v)),
            "median": int(med) if float(med).is_integer() else float(med),
            "max": int(max(v)),
        }

    return {"count": len(sizes), "width": s(ws), "height": s(hs)}
