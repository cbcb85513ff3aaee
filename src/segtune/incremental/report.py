"""Scores and pictures of a class-incremental history (``segtune update`` steps).

Every ``segtune update`` writes a new run folder (a *step*) whose ``model.yaml`` holds a
``lineage`` dict (``parent``, ``step``, ``classes_added``, ``method``, ``seconds``, ...). This
module follows those links back to the first training run and scores each step the way the
continual-segmentation papers do (see ``docs/incremental.md`` sections 1 and 5):

* **old** = mean IoU over the classes known before the step, **new** = mean IoU over the classes
  added at the step, **all** = mean IoU over both. The background class is excluded from all
  three, as in MiB (PLOP, SSUL and DKD include it; the two conventions differ by about a point).
  Its IoU is reported on its own.
* **hIoU** = 2 * old * new / (old + new), the harmonic mean used by DKD.
* **forgetting** of a class = its best IoU at any earlier step minus its IoU now (positive:
  the class was forgotten).
* A class whose IoU is ``None`` (absent from both ground truth and prediction, see
  :func:`segtune.metrics.segmentation_metrics`) is left out of every mean, never counted as 0.

Units: every IoU, mean, hIoU and forgetting value is a fraction in 0..1 (forgetting may be
negative, down to -1); :func:`format_history` prints them as percentages (points for
forgetting). Times are seconds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from .._io import atomic_path
from ..errors import RunError
from ..report.plots import finite_or_none

__all__ = [
    "CONVENTION",
    "step_scores",
    "forgetting",
    "mean_forgetting",
    "lineage_chain",
    "history_rows",
    "format_history",
    "plot_steps",
]

#: One line stating the metric convention; stored with every :func:`step_scores` result.
CONVENTION = (
    "background excluded from old/new/all (as in MiB); "
    "pixels of classes not yet learned are ignored at evaluation"
)

_MODEL_META = "model.yaml"  # = segtune.models.modelfile.MODEL_META (not imported: pulls in torch)
_METRICS_FILE = "metrics.json"  # = segtune.engine.run.METRICS_FILE


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _unique(names: Sequence[str], drop: str | None = None) -> list[str]:
    """``names`` as strings, first occurrence kept, ``drop`` removed."""
    out: list[str] = []
    for n in names:
        s = str(n)
        if s != drop and s not in out:
            out.append(s)
    return out


def _iou_map(per_class: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> dict[str, float | None]:
    """``{name: iou}`` from a ``per_class`` list (or an existing mapping); NaN becomes ``None``."""
    if isinstance(per_class, Mapping):
        return {str(k): finite_or_none(v) for k, v in per_class.items()}
    out: dict[str, float | None] = {}
    for i, row in enumerate(per_class):
        name = str(row.get("name", row.get("index", i)))
        out[name] = finite_or_none(row.get("iou"))
    return out


def step_scores(
    per_class: Sequence[Mapping[str, Any]],
    old: Sequence[str],
    new: Sequence[str],
    background: str | None = None,
) -> dict[str, Any]:
    """Old / new / all mean IoU and hIoU of one evaluation.

    Args:
        per_class: the ``per_class`` list of :func:`segtune.metrics.segmentation_metrics`
            (dicts with at least ``name`` and ``iou``; IoU a fraction 0..1 or ``None``).
            A ``{name: iou}`` mapping is accepted too.
        old: names of the classes known before the step.
        new: names of the classes added at the step (a name in both lists counts as old).
        background: name of the background class, excluded from old, new and all; ``None``
            when the data set has none.

    Returns:
        dict with fractions 0..1 (``None`` where undefined):

        * ``old``, ``new``, ``all``: mean IoU over those classes that have a defined IoU
          (background excluded; a listed class missing from ``per_class`` counts as undefined).
          ``None`` when no class is left.
        * ``hiou``: 2 * old * new / (old + new); ``None`` when either is ``None`` or both are 0.
        * ``background``: the background IoU (``None`` without background or when undefined).
        * ``convention``: :data:`CONVENTION`.
        * ``per_class``: ``{name: iou}`` for every class of ``per_class``.
    """
    ious = _iou_map(per_class)
    old_names = _unique(old, drop=background)
    new_names = [n for n in _unique(new, drop=background) if n not in old_names]
    s_old = _mean([ious.get(n) for n in old_names])
    s_new = _mean([ious.get(n) for n in new_names])
    s_all = _mean([ious.get(n) for n in old_names + new_names])
    hiou: float | None = None
    if s_old is not None and s_new is not None and s_old + s_new > 0:
        hiou = 2.0 * s_old * s_new / (s_old + s_new)
    return {
        "old": s_old,
        "new": s_new,
        "all": s_all,
        "hiou": hiou,
        "background": ious.get(background) if background is not None else None,
        "convention": CONVENTION,
        "per_class": ious,
    }


def forgetting(
    previous: Sequence[Mapping[str, float | None]],
    current: Mapping[str, float | None],
    classes: Sequence[str],
) -> dict[str, float | None]:
    """Per-class forgetting: best IoU at any earlier step minus the IoU now.

    Args:
        previous: ``{name: iou}`` of each earlier step (any order; IoU fractions 0..1 or ``None``).
        current: ``{name: iou}`` of the step being scored.
        classes: the classes to score (usually the old ones).

    Returns:
        ``{name: forgetting}`` in IoU fractions (-1..1; positive means the class got worse);
        ``None`` for a class never scored before (no earlier step gives it an IoU) or whose
        IoU is ``None`` now.
    """
    out: dict[str, float | None] = {}
    for name in _unique(classes):
        now = finite_or_none(current.get(name))
        before = [v for v in (finite_or_none(p.get(name)) for p in previous) if v is not None]
        out[name] = None if now is None or not before else max(before) - now
    return out


def mean_forgetting(values: Mapping[str, float | None]) -> float | None:
    """Mean of the defined values of a :func:`forgetting` result (fraction), ``None`` if none."""
    return _mean([finite_or_none(v) for v in values.values()])


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunError(f"{path}: cannot be read as YAML ({msg}); restore the file") from e
    if not isinstance(data, dict):
        raise RunError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _read_metrics(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunError(
            f"{path}: cannot be read as JSON ({msg}); rerun `segtune evaluate` on that run"
        ) from e
    return data if isinstance(data, dict) else {}


def _resolve_parent(run_dir: Path, parent: str) -> Path | None:
    """The parent run folder: absolute, beside ``run_dir``, from the cwd, or a moved sibling."""
    p = Path(parent).expanduser()
    if p.is_absolute():
        candidates = [p, run_dir.parent / p.name]
    else:
        candidates = [run_dir.parent / p, Path.cwd() / p, run_dir.parent / p.name]
    for c in candidates:
        if (c / _MODEL_META).is_file():
            return c
    return None


def _step_entry(run_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    lineage = meta.get("lineage")
    classes = [str(c) for c in (meta.get("classes") or [])]
    payload = _read_metrics(run_dir / _METRICS_FILE)
    metrics = payload.get("metrics", payload) if isinstance(payload, dict) else {}
    summary = payload.get("summary") or {}
    per_class = metrics.get("per_class") or []
    if isinstance(lineage, dict):
        step = int(lineage.get("step") or 0)
        method = str(lineage.get("method") or "update")
        added = [str(c) for c in (lineage.get("classes_added") or [])]
        seconds = finite_or_none(lineage.get("seconds"))
    else:
        step, method, added, seconds = 0, "train", list(classes), None
    if seconds is None and isinstance(summary, dict):
        seconds = finite_or_none(summary.get("seconds"))
    return {
        "run": str(run_dir),
        "step": step,
        "method": method,
        "classes_added": added,
        "classes": classes,
        "seconds": seconds,
        "per_class": _iou_map(per_class),
        "miou": finite_or_none(metrics.get("miou")),
    }


def lineage_chain(run_dir: Path) -> list[dict[str, Any]]:
    """Follow ``lineage.parent`` links from ``run_dir`` back to the first training run.

    A relative ``parent`` is looked up beside ``run_dir`` first, then from the current folder;
    if neither holds it, a folder of the same name beside ``run_dir`` is used (run folders moved
    together). A run without ``lineage`` in its ``model.yaml`` is a plain training run: step 0,
    method ``"train"``, all its classes added. A missing ``metrics.json`` gives empty scores.

    Args:
        run_dir: the newest run folder.

    Returns:
        One dict per run, oldest first: ``run`` (folder path as a string), ``step`` (int),
        ``method``, ``classes_added`` (list), ``classes`` (``model.yaml`` classes), ``seconds``
        (training time of that step in seconds, from ``lineage`` or the metrics summary, or
        ``None``), ``per_class`` (``{name: iou}``, fractions 0..1 or ``None``) and ``miou``
        (fraction or ``None``).

    Raises:
        RunError: a folder has no ``model.yaml``, a file cannot be read, a parent is missing,
            or the links form a cycle (one-line message naming the file and step).
    """
    run_dir = Path(run_dir)
    if not (run_dir / _MODEL_META).is_file():
        raise RunError(
            f"{run_dir}: no {_MODEL_META} (not a segtune run folder); "
            "pass the folder that `segtune train` or `segtune update` wrote"
        )
    chain: list[dict[str, Any]] = []
    seen: set[Path] = set()
    current = run_dir
    while True:
        seen.add(current.resolve())
        meta = _read_yaml(current / _MODEL_META)
        entry = _step_entry(current, meta)
        chain.append(entry)
        lineage = meta.get("lineage")
        parent = lineage.get("parent") if isinstance(lineage, dict) else None
        if not parent:
            break
        where = f"{current / _MODEL_META}"
        found = _resolve_parent(current, str(parent))
        if found is None:
            raise RunError(
                f"{where}: parent {parent} not found (the chain is broken at step "
                f"{entry['step']}; restore that run folder or fix lineage.parent)"
            )
        if found.resolve() in seen:
            raise RunError(
                f"{where}: parent {parent} is already in the chain (a cycle at step "
                f"{entry['step']}; fix lineage.parent so the links lead back to a training run)"
            )
        current = found
    chain.reverse()
    return chain


def history_rows(
    chain: Sequence[Mapping[str, Any]], background: str | None = None
) -> list[dict[str, Any]]:
    """Score every step of a :func:`lineage_chain` from that step's own point of view.

    At step k, *old* are the classes the parent knew (``chain[k-1]["classes"]``) and *new* are
    the classes added at step k (``classes_added``, or the classes the parent lacked when that
    list is empty). The first run (step 0) has no old classes: old is ``None`` and all its
    classes are new. Forgetting compares the old classes with every earlier step.

    Args:
        chain: output of :func:`lineage_chain`, oldest first.
        background: name of the background class, excluded from every mean.

    Returns:
        One dict per step: ``step``, ``run`` (folder name), ``path``, ``method``,
        ``classes_added`` (the new classes scored), ``old``, ``new``, ``all``, ``hiou``,
        ``background`` (fractions 0..1 or ``None``, see :func:`step_scores`), ``forgetting``
        (mean forgetting of the old classes, fraction or ``None``), ``forgetting_per_class``,
        ``miou`` (the run's own mIoU, background included) and ``seconds``.
    """
    rows: list[dict[str, Any]] = []
    for k, entry in enumerate(chain):
        classes = [str(c) for c in entry.get("classes") or []]
        ious = _iou_map(entry.get("per_class") or {})
        if k == 0:
            old: list[str] = []
            new = list(classes) or list(ious)
        else:
            old = [str(c) for c in chain[k - 1].get("classes") or []]
            added = [str(c) for c in entry.get("classes_added") or []]
            new = added or [c for c in classes if c not in old]
        scores = step_scores(ious, old, new, background)
        old_scored = _unique(old, drop=background)
        previous = [_iou_map(e.get("per_class") or {}) for e in chain[:k]]
        forgot = forgetting(previous, ious, old_scored) if k else {}
        rows.append(
            {
                "step": int(entry.get("step", k) or 0),
                "run": Path(str(entry.get("run", f"step {k}"))).name,
                "path": str(entry.get("run", "")),
                "method": str(entry.get("method", "")),
                "classes_added": [c for c in _unique(new) if c not in old],
                "old": scores["old"],
                "new": scores["new"],
                "all": scores["all"],
                "hiou": scores["hiou"],
                "background": scores["background"],
                "forgetting": mean_forgetting(forgot),
                "forgetting_per_class": forgot,
                "miou": finite_or_none(entry.get("miou")),
                "seconds": finite_or_none(entry.get("seconds")),
            }
        )
    return rows


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100.0 * v:.1f}"


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _added(names: Sequence[str], shown: int = 4) -> str:
    if not names:
        return "-"
    text = " ".join(f"+{n}" for n in names[:shown])
    return text + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


def format_history(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of :func:`history_rows`.

    Columns: step, run name, method, added classes (``+Car +Sign``), old, new, all, hIoU
    (IoU in percent, 1 decimal), forgetting (mean over old classes, percentage points; positive
    = worse) and training time. Undefined values print as ``-``. The last line states
    :data:`CONVENTION`.

    Args:
        rows: output of :func:`history_rows`.

    Returns:
        Multi-line string (no trailing newline).
    """
    header = ["step", "run", "method", "+classes", "old", "new", "all", "hIoU", "forget", "time"]
    table = [
        [
            str(r.get("step", "")),
            str(r.get("run", "")),
            str(r.get("method", "")),
            _added([str(c) for c in r.get("classes_added") or []]),
            _pct(r.get("old")),
            _pct(r.get("new")),
            _pct(r.get("all")),
            _pct(r.get("hiou")),
            _pct(r.get("forgetting")),
            _duration(r.get("seconds")),
        ]
        for r in rows
    ]
    widths = [max([len(h), *(len(t[i]) for t in table)]) for i, h in enumerate(header)]
    left = {1, 2, 3}  # text columns; numbers are right-aligned

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    out = [line(header), "-" * len(line(header))]
    out += [line(t) for t in table]
    out.append("IoU in %, forgetting in points (best earlier IoU - now); " + CONVENTION)
    return "\n".join(out)


def plot_steps(
    chain: Sequence[Mapping[str, Any]], path: Path, background: str | None = None
) -> Path:
    """Line plot of per-class IoU across the steps of a :func:`lineage_chain`.

    x = step, y = IoU (fraction 0..1); one coloured line with markers per class, starting at
    the step that added the class (gaps where its IoU is undefined); a dashed black line shows
    the "all" mean of :func:`history_rows`. The background class is left out. The legend sits
    to the right of the axes. Written atomically as a PNG (matplotlib Agg, no pyplot).

    Args:
        chain: output of :func:`lineage_chain`, oldest first.
        path: output ``.png`` path.
        background: name of the background class (not drawn).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..report.plots import default_palette

    path = Path(path)
    steps = [int(e.get("step", k) or 0) for k, e in enumerate(chain)]
    ious = [_iou_map(e.get("per_class") or {}) for e in chain]
    order: list[str] = []  # classes in the order they first appear
    for e, m in zip(chain, ious, strict=True):
        for c in [str(c) for c in e.get("classes") or []] or list(m):
            if c != background and c not in order:
                order.append(c)
    fig = Figure(figsize=(9, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    palette = default_palette(len(order))
    markers = "osD^vPX*<>"
    for ci, name in enumerate(order):
        xs, ys = [], []
        for x, e, m in zip(steps, chain, ious, strict=True):
            known = [str(c) for c in e.get("classes") or []] or list(m)
            if name not in known:
                continue
            v = m.get(name)
            xs.append(x)
            ys.append(float("nan") if v is None else v)
        if xs:
            color = tuple(v / 255 for v in palette[ci])
            ax.plot(xs, ys, "-", marker=markers[ci % len(markers)], color=color,
                    markersize=5, label=name)  # fmt: skip
    rows = history_rows(chain, background)
    alls = [float("nan") if r["all"] is None else r["all"] for r in rows]
    if rows:
        ax.plot(steps, alls, "--", color="black", linewidth=2, label="all (mean)")
    else:
        ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(steps)
    ax.set_xticklabels([f"{s}\n{r['run'][:16]}" for s, r in zip(steps, rows, strict=True)],
                       fontsize=8)  # fmt: skip
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("incremental step")
    ax.set_ylabel("IoU")
    bg = f"; background '{background}' not shown" if background else ""
    ax.set_title(f"per-class IoU across incremental steps{bg}", fontsize=10)
    ax.grid(True, alpha=0.3)
    if order or rows:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0.0,
                  ncol=1 if len(order) <= 22 else 2)  # fmt: skip
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path
