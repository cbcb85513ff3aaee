"""``segtune update``: keep a trained model learning from new images or new classes.

An update reads a finished run folder (RUN) and a data set (NEW_DATA) and writes a **new** run
folder; RUN is never modified. What kind of update it is follows from NEW_DATA's class list:

* the same classes as RUN, in the same order: **data-incremental** (new images);
* RUN's classes, in the same order, followed by new ones: **class-incremental**. The model's
  class layer grows (old logits unchanged), pixels of NEW_DATA's masks that are not one of the
  new classes become background, the data set's void stays ignored. A run whose class 0 is not
  named ``background`` gets a *synthetic* background at index 0 ("not one of this step's
  classes"), which is never predicted (``inference.suppress`` in model.yaml).

The step's training data (NEW_DATA's train split with the step's labels, plus the replay
memory carried by RUN) is written into ``<new run>/step_data`` with a dataset.yaml, so the
engine trains on it like on any data set, and an interrupted update resumes
(``segtune update --resume NEW_RUN``). After training, a class-balanced replay memory is chosen
from the step's pool and stored with the new run, model.yaml records the lineage, and
``incremental.json`` + ``steps_iou.png`` give old / new / all mIoU, hIoU and forgetting.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .. import _log
from .._io import atomic_write_json, atomic_write_yaml
from ..config import Config, apply_overrides, override_dict
from ..errors import ConfigError, DataError, RunError, SegtuneError
from .methods import METHOD_REGISTRY, IncrementalModule, Step, build_method, list_methods

__all__ = ["update", "UPDATE_FILE", "STEP_DATA", "DEFAULT_MEMORY", "AUTO_METHODS", "choose_method"]

UPDATE_FILE = "update.yaml"
STEP_DATA = "step_data"
INCREMENTAL_FILE = "incremental.json"
#: replay samples kept with each updated run (class-balanced); 0 turns replay off.
DEFAULT_MEMORY = 20
BACKGROUND = "background"
_IGNORE = 255  # = segtune.data.derived.DERIVED_IGNORE


# ----------------------------------------------------------------------------- the parent run
@dataclass
class _Parent:
    dir: Path
    meta: dict[str, Any]
    cfg: Config
    classes: list[str]
    background: str | None  # "natural", "synthetic" or None
    step: int
    steps: int  # optimiser steps of the parent run (for the default update budget)

    @property
    def data_classes(self) -> list[str]:
        """The classes a data set lists for this run (without a synthetic background)."""
        return self.classes[1:] if self.background == "synthetic" else list(self.classes)


def _load_parent(run: str | Path) -> _Parent:
    from ..engine.run import missing_run_files, run_steps
    from ..models.modelfile import load_model_meta

    run = Path(run)
    if not run.is_dir():
        raise RunError(f"{run}: run folder not found (give a folder written by `segtune train` or `segtune update`)")
    missing = missing_run_files(run)
    if missing:
        raise RunError(
            f"{run}: missing {', '.join(missing)}, which an update needs (finish the run first: "
            f"`segtune train --resume {run}`, or restore the folder)"
        )
    meta = load_model_meta(run)
    cfg = Config.from_yaml(run / "config.yaml")
    classes = [str(c) for c in meta.get("classes") or []]
    bg = meta.get("background")
    if bg is None and classes and classes[0].lower() == BACKGROUND:
        bg = "natural"
    lineage = meta.get("lineage") or {}
    steps = run_steps(run)
    return _Parent(run.resolve(), meta, cfg, classes, bg, int(lineage.get("step", 0)), steps)


def _kind(parent: _Parent, classes: Sequence[str], source: str) -> tuple[str, list[str]]:
    """``("data", [])`` or ``("class", added)``; refuses renamed, reordered or dropped classes."""
    old = parent.data_classes
    for i, name in enumerate(old):
        if i >= len(classes):
            raise DataError(
                f"{source}: lists {len(classes)} classes but {parent.dir.name} has {len(old)} ({', '.join(old)}); "
                "an update lists the run's classes first, in the same order, then any new ones"
            )
        if classes[i] != name:
            raise DataError(
                f"{source}: class {i} is {classes[i]!r} but {name!r} in {parent.dir.name} (renamed or "
                "reordered); list the run's classes first, in the same order, then any new ones"
            )
    added = list(classes[len(old):])
    if any(c.lower() == BACKGROUND for c in added):
        raise DataError(f"{source}: 'background' cannot be a new class (it is class 0 of an incremental model)")
    return ("class", added) if added else ("data", [])


#: ``--method auto``: kind of update -> (method, the measurement behind it). From
#: ``benchmarks/incremental.py`` (``benchmarks/incremental.json``, RESULTS.md "Incremental
#: updates"; one seed, CamVid x0.5, 300-step step 0, 100-step updates); the choice and its score
#: come from the same CamVid val split (no held-out split for this choice yet).
AUTO_METHODS: dict[str, tuple[str, str]] = {
    "class": ("lwf", (
        "on CamVid (benchmarks/RESULTS.md, one seed) lwf had the best all-class mIoU of the five methods "
        "without replay averaged over the two protocols (6-5: lwf 44.2, mib 41.1, ssul 40.9, plop 39.0, "
        "ft 6.7; 6-1: lwf 41.0, mib 40.9, ssul 41.2, plop 43.2, ft 3.2; joint training 53.8 / 58.8); "
        "mib, plop and ssul kept the old classes better but learned the new ones worse at the default "
        "update budget"
    )),
    "data": ("lwf", (
        "with replay, new images of the same classes: on EM membranes lwf + replay ended 0.4 points "
        "below retraining on everything where fine-tuning alone lost 1.7 (77.6 / 76.2 / 77.9); on "
        "CamVid fine-tuning alone did as well or better (54.5 vs 52.1 after a 4-step stream), so "
        "try --method ft when the new images look like the old ones (benchmarks/RESULTS.md)"
    )),
}


def choose_method(kind: str) -> tuple[str, str]:
    """``--method auto``: the method for this kind of update and the measured reason."""
    return AUTO_METHODS[kind]


# ----------------------------------------------------------------------------- step data
@dataclass
class _StepPlan:
    kind: str
    classes: list[str]  # the new model's classes (internal)
    added: list[str]
    background: str | None
    offset: int  # internal index = data set index + offset
    method: str
    memory: int
    seed: int
    new_data: str
    val_data: str | None
    old_data: str | None
    kd_weight: float = 10.0
    pod_weight: float = 1.0
    parent: str = ""
    parent_step: int = 0
    memory_sha256: str | None = None
    data_fingerprint: str = ""
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def num_old(self) -> int:
        return len(self.classes) - len(self.added)


def _lut(num_data_classes: int, data_ignore: int, mapping: dict[int, int]) -> tuple[np.ndarray, int]:
    """Lookup table data set index -> internal label (ignore -> 255), and its size."""
    size = max(num_data_classes, data_ignore + 1 if 0 <= data_ignore < 65536 else 0) + 1
    lut = np.full(size, _IGNORE, np.int64)
    for d, i in mapping.items():
        lut[d] = i
    return lut, size


def _remap(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    out = np.full(mask.shape, _IGNORE, np.uint8)
    ok = (mask >= 0) & (mask < len(lut))
    out[ok] = lut[mask[ok]].astype(np.uint8)
    return out


def _checked_pairs(spec: Any, what: str, progress: bool) -> dict[str, list[tuple[Path, Path]]]:
    """Usable pairs per split of a data set, or a one-line DataError listing the first problem."""
    from ..data import check_data

    report = check_data(spec, progress=progress)
    errors = [p for p in report.problems if p.level == "error"]
    if errors:
        raise DataError(
            f"{len(errors)} problem(s) in {what} {spec.root}, first: {errors[0]}; run `segtune check-data "
            f"{spec.root}` to list all"
        )
    if not report.pairs.get("train"):
        raise DataError(f"{spec.root}: no image/mask pairs in the train split (an update needs new labelled images)")
    return report.pairs


def _fingerprint(pairs: Sequence[tuple[Path, Path]]) -> str:
    h = hashlib.sha256()
    for img, mask in sorted(pairs):
        for p in (img, mask):
            h.update(f"{Path(p).name}:{os.path.getsize(p)}\n".encode())
    return h.hexdigest()


def _prepare_step_data(run_dir: Path, parent: _Parent, plan: _StepPlan, new_spec: Any,
                       new_pairs: dict[str, list], val_spec: Any, val_pairs: list,
                       memory_pool: list[tuple[Path, np.ndarray]], progress: bool = True) -> Path:
    """Write ``run_dir/step_data`` (images linked, masks in the step's labels) and its dataset.yaml."""
    from .._progress import progress_iter
    from ..data import read_mask
    from ..data.derived import DerivedData

    out = DerivedData(run_dir, STEP_DATA)
    n_data = len(new_spec.classes)
    new_idx = set(range(plan.num_old, len(plan.classes)))
    if plan.kind == "class":  # only the step's classes keep their label; every other labelled pixel is background
        train_map = {d: (d + plan.offset if d + plan.offset in new_idx else 0) for d in range(n_data)}
    else:
        train_map = {d: d + plan.offset for d in range(n_data)}
    train_lut, _ = _lut(n_data, new_spec.ignore_index, train_map)
    for img, mask in progress_iter(new_pairs["train"], "writing the step's masks", show=None if progress else False):
        out.add("train", f"new_{Path(img).stem}", img, _remap(read_mask(mask, new_spec), train_lut))
    for k, (img, mask) in enumerate(memory_pool):
        out.add("train", f"mem_{k:04d}_{Path(img).stem}", img, mask)
    # validation: every class known now keeps its label; classes not learned yet are ignored
    n_val = len(val_spec.classes)
    val_map = {d: d + plan.offset for d in range(n_val) if d + plan.offset < len(plan.classes)}
    val_lut, _ = _lut(n_val, val_spec.ignore_index, val_map)
    for img, mask in progress_iter(val_pairs, "writing the val masks", show=None if progress else False):
        out.add("val", Path(img).stem, img, _remap(read_mask(mask, val_spec), val_lut))
    return out.finish(f"update step {plan.parent_step + 1} of {parent.dir.name}", plan.classes,
                      _colors(parent, new_spec, plan))


def _colors(parent: _Parent, spec: Any, plan: _StepPlan) -> list[list[int]]:
    base = [list(c) for c in (spec.colors or [])]
    if len(base) != len(spec.classes):
        import matplotlib

        cmap = matplotlib.colormaps["tab20"]
        base = [[int(255 * v) for v in cmap(i % 20)[:3]] for i in range(len(spec.classes))]
    return ([[0, 0, 0]] if plan.offset else []) + base


def _memory_pool(parent: _Parent, plan: _StepPlan, old_spec: Any | None,
                 old_pairs: list | None) -> list[tuple[Path, np.ndarray]]:
    """Replay samples for this step, in the step's labels (old classes keep theirs)."""
    from ..data import read_mask
    from ..data.memory import load_memory, memory_pairs

    if plan.memory <= 0:
        return []
    items, _ = load_memory(parent.dir)
    shift = 1 if (plan.offset and parent.background is None) else 0
    pool: list[tuple[Path, np.ndarray]] = []
    if items:
        from PIL import Image

        for img, mask in memory_pairs(parent.dir, items):
            m = np.array(Image.open(mask), dtype=np.int64)
            pool.append((img, np.where(m == _IGNORE, _IGNORE, m + shift)))
        return pool
    if old_spec is not None and old_pairs:
        lut, _ = _lut(len(old_spec.classes), old_spec.ignore_index,
                      {d: d + plan.offset for d in range(len(old_spec.classes))})
        presence, arrays = [], []
        from ..data.memory import class_presence, select_balanced

        for img, mask in old_pairs:
            m = _remap(read_mask(mask, old_spec), lut).astype(np.int64)
            arrays.append((Path(img), m))
            presence.append(class_presence(m, len(plan.classes), _IGNORE))
        chosen = select_balanced(presence, plan.memory, plan.seed, exclude=(0,) if plan.kind == "class" else ())
        return [arrays[i] for i in chosen]
    return []


# ----------------------------------------------------------------------------- the update
def update(
    run: str | Path | None = None,
    new_data: str | Path | None = None,
    *,
    method: str = "auto",
    memory: int = DEFAULT_MEMORY,
    old_data: str | Path | None = None,
    val: str | Path | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    resume: str | Path | None = None,
    kd_weight: float = 10.0,
    pod_weight: float = 1.0,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> Any:
    """Update the model of ``run`` with ``new_data``; returns the new :class:`~segtune.engine.run.Run`.

    Args:
        run: finished run folder (``segtune train`` or an earlier update); never modified.
        new_data: data set whose dataset.yaml lists ``run``'s classes (same order) and maybe new
            ones; its train split is the step's data.
        method: ``auto`` or one of :func:`~segtune.incremental.methods.list_methods`.
        memory: replay samples stored with the new run (class-balanced; 0: none). The step
            replays the memory ``run`` carries (or, for a run without one, a class-balanced
            choice from ``old_data``).
        old_data: the data ``run`` was trained on, to replay from when ``run`` has no memory.
        val: data scored after the step (default: ``new_data``'s val split); classes not
            learned yet are ignored.
        out, name: where the new run folder goes (default: next to ``run``, ``<run>-u<step>``).
        overrides: config overrides (``train.epochs``, ``optim.lr``, ...).
        resume: continue an interrupted update (its folder); the other arguments are read from
            its update.yaml.
        kd_weight, pod_weight: distillation weights (lwf/mib; plop).
        progress: progress bars.
        callbacks: extra Lightning callbacks.

    Raises:
        SegtuneError: one-line errors for bad input (nothing written).
    """
    from ..engine.train import train

    if resume is not None:
        return _resume(Path(resume), progress, callbacks)
    if run is None or new_data is None:
        raise ConfigError("update: give the run folder and the new data, e.g. `segtune update runs/unet-head new_data`")
    t0 = time.perf_counter()
    parent = _load_parent(run)
    overrides = override_dict(overrides)
    inputs = _check_inputs(parent, new_data, val, old_data, overrides, memory, progress)
    if method == "auto":
        method, why = choose_method(inputs.kind)
        _log.info(f"method auto -> {method}: {why}")
    plan = _plan_step(parent, inputs, method, memory, kd_weight, pod_weight)
    run_dir = _new_step_folder(parent, out, name)
    try:
        cfg = _write_step(run_dir, parent, plan, inputs, Path(out) if out is not None else parent.dir.parent,
                          overrides, progress)
        return train(cfg, plan=_train_plan(parent, plan, t0, progress), callbacks=callbacks)
    except SegtuneError:
        if not (run_dir / "checkpoints").exists():  # refused before training: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


@dataclass
class _Inputs:
    """The checked inputs of an update."""

    kind: str
    added: list[str]
    new_spec: Any
    new_pairs: dict[str, list]
    val_spec: Any
    val_pairs: list
    old_spec: Any | None
    old_pairs: list | None
    new_data: Path
    val: Path | None
    old_data: Path | None


def _check_inputs(parent: _Parent, new_data: str | Path, val: str | Path | None, old_data: str | Path | None,
                  overrides: dict[str, Any], memory: int, progress: bool) -> _Inputs:
    """Every refusal that needs no writing: architecture overrides, class lists, bad or empty data."""
    from ..data import load_dataset_spec

    for key in ("model.arch", "model.encoder", "model.weights"):
        if key in overrides and str(overrides[key]) != str(_get(parent.cfg, key)):
            raise ConfigError(
                f"{key}={overrides[key]}: an update keeps {parent.dir.name}'s {key.split('.')[1]} "
                f"({_get(parent.cfg, key)}); train a new model for another one"
            )
    if int(memory) < 0:
        raise ConfigError(f"--memory {memory}: must be >= 0 (0 turns replay off)")
    new_spec = load_dataset_spec(new_data)
    kind, added = _kind(parent, list(new_spec.classes), str(getattr(new_spec, "source", new_data)))
    new_pairs = _checked_pairs(new_spec, "the new data", progress)
    if val is not None:
        val_spec = load_dataset_spec(val)
        _kind(parent, list(val_spec.classes)[: len(parent.data_classes)], str(val))
        vp = _checked_pairs(val_spec, "the val data", progress)
        val_pairs = vp.get("val") or vp.get("train") or []
    else:
        val_spec, val_pairs = new_spec, new_pairs.get("val") or []
        if not val_pairs:
            raise DataError(
                f"{new_data}: no val split to score the update on (add a val split with labels of "
                "every class seen so far, or pass --val DATA)"
            )
    old_spec, old_pairs = None, None
    if old_data is not None:
        old_spec = load_dataset_spec(old_data)
        _kind(parent, list(old_spec.classes), str(old_data))
        old_pairs = _checked_pairs(old_spec, "the old data", progress).get("train")
    return _Inputs(kind, added, new_spec, new_pairs, val_spec, val_pairs, old_spec, old_pairs,
                   Path(new_data).resolve(), Path(val).resolve() if val is not None else None,
                   Path(old_data).resolve() if old_data is not None else None)


def _plan_step(parent: _Parent, inputs: _Inputs, method: str, memory: int, kd_weight: float,
               pod_weight: float) -> _StepPlan:
    """The new model's classes and the step's settings; an unknown method, or one that does not
    fit this kind of update, is refused here (before anything is written)."""
    synthetic = inputs.kind == "class" and parent.background is None
    classes = ([BACKGROUND] if synthetic else []) + parent.classes + inputs.added
    if len(classes) >= _IGNORE:
        raise DataError(f"{inputs.new_data}: {len(classes)} classes; incremental updates support up to 254")
    build_method(method, Step(inputs.kind, len(classes) - len(inputs.added), len(classes), _IGNORE),
                 kd_weight, pod_weight)
    return _StepPlan(
        kind=inputs.kind, classes=classes, added=inputs.added,
        background="synthetic" if synthetic else parent.background,
        offset=1 if (synthetic or parent.background == "synthetic") else 0,
        method=method, memory=int(memory), seed=int(parent.cfg.train.seed), new_data=str(inputs.new_data),
        val_data=str(inputs.val) if inputs.val else None, old_data=str(inputs.old_data) if inputs.old_data else None,
        kd_weight=float(kd_weight), pod_weight=float(pod_weight), parent=str(parent.dir),
        parent_step=parent.step, data_fingerprint=_fingerprint(inputs.new_pairs["train"]),
    )


def _new_step_folder(parent: _Parent, out: str | Path | None, name: str | None) -> Path:
    from ..engine.run import free_run_name, new_run_dir

    out = Path(out) if out is not None else parent.dir.parent
    return new_run_dir(out, name or free_run_name(out, f"{parent.dir.name}-u{parent.step + 1}"))


def _write_step(run_dir: Path, parent: _Parent, plan: _StepPlan, inputs: _Inputs, out: Path,
                overrides: dict[str, Any], progress: bool = True) -> Config:
    """Replay pool, step data, update.yaml; returns the step's config."""
    from ..data.memory import memory_hash

    pool = _memory_pool(parent, plan, inputs.old_spec, inputs.old_pairs)
    plan.memory_sha256 = memory_hash(parent.dir)
    plan.counts = {"new_train": len(inputs.new_pairs["train"]), "memory": len(pool), "val": len(inputs.val_pairs)}
    data_root = _prepare_step_data(run_dir, parent, plan, inputs.new_spec, inputs.new_pairs, inputs.val_spec,
                                   inputs.val_pairs, pool, progress)
    atomic_write_yaml(run_dir / UPDATE_FILE, asdict(plan))
    _log.info(
        f"update {parent.dir.name} -> {run_dir}: {plan.kind}-incremental"
        + (f" (+{', '.join(plan.added)}; old classes appear only in replayed samples)" if plan.added else "")
        + f", method {plan.method}, {plan.counts['new_train']} new + {plan.counts['memory']} replayed training "
        f"images, {plan.counts['val']} val images"
    )
    return _step_config(parent, plan, data_root, out, run_dir.name, overrides)


def _get(cfg: Config, dotted: str) -> Any:
    section, key = dotted.split(".", 1)
    return getattr(getattr(cfg, section), key)


def _step_config(parent: _Parent, plan: _StepPlan, data_root: Path, out: Path, name: str,
                 overrides: dict[str, Any]) -> Config:
    """The parent's config, pointed at the step data, with the update's budget and strategy."""
    from ..strategies import STRATEGY_REGISTRY
    from ..strategies.auto import steps_per_epoch

    cfg = Config.from_dict(parent.cfg.to_dict())
    cfg.data.root = str(data_root)
    cfg.data.max_train_images = None
    cfg.data.max_val_images = None
    cfg.model.weights = str(parent.dir)
    cfg.train.out, cfg.train.name, cfg.train.overwrite = str(out), name, True
    cfg.train.cache_features = "off"
    forced = METHOD_REGISTRY.get(plan.method).strategy
    if forced:
        cfg.strategy.name = forced
    elif not STRATEGY_REGISTRY.get(cfg.strategy.name).pretrained:
        cfg.strategy.name = "full"  # the update starts from the parent's weights, not random ones
    n_train = plan.counts.get("new_train", 0) + plan.counts.get("memory", 0)
    # default budget: a third of the parent's optimiser steps (at least 50), in whole epochs
    target = max(50, parent.steps // 3) if parent.steps else 300
    cfg.train.epochs = max(1, math.ceil(target / steps_per_epoch(n_train, cfg.data.batch_size)))
    if overrides:
        apply_overrides(cfg, {k: v for k, v in overrides.items()})
    return cfg.validate()


def _train_plan(parent: _Parent, plan: _StepPlan, t0: float, progress: bool) -> Any:
    from ..engine.train import TrainPlan

    step = Step(plan.kind, plan.num_old, len(plan.classes), _IGNORE)
    method = build_method(plan.method, step, plan.kd_weight, plan.pod_weight)
    suppress = [0] if plan.background == "synthetic" else []

    def build_model(cfg: Config, spec: Any) -> Any:
        from ..models.modelfile import load_model
        from .heads import add_background, grow_model_classes

        model, _ = load_model(parent.dir)
        if plan.kind == "class" and parent.background is None:
            add_background(model)
        if plan.added:
            grow_model_classes(model, len(plan.added), init=method.init)
        if model.num_classes != spec.num_classes:
            raise RunError(f"{spec.root}: {spec.num_classes} classes but the grown model has {model.num_classes}")
        return model.train()

    def build_module(model: Any, strategy: Any, loss: Any, optim: Any, spec: Any) -> IncrementalModule:
        old = None
        if method.needs_old_model:
            from ..models.modelfile import load_model

            old, _ = load_model(parent.dir)
            if plan.kind == "class" and parent.background is None:
                from .heads import add_background

                add_background(old)  # old logits unchanged; channel 0 is the synthetic background
        fixed = plan.num_old if plan.method == "ssul" else 0
        return IncrementalModule(model, strategy, loss, optim, spec.num_classes, spec.ignore_index,
                                 list(spec.classes), method, old, suppress, fixed)

    def finalize(run_dir: Path, model: Any, metrics: dict[str, Any], summary: dict[str, Any]) -> None:
        _store_memory(run_dir, parent, plan)
        _write_report(run_dir, parent, plan, metrics, time.perf_counter() - t0)

    meta = {
        # the user's data convention, not the 255 of step_data (a folder without a dataset.yaml is
        # evaluated with the model's ignore value)
        "ignore_index": int(parent.meta.get("ignore_index", 255)),
        "background": plan.background,
        "lineage": {
            "parent": plan.parent, "step": plan.parent_step + 1, "kind": plan.kind,
            "classes_added": list(plan.added), "method": plan.method,
            "memory_sha256": plan.memory_sha256, "memory_replayed": plan.counts.get("memory", 0),
            "data_fingerprint": plan.data_fingerprint, "new_data": plan.new_data,
        },
    }
    if suppress:
        meta["inference"] = {"suppress": suppress}
    return TrainPlan(build_model=build_model, build_module=build_module, meta=meta, finalize=finalize, auto=False)


def _store_memory(run_dir: Path, parent: _Parent, plan: _StepPlan) -> None:
    """Choose the next memory (class-balanced) from this step's pool, with full labels."""
    from ..data import load_dataset_spec, read_mask
    from ..data.memory import class_presence, select_balanced, write_memory

    if plan.memory <= 0:
        return
    from PIL import Image

    spec = load_dataset_spec(plan.new_data)
    lut, _ = _lut(len(spec.classes), spec.ignore_index, {d: d + plan.offset for d in range(len(spec.classes))})
    from ..data.pairing import split_pairs

    pool: list[tuple[Path, np.ndarray]] = []
    imgs, _ = split_pairs(spec.splits["train"])
    for img, mask in sorted(imgs):
        pool.append((Path(img), _remap(read_mask(mask, spec), lut).astype(np.int64)))
    step_train = run_dir / STEP_DATA / "train"
    for m in sorted((step_train / "masks").glob("mem_*.png")):
        img = next(step_train.joinpath("images").glob(m.stem + ".*"))
        pool.append((img.resolve(), np.array(Image.open(m), dtype=np.int64)))
    presence = [class_presence(np.where(a == _IGNORE, _IGNORE, a), len(plan.classes), _IGNORE) for _, a in pool]
    chosen = select_balanced(presence, plan.memory, plan.seed, exclude=(0,) if plan.background else ())
    info = write_memory(run_dir, pool, presence, chosen, {"classes": list(plan.classes), "seed": plan.seed})
    _log.info(f"replay memory: {info['size']} samples stored in {run_dir / 'memory'} (class-balanced)")


def _write_report(run_dir: Path, parent: _Parent, plan: _StepPlan, metrics: dict[str, Any], seconds: float) -> None:
    from .report import (
        CONVENTION,
        forgetting,
        lineage_chain,
        mean_forgetting,
        plot_steps,
        step_scores,
    )

    bg = BACKGROUND if plan.background else None
    old = [c for c in plan.classes[: plan.num_old] if c != bg]
    scores = step_scores(metrics.get("per_class", []), old, plan.added, background=bg)
    chain = lineage_chain(run_dir)
    previous = [c["per_class"] for c in chain[:-1]]
    forget = forgetting(previous, scores["per_class"], old)
    doc = {
        "step": plan.parent_step + 1, "kind": plan.kind, "method": plan.method,
        "old": scores["old"], "new": scores["new"], "all": scores["all"], "hiou": scores["hiou"],
        "background": scores["background"], "forgetting": forget, "mean_forgetting": mean_forgetting(forget),
        "seconds": round(seconds, 1), "convention": CONVENTION, "counts": plan.counts,
    }
    atomic_write_json(run_dir / INCREMENTAL_FILE, doc)
    try:
        plot_steps(chain, run_dir / "steps_iou.png", background=bg)
    except Exception as e:  # a plot never loses the run
        _log.warn(f"could not draw steps_iou.png ({e})")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    mf = doc["mean_forgetting"]
    _log.info(
        f"update step {doc['step']} ({plan.method}): old {pct(doc['old'])} / new {pct(doc['new'])} / all "
        f"{pct(doc['all'])} mIoU, hIoU {pct(doc['hiou'])}, mean forgetting "
        f"{'-' if mf is None else f'{100 * mf:.1f} points'}, {seconds:.0f} s ({CONVENTION})"
    )


def _resume(run_dir: Path, progress: bool, callbacks: Sequence[Any]) -> Any:
    from ..engine.train import train

    f = run_dir / UPDATE_FILE
    if not f.is_file():
        raise RunError(f"{run_dir}: no {UPDATE_FILE} here, so it is not an update to resume (use `segtune train --resume`)")
    d = yaml.safe_load(f.read_text(encoding="utf-8"))
    plan = _StepPlan(**d)
    parent = _load_parent(plan.parent)
    if not (run_dir / STEP_DATA / "dataset.yaml").is_file():
        raise RunError(f"{run_dir}: the step's data was never completely written; start the update again")
    return train(resume=run_dir, plan=_train_plan(parent, plan, time.perf_counter(), progress), callbacks=callbacks)


def describe_methods() -> str:
    """One line per method, for help texts."""
    return "; ".join(f"{n}: {METHOD_REGISTRY.get(n).summary}" for n in list_methods())
