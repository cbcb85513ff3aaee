"""``segtune update RUN --watch DIR``: online updates of a model from a stream of labelled images.

The watched folder DIR holds a ``dataset.yaml`` listing the classes (RUN's classes in the same
order, maybe followed by new ones) and the ``images/`` + ``masks/`` folders (or the train split
the yaml names) into which new labelled pairs are dropped, paired by file stem as everywhere in
segtune. Every time ``every`` new pairs are complete, the watcher

1. links exactly those pairs into a step data set (``OUT/.watch/batch_NNNN``) and runs
   :func:`~segtune.incremental.update.update` from the current model, writing a new run folder
   ``OUT/<base>-wNNNN`` (scored on the guard data, which is the update's ``val``);
2. scores the new model and the current one on the same *guard* pixels (the guard data set's val
   split; default: the val split of the data RUN was trained on): old-class mIoU = mean IoU over
   the current model's classes, background excluded (:func:`~segtune.incremental.report.step_scores`);
   pixels of classes the current model does not know are ignored for both;
3. **promotes** the new model (``OUT/current`` names it) only when its old-class mIoU is at most
   ``max_drop`` points below the current model's; otherwise the run is kept, reported and not
   promoted, and the next update starts again from the current model.

Files in OUT (the runs' folder, default RUN's parent):

* ``current``: the name of the current run folder (a path when it lies outside OUT), replaced
  atomically (temporary file + rename), so a reader sees the old or the new name, never a mix;
  ``current.run`` is a symbolic link to the same folder where the file system allows one.
* ``watch.json``: the watcher's state, written atomically after every change: the pairs already
  consumed (relative path + size + mtime of both files), every update attempted (run folder,
  guard scores, promoted or kept and why) and the guard scores of each run.

Interrupt safety: the pointer moves only in one atomic write, after the new run is complete
(``model.yaml``, weights, ``metrics.json`` and ``incremental.json`` written) and its guard score
passed; pairs are marked consumed only in the same state write that records the decision. An
update is recorded as *running* in ``watch.json`` before it starts, so a killed watcher, started
again, first finishes that update (resuming the run from its checkpoint, or doing it again when it
never got that far) and decides on it, then goes on watching. A pair counts only once both files
exist, are readable images, and kept their size and modification time for one poll (a file still
being copied is left for later).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import _log
from .._io import atomic_write_json, atomic_write_text, atomic_write_yaml, link_or_copy
from ..errors import ConfigError, DataError, RunError
from .update import (
    BACKGROUND,
    DEFAULT_MEMORY,
    INCREMENTAL_FILE,
    _kind,
    _load_parent,
    update,
)

__all__ = ["watch", "read_current", "CURRENT_FILE", "CURRENT_LINK", "STATE_FILE", "WATCH_DIR"]

CURRENT_FILE = "current"
CURRENT_LINK = "current.run"
STATE_FILE = "watch.json"
WATCH_DIR = ".watch"
_LOCK_FILE = ".watch.lock"
_COMPLETE = ("model.yaml", "model.safetensors", "metrics.json", INCREMENTAL_FILE)
_OTHER = "(not an old class)"


# ----------------------------------------------------------------------------- the pointer
def read_current(out: str | Path) -> Path | None:
    """The run folder ``OUT/current`` names, or ``None`` when there is no pointer yet."""
    f = Path(out) / CURRENT_FILE
    try:
        text = f.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunError(f"{f}: cannot be read ({e.strerror or e}); restore it or remove it") from None
    if not text:
        raise RunError(f"{f}: empty; write the name of the current run folder into it, or remove it")
    p = Path(text)
    return p if p.is_absolute() else Path(out) / p


def _write_current(out: Path, run_dir: Path) -> None:
    """Point ``OUT/current`` (and the ``current.run`` link, where possible) at ``run_dir``."""
    run_dir = run_dir.resolve()
    target = run_dir.name if run_dir.parent == out.resolve() else str(run_dir)
    atomic_write_text(out / CURRENT_FILE, target + "\n")
    tmp = out / f".{CURRENT_LINK}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(target, tmp, target_is_directory=True)
        os.replace(tmp, out / CURRENT_LINK)
    except OSError:  # no symbolic links here (e.g. Windows without the right): the file is enough
        with contextlib.suppress(OSError):
            tmp.unlink()


def _complete(run_dir: Path) -> bool:
    """A finished update run: model, weights, metrics and the incremental report all written."""
    return all((run_dir / f).is_file() for f in _COMPLETE)


def _resumable(run_dir: Path) -> bool:
    from .update import STEP_DATA, UPDATE_FILE

    return (not (run_dir / "model.yaml").exists() and (run_dir / UPDATE_FILE).is_file()
            and (run_dir / STEP_DATA / "dataset.yaml").is_file() and (run_dir / "config.yaml").is_file())


# ----------------------------------------------------------------------------- state
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunError(f"{path}: cannot be read as JSON ({e}); restore it, or remove it to start watching afresh") from None
    if not isinstance(d, dict):
        raise RunError(f"{path}: not a watch state (expected a JSON object); remove it to start watching afresh")
    return d


@contextlib.contextmanager
def _lock(out: Path) -> Iterator[None]:
    """One watcher per OUT folder (an OS lock: released when the process dies)."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): no lock
        yield
        return
    fd = os.open(out / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunError(f"{out}: another watcher is running on this folder (it holds {out / _LOCK_FILE})") from None
        yield
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the watched folder
def _sig(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return (int(st.st_size), int(st.st_mtime_ns))


def _rel(p: Path, root: Path) -> str:
    p = Path(os.path.abspath(p))  # not resolved: a dropped symbolic link keeps its own name
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _readable(p: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.load()
        return True
    except Exception:  # truncated (still being copied) or not an image
        return False


class _Scanner:
    """The pairs of the watched folder, and which of them are ready (complete and unchanged)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.root = Path(spec.root).resolve()
        split = spec.splits.get("train") or next(iter(spec.splits.values()))
        self.images, self.masks = Path(split.images), split.masks
        self.seen: dict[str, tuple[int, int]] = {}
        self.ok: dict[tuple[Any, ...], bool] = {}

    def scan(self, state: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, int]]:
        """``(ready pairs oldest first, counts)``; a pair is ready when both files kept their size
        and mtime since the previous scan, decode, and were neither consumed nor rejected."""
        from ..data.pairing import find_pairs, list_files

        counts = {"ready": 0, "changing": 0, "unreadable": 0, "without_mask": 0}
        if self.masks is None or not self.images.is_dir() or not Path(self.masks).is_dir():
            return [], counts
        pairs, _ = find_pairs(self.images, self.masks)
        images, _ = list_files(self.images, "image")
        counts["without_mask"] = max(0, len(images) - len(pairs))
        done = {**state.get("consumed", {}), **state.get("rejected", {})}
        seen, ready = {}, []
        for img, mask in pairs:
            si, sm = _sig(img), _sig(mask)
            if si is None or sm is None:
                continue
            ri, rm = _rel(img, self.root), _rel(mask, self.root)
            seen[ri], seen[rm] = si, sm
            old = done.get(ri)
            if old and old.get("mask") == rm and tuple(old["image_sig"]) == si and tuple(old["mask_sig"]) == sm:
                continue
            if self.seen.get(ri) != si or self.seen.get(rm) != sm or not si[0] or not sm[0]:
                counts["changing"] += 1
                continue
            key = (ri, si, rm, sm)
            if key not in self.ok:
                self.ok[key] = _readable(img) and _readable(mask)
            if not self.ok[key]:
                counts["unreadable"] += 1
                continue
            ready.append({"image": ri, "mask": rm, "image_sig": list(si), "mask_sig": list(sm),
                          "_order": (max(si[1], sm[1]), ri)})
        self.seen = seen
        ready.sort(key=lambda r: r["_order"])
        for r in ready:
            del r["_order"]
        counts["ready"] = len(ready)
        return ready, counts

    def path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.root / p


def _write_batch(folder: Path, scanner: _Scanner, pairs: Sequence[dict[str, Any]]) -> Path:
    """``folder`` as a data set of exactly ``pairs`` (links to the watched files), train split only."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    (tmp / "masks").mkdir()
    for p in pairs:
        img, mask = scanner.path(p["image"]), scanner.path(p["mask"])
        if not img.is_file() or not mask.is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            raise DataError(f"{img if not img.is_file() else mask}: gone from the watched folder")
        link_or_copy(img, tmp / "images" / img.name)
        link_or_copy(mask, tmp / "masks" / f"{img.stem}{mask.suffix.lower()}")
    d = scanner.spec.to_dict()
    d["name"] = f"{d.get('name') or scanner.root.name} ({folder.name})"
    d["splits"] = {"train": {"images": "images", "masks": "masks"}}
    atomic_write_yaml(tmp / "dataset.yaml", d)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def _bad_pairs(batch: Path, pairs: Sequence[dict[str, Any]], progress: bool) -> dict[str, str]:
    """``{image rel path: first problem}`` for the pairs of ``batch`` check-data refuses."""
    from ..data import check_data

    report = check_data(batch, progress=progress)
    usable = {Path(i).stem for i, _ in report.pairs.get("train", [])}
    errors = [str(p) for p in report.problems if p.level == "error"]
    bad: dict[str, str] = {}
    for p in pairs:
        stem = Path(p["image"]).stem
        if stem not in usable:
            bad[p["image"]] = next((e for e in errors if stem in e), errors[0] if errors else "refused by check-data")
    return bad


# ----------------------------------------------------------------------------- the guard
def _guard_split(spec: Any, source: str) -> str:
    if "val" in spec.splits:
        return "val"
    if len(spec.splits) == 1:
        return next(iter(spec.splits))
    raise DataError(f"{source}: no val split to guard the updates with (add one, or pass --guard DATA)")


def _default_guard(run: Path) -> str:
    from ..config import Config
    from ..data import load_dataset_spec

    root = Config.from_yaml(run / "config.yaml").data.root
    hint = "pass --guard DATA (a data set with a val split labelled with the run's classes)"
    if not root or not Path(root).exists():
        raise DataError(f"{run}: the data it was trained on ({root}) is not here to guard updates with; {hint}")
    spec = load_dataset_spec(root)
    if "val" not in spec.splits:
        raise DataError(f"{root}: {run.name}'s data has no val split to guard updates with; {hint}")
    return str(Path(root).resolve())


def _background(meta: dict[str, Any], classes: list[str]) -> str | None:
    if meta.get("background") or (classes and classes[0].lower() == BACKGROUND):
        return classes[0]
    return None


def _guard_scores(run_dir: Path, classes: list[str], background: str | None, guard: str, split: str,
                  progress: bool) -> dict[str, Any]:
    """Old-class scores of ``run_dir`` on the guard pixels, in the label space ``classes`` (the
    current model's classes, by name; guard pixels of other classes ignored; predictions of
    other classes count as errors)."""
    import functools

    import torch
    from torch.utils.data import DataLoader

    from .._progress import progress_iter
    from .._tensor import cpu_channels_last, forward_chunked, suppress_classes
    from ..data import SegDataset, eval_transforms, load_dataset_spec, pad_collate, split_pairs
    from ..engine.run import load_model
    from ..metrics import confusion_matrix, segmentation_metrics
    from .report import step_scores

    spec = load_dataset_spec(guard)
    s = spec.splits[split]
    pairs, _ = split_pairs(s)
    if not pairs:
        raise DataError(f"{s.images}: no image/mask pairs in the guard's {split} split")
    model, meta = load_model(run_dir)
    k = len(classes)
    index = {c: i for i, c in enumerate(classes)}
    pred_lut = torch.tensor([index.get(str(n), k) for n in meta["classes"]], dtype=torch.int64)
    ig = int(spec.ignore_index)
    size = max(spec.num_classes, ig + 1 if 0 <= ig < 65536 else 0) + 1
    gt_lut = torch.full((size,), 255, dtype=torch.int64)
    for d, name in enumerate(spec.classes):
        if name in index:
            gt_lut[d] = index[name]
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    ds = SegDataset(pairs, spec, eval_transforms(mean, std, ig), cache=False)
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=functools.partial(pad_collate, ignore_index=ig))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    channels_last = cpu_channels_last(model, device)
    suppress = (meta.get("inference") or {}).get("suppress", [])
    cm = torch.zeros(k + 1, k + 1, dtype=torch.int64)
    with torch.inference_mode():
        for batch in progress_iter(loader, f"guard {run_dir.name}", show=None if progress else False):
            x = batch["image"].to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pred = pred_lut[suppress_classes(forward_chunked(model, x), suppress).argmax(1).cpu()]
            m = batch["mask"]
            gt = torch.full_like(m, 255)
            ok = (m >= 0) & (m < size)
            gt[ok] = gt_lut[m[ok]]
            cm += confusion_matrix(pred, gt, k + 1, 255)
    metrics = segmentation_metrics(cm.numpy(), [*classes, _OTHER])
    sc = step_scores(metrics["per_class"], classes, [], background=background)
    old = sc["old"]
    if old is None:  # only the background is known: score it
        old = step_scores(metrics["per_class"], classes, [], background=None)["old"]
    return {"old": old, "per_class": {c: sc["per_class"].get(c) for c in classes}, "images": len(pairs)}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


# ----------------------------------------------------------------------------- the watcher
def watch(
    run: str | Path,
    folder: str | Path,
    every: int,
    *,
    guard: str | Path | None = None,
    max_drop: float = 1.0,
    method: str = "auto",
    memory: int = DEFAULT_MEMORY,
    old_data: str | Path | None = None,
    kd_weight: float = 10.0,
    out: str | Path | None = None,
    poll_seconds: float = 5.0,
    max_updates: int | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    progress: bool = True,
    stop: Callable[[], bool] | None = None,
    callbacks: Sequence[Any] = (),
) -> list[dict[str, Any]]:
    """Watch ``folder`` and update the current model each time ``every`` new labelled pairs arrived.

    Args:
        run: the run to start from (used when ``OUT/current`` does not exist yet; afterwards the
            watcher continues from the run ``current`` names).
        folder: watched data set folder: a ``dataset.yaml`` listing the classes (``run``'s, same
            order, then any new ones) and its ``images/`` + ``masks/`` (or the yaml's train split).
        every: pairs per update (each update uses exactly this many, oldest first).
        guard: data set whose val split (or only split) scores every model; default: the val
            split of the data ``run`` was trained on. Fixed for the life of ``watch.json``.
        max_drop: largest drop of old-class mIoU (points, 0..100) a new model may show on the
            guard and still be promoted; negative values demand a gain.
        method, memory, old_data, kd_weight, overrides, progress, callbacks: passed to each
            :func:`~segtune.incremental.update.update`.
        out: folder of the new runs, ``current`` and ``watch.json`` (default: ``run``'s parent).
        poll_seconds: seconds between two looks at ``folder``; a file counts once it kept its
            size and mtime for one poll.
        max_updates: return after deciding on this many updates (default: watch until stopped).
        stop: called before each look at ``folder``; returning True ends the watch.

    Returns:
        The update records decided in this call (as in ``watch.json``'s ``updates``): ``batch``,
        ``run``, ``parent``, ``pairs``, ``status`` (``promoted`` or ``kept``; ``abandoned`` when the
        pairs of an interrupted update changed before it could be redone), ``guard``
        (``new``/``current`` old-class mIoU, fractions 0..1), ``reason``, times.

    Raises:
        SegtuneError: one-line errors for bad input; an error or interrupt during an update
            leaves it recorded as running, and the next call finishes it first.
    """
    from ..engine.resume import Interrupted

    every = int(every)
    spec = _check_watch_args(folder, every, max_drop, poll_seconds)
    run = Path(run)
    out = Path(out) if out is not None else run.resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        state_path = out / STATE_FILE
        state, current, guard_str, split = _open_state(state_path, out, run, spec, guard)
        ctx = _Ctx(out, state_path, state, _Scanner(spec), guard_str, split, float(max_drop), progress, callbacks,
                   dict(method=method, memory=memory, old_data=old_data, kd_weight=kd_weight, overrides=overrides))
        _log.info(
            f"watch: {spec.root} (an update every {every} new pairs, a look every {poll_seconds:g} s); "
            f"current model {current.name}; guard {guard_str} ({split}), promoted when old-class mIoU drops "
            f"by at most {float(max_drop):g} points; state in {state_path}"
        )
        try:
            return _loop(ctx, every, poll_seconds, max_updates, stop)
        except (KeyboardInterrupt, Interrupted):
            _log.info(ctx.where())
            raise


def _check_watch_args(folder: str | Path, every: int, max_drop: float, poll_seconds: float) -> Any:
    """One-line refusals of the arguments; returns the watched folder's data set description."""
    from ..data import load_dataset_spec

    if every < 1:
        raise ConfigError(f"--every {every}: must be at least 1 (pairs per update)")
    if not math.isfinite(float(max_drop)):
        raise ConfigError(f"--max-drop {max_drop}: must be a finite number of mIoU points")
    if not poll_seconds > 0:
        raise ConfigError(f"--poll {poll_seconds}: must be > 0 seconds")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: watched folder not found (create it with a dataset.yaml, images/ and masks/)")
    if not any((folder / n).is_file() for n in ("dataset.yaml", "dataset.yml")):
        raise DataError(
            f"{folder}: no dataset.yaml; write one listing the run's classes (same order, then any new ones), "
            "e.g. `classes: [background, car]`, next to images/ and masks/"
        )
    return load_dataset_spec(folder)


def _open_state(state_path: Path, out: Path, run: Path, spec: Any,
                guard: str | Path | None) -> tuple[dict[str, Any], Path, str, str]:
    """Load (or start) watch.json, the current run and the guard; checks that they fit."""
    from ..data import load_dataset_spec

    state = _load_state(state_path)
    current = read_current(out)
    if current is None:
        current = run
        _load_parent(current)  # a one-line error for an unfinished or missing run
        _write_current(out, current)
    elif current.resolve() != run.resolve():
        _log.info(f"watch: continuing from {current.name} ({out / CURRENT_FILE}), not {run.name}")
    parent = _load_parent(current)
    _kind(parent, list(spec.classes), spec.source)  # the watched classes fit the model
    if state.get("folder") and Path(state["folder"]) != Path(spec.root).resolve():
        _log.warn(f"{state_path}: recorded watching {state['folder']}, now {spec.root}; "
                  "pairs are matched by their path relative to the watched folder")
    guard_str = str(Path(guard).resolve()) if guard is not None else state.get("guard") or _default_guard(run)
    if state.get("guard") and state["guard"] != guard_str:
        _log.warn(f"watch: guard changed from {state['guard']} to {guard_str}; earlier guard scores are dropped")
        state["scores"] = {}
    guard_spec = load_dataset_spec(guard_str)
    split = _guard_split(guard_spec, guard_str)
    if not set(guard_spec.classes) & set(parent.classes):
        raise DataError(f"{guard_str}: none of its classes is one of {parent.dir.name}'s "
                        f"({', '.join(parent.classes)}), so it cannot guard the updates")
    state.setdefault("version", 1)
    state["folder"] = str(Path(spec.root).resolve())
    state["guard"], state["guard_split"] = guard_str, split
    state.setdefault("prefix", run.resolve().name)
    for key in ("consumed", "rejected", "scores"):
        state.setdefault(key, {})
    state.setdefault("updates", [])
    state["current"] = str(current.resolve())
    atomic_write_json(state_path, state)
    return state, current, guard_str, split


def _loop(ctx: _Ctx, every: int, poll_seconds: float, max_updates: int | None,
          stop: Callable[[], bool] | None) -> list[dict[str, Any]]:
    """Finish an interrupted update, then update each time ``every`` new pairs are ready."""
    decided: list[dict[str, Any]] = []
    state = ctx.state
    pending = next((u for u in state["updates"] if u.get("status") == "running"), None)
    if pending is not None:
        _log.info(f"watch: finishing update {pending['batch']} ({Path(pending['run']).name}), "
                  "interrupted before its decision")
        decided.append(ctx.finish(pending))
    last_counts = None
    while max_updates is None or len(decided) < max_updates:
        if stop is not None and stop():
            break
        ready, counts = ctx.scanner.scan(state)
        if len(ready) >= every:
            att = ctx.start(ready[:every])
            if att is not None:
                decided.append(ctx.finish(att))
            continue
        if counts != last_counts:
            extra = [f"{counts[k]} {k.replace('_', ' ')}" for k in ("changing", "unreadable", "without_mask")
                     if counts[k]]
            _log.info(f"watch: {counts['ready']} of {every} new pairs ready"
                      + (f" ({', '.join(extra)})" if extra else "") + "; waiting")
            last_counts = counts
        time.sleep(poll_seconds)
    return decided


class _Gone(Exception):
    """A pair of an interrupted update is no longer the file it was (internal)."""


class _Ctx:
    """One watch session: the state and the steps of an update."""

    def __init__(self, out: Path, state_path: Path, state: dict[str, Any], scanner: _Scanner, guard: str,
                 split: str, max_drop: float, progress: bool, callbacks: Sequence[Any], kw: dict[str, Any]) -> None:
        self.out, self.state_path, self.state, self.scanner = out, state_path, state, scanner
        self.guard, self.split, self.max_drop, self.progress = guard, split, max_drop, progress
        self.callbacks, self.kw = callbacks, kw

    def save(self) -> None:
        atomic_write_json(self.state_path, self.state)

    def where(self) -> str:
        cur = read_current(self.out)
        running = [u for u in self.state["updates"] if u.get("status") == "running"]
        done = sum(1 for u in self.state["updates"] if u.get("status") in ("promoted", "kept"))
        msg = f"watch stopped: current model {cur.name if cur else '-'} ({done} update(s) decided so far)"
        if running:
            msg += (f"; update {running[0]['batch']} ({Path(running[0]['run']).name}) was interrupted and is "
                    "finished first when the watcher starts again")
        return msg

    def start(self, pairs: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Record a new update of ``pairs`` as running; ``None`` when check-data refused some pairs."""
        batch = 1 + max((int(u["batch"]) for u in self.state["updates"]), default=0)
        try:
            folder = _write_batch(self.out / WATCH_DIR / f"batch_{batch:04d}", self.scanner, pairs)
        except DataError as e:  # a file went away between the look and now: look again
            _log.warn(f"watch: {e}")
            return None
        bad = _bad_pairs(folder, pairs, self.progress)
        if bad:
            for p in pairs:
                if p["image"] in bad:
                    self.state["rejected"][p["image"]] = {**p, "reason": bad[p["image"]], "time": _now()}
                    _log.warn(f"watch: {p['image']} not used: {bad[p['image']]}")
            self.save()
            shutil.rmtree(folder, ignore_errors=True)
            return None
        from ..engine.run import free_run_name

        current = read_current(self.out)
        assert current is not None
        name = free_run_name(self.out, f"{self.state['prefix']}-w{batch:04d}")
        att = {"batch": batch, "run": str((self.out / name).resolve()), "parent": str(current.resolve()),
               "data": str(folder.resolve()), "pairs": pairs, "status": "running", "started": _now()}
        self.state["updates"].append(att)
        self.save()
        _log.info(f"watch: update {batch}: {len(pairs)} new pairs, {current.name} -> {name}")
        return att

    def _train(self, att: dict[str, Any]) -> None:
        run_dir = Path(att["run"])
        if _complete(run_dir):
            return
        if _resumable(run_dir):
            _log.info(f"watch: resuming {run_dir.name} from its last checkpoint")
            update(resume=run_dir, progress=self.progress, callbacks=self.callbacks)
        else:
            if run_dir.exists():
                _log.info(f"watch: {run_dir.name} was cut off before it could be resumed; doing it again")
                shutil.rmtree(run_dir)
            for p in att["pairs"]:  # the pairs must still be the ones recorded
                for f, sig in ((p["image"], p["image_sig"]), (p["mask"], p["mask_sig"])):
                    if _sig(self.scanner.path(f)) != tuple(sig):
                        raise _Gone(f"{f} changed or disappeared from the watched folder since the update started")
            data = _write_batch(Path(att["data"]), self.scanner, att["pairs"])
            update(att["parent"], data, val=self.guard, out=self.out, name=run_dir.name,
                   progress=self.progress, callbacks=self.callbacks, **self.kw)
        if not _complete(run_dir):
            raise RunError(f"{run_dir}: the update ended without writing {', '.join(_COMPLETE)}; not promoted")

    def _score(self, run_dir: Path, classes: list[str], background: str | None) -> dict[str, Any]:
        key = f"{run_dir.resolve()}|{','.join(classes)}"
        cached = self.state["scores"].get(key)
        if cached is not None:
            return cached
        s = _guard_scores(run_dir, classes, background, self.guard, self.split, self.progress)
        self.state["scores"][key] = s
        return s

    def finish(self, att: dict[str, Any]) -> dict[str, Any]:
        """Train (or resume) the update of ``att``, score it on the guard and promote or keep it."""
        from ..models.modelfile import load_model_meta

        try:
            try:
                self._train(att)
            except _Gone as e:  # start again from the pairs as they are now
                att.update(status="abandoned", reason=str(e), finished=_now())
                att.pop("error", None)
                self.save()
                _log.warn(f"watch: update {att['batch']} abandoned: {e}; its pairs are watched again")
                return dict(att)
            run_dir, parent_dir = Path(att["run"]), Path(att["parent"])
            meta = load_model_meta(parent_dir)
            classes = [str(c) for c in meta.get("classes") or []]
            bg = _background(meta, classes)
            cur = self._score(parent_dir, classes, bg)
            new = self._score(run_dir, classes, bg)
        except BaseException as e:
            att["error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
            with contextlib.suppress(Exception):
                self.save()
            raise
        allowed = self.max_drop / 100.0
        if new["old"] is None:
            promote, why = False, "the new model has no old-class IoU on the guard set"
        elif cur["old"] is None:
            promote, why = True, "the current model has no old-class IoU on the guard set"
        else:
            change = 100 * (new["old"] - cur["old"])
            promote = new["old"] >= cur["old"] - allowed - 1e-12
            why = (f"old-class mIoU {_pct(new['old'])} vs {_pct(cur['old'])} ({change:+.1f} points; "
                   f"{'within' if promote else 'more than'} the allowed drop of {self.max_drop:g})")
        _log.info(f"watch: guard ({cur['images']} {self.split} images of {Path(self.guard).name}, old classes "
                  f"{', '.join(c for c in classes if c != bg) or classes[0]}): {run_dir.name} {_pct(new['old'])} vs "
                  f"{parent_dir.name} {_pct(cur['old'])} mIoU")
        if promote:
            _write_current(self.out, run_dir)  # the one atomic switch
        elif (cur_now := read_current(self.out)) is not None and cur_now.resolve() == run_dir.resolve():
            _write_current(self.out, parent_dir)  # a decision re-taken after a kill: keep the old model
        att.update(status="promoted" if promote else "kept", reason=why, finished=_now(),
                   guard={"new": new["old"], "current": cur["old"], "max_drop": self.max_drop,
                          "classes": [c for c in classes if c != bg], "per_class": new["per_class"]})
        att.pop("error", None)
        for p in att["pairs"]:
            self.state["consumed"][p["image"]] = {**p, "batch": att["batch"]}
        self.state["current"] = str((run_dir if promote else parent_dir).resolve())
        self.save()
        if promote:
            _log.info(f"watch: promoted {run_dir.name}: {why}; current -> {run_dir.name}")
        else:
            _log.info(f"watch: kept {run_dir.name}, not promoted: {why}; current stays {parent_dir.name}")
        return dict(att)
