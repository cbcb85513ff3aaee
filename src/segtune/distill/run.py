"""``segtune distill``: train a smaller student on a trained run's soft outputs.

A distillation reads a finished run folder (the teacher, never modified), a data set with the
teacher's classes (DATA) and optionally a folder of images without masks, and writes a **new**
run folder holding the student. The student trains with the engine's loop
(:func:`segtune.engine.train.train` with a :class:`~segtune.engine.train.TrainPlan`) on

    alpha * (the run's loss on the labels) + (1 - alpha) * T^2 * KL(teacher_T || student_T)

(:mod:`segtune.distill.losses`). The teacher runs frozen in eval mode with its own input
normalisation; the student uses its encoder's. Unlabelled images enter the KD term only.

The training data is written into ``<student run>/distill_data`` (images linked, masks in index
form with 255 as ignore, unlabelled images with all-ignore masks, DATA's val split or its seeded
hold-out as val), so the engine trains on it like on any data set and an interrupted
distillation resumes (``segtune distill --resume RUN``). ``distill.yaml`` records the plan;
model.yaml records the teacher.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .. import _log
from .._io import atomic_write_yaml
from ..config import Config, apply_overrides, override_dict
from ..errors import ConfigError, DataError, RunError, SegtuneError

__all__ = ["distill", "resume_distill", "DISTILL_FILE", "DISTILL_DATA", "DEFAULT_TEMPERATURE", "DEFAULT_ALPHA"]

DISTILL_FILE = "distill.yaml"
DISTILL_DATA = "distill_data"
DEFAULT_TEMPERATURE = 2.0
DEFAULT_ALPHA = 0.5
_IGNORE = 255  # = segtune.data.derived.DERIVED_IGNORE
_LABELLED, _UNLABELLED = "lab_", "unl_"


# ----------------------------------------------------------------------------- the teacher
@dataclass
class _Teacher:
    dir: Path
    meta: dict[str, Any]
    cfg: Config
    classes: list[str]
    steps: int  # optimiser steps of the teacher's run (the default budget)


def _load_teacher(run: str | Path) -> _Teacher:
    from ..engine.run import missing_run_files, run_steps
    from ..models.modelfile import load_model_meta

    run = Path(run)
    if not run.is_dir():
        raise RunError(f"{run}: teacher run folder not found (give a folder written by `segtune train`)")
    missing = missing_run_files(run)
    if missing:
        raise RunError(
            f"{run}: not a finished segtune run folder (missing {', '.join(missing)}); give a folder written by "
            f"`segtune train`, or finish it first with `segtune train --resume {run}`"
        )
    meta = load_model_meta(run)
    if (meta.get("inference") or {}).get("suppress"):
        raise RunError(f"{run}: the teacher predicts with suppressed classes (an incremental update with a "
                       "synthetic background); distil from a run trained with `segtune train`")
    steps = run_steps(run)
    return _Teacher(run.resolve(), meta, Config.from_yaml(run / "config.yaml"),
                    [str(c) for c in meta.get("classes") or []], steps)


# ----------------------------------------------------------------------------- the plan
@dataclass
class _Plan:
    """Everything a distillation (and its resume) needs; stored as distill.yaml."""

    teacher: str
    data: str
    unlabelled: str | None
    student_arch: str
    student_encoder: str
    temperature: float
    alpha: float
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    hint_weight: float = 0.0


@dataclass
class _Inputs:
    spec: Any
    train: list[tuple[Path, Path]]
    val: list[tuple[Path, Path]]
    unlabelled: list[tuple[Path, tuple[int, int]]]  # (image, (W, H))


def distill(
    teacher_run: str | Path,
    data: str | Path,
    *,
    student_arch: str,
    student_encoder: str,
    unlabelled: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
    alpha: float = DEFAULT_ALPHA,
    hint_weight: float = 0.0,
    out: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
) -> Path:
    """Train a student network on a teacher run's soft outputs (and DATA's labels).

    Args:
        teacher_run: finished run folder (``segtune train``); never modified.
        data: data set with the teacher's classes (same names, same order); its train split gives
            the labels, its val split (or a seeded hold-out, as in training) scores the student.
        student_arch: architecture of the student (``segtune models`` lists them).
        student_encoder: timm encoder of the student (e.g. ``tf_efficientnet_lite0``).
        unlabelled: folder of images without masks, used for the KD term only.
        overrides: config overrides of the student run (``train.max_steps``, ``optim.lr``,
            ``data.max_train_images``, ...). The student starts from the teacher's config with
            the architecture, encoder and data replaced; by default it trains for as many
            optimiser steps as the teacher did.
        temperature: softmax temperature T of the KD term (> 0).
        alpha: weight of the labels' loss in [0, 1]; the KD term gets ``1 - alpha``.
        hint_weight: weight of a feature hint (0, the default: off): the student's decoder output,
            through a trained 1x1 convolution, regresses the teacher's (MSE); SMP architectures.
        out, name: where the student's run folder goes (default: next to the teacher,
            ``<teacher>-<arch>-<encoder>``).
        progress: progress bars.
        callbacks: extra Lightning callbacks.

    Returns:
        The student's run folder (config.yaml, model.safetensors + model.yaml, metrics.json...).

    Raises:
        SegtuneError: one-line errors (teacher not a run folder, classes differing from DATA,
            unknown student architecture or encoder, bad data); nothing is left behind.
    """
    from ..engine.train import train
    from .losses import check_temperature_alpha

    try:
        check_temperature_alpha(temperature, alpha)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not float(hint_weight) >= 0:
        raise ConfigError(f"hint weight {hint_weight}: must be >= 0 (0 turns the feature hint off)")
    teacher = _load_teacher(teacher_run)
    cfg = _student_config(teacher, student_arch, student_encoder, overrides)
    inputs = _check_inputs(teacher, data, unlabelled, cfg, progress)
    _build_student(cfg, len(teacher.classes))  # refuses an unknown encoder or missing weights now
    plan = _Plan(str(teacher.dir), str(Path(data).resolve()), str(Path(unlabelled).resolve()) if unlabelled else None,
                 cfg.model.arch, cfg.model.encoder, float(temperature), float(alpha), list(teacher.classes),
                 {"labelled": len(inputs.train), "unlabelled": len(inputs.unlabelled), "val": len(inputs.val)},
                 float(hint_weight))
    out = Path(out) if out is not None else teacher.dir.parent
    run_dir = _new_folder(teacher, cfg, out, name)
    try:
        data_root = _write_data(run_dir, teacher, inputs, progress)
        atomic_write_yaml(run_dir / DISTILL_FILE, asdict(plan))
        _finish_config(cfg, plan, data_root, out, run_dir.name, overrides)
        _log.info(f"distill {teacher.dir.name} -> {run_dir}: student {plan.student_arch}/{plan.student_encoder}, "
                  f"{plan.counts['labelled']} labelled + {plan.counts['unlabelled']} unlabelled training images, "
                  f"{plan.counts['val']} val images, T {plan.temperature:g}, alpha {plan.alpha:g}")
        run = train(cfg, plan=_train_plan(teacher, plan), callbacks=callbacks)
    except SegtuneError:
        if not (run_dir / "checkpoints").exists():  # refused before training: leave nothing behind
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return Path(run.dir)


def resume_distill(run_dir: str | Path, callbacks: Sequence[Any] = ()) -> Path:
    """Continue an interrupted distillation from its last checkpoint; returns its run folder."""
    from ..engine.train import train

    run_dir = Path(run_dir)
    f = run_dir / DISTILL_FILE
    if not f.is_file():
        raise RunError(f"{run_dir}: no {DISTILL_FILE} here, so it is not a distillation to resume "
                       "(use `segtune train --resume` for a training run)")
    plan = _Plan(**yaml.safe_load(f.read_text(encoding="utf-8")))
    teacher = _load_teacher(plan.teacher)
    if not (run_dir / DISTILL_DATA / "dataset.yaml").is_file():
        raise RunError(f"{run_dir}: the training data was never completely written; start the distillation again")
    return Path(train(resume=run_dir, plan=_train_plan(teacher, plan), callbacks=callbacks).dir)


# ----------------------------------------------------------------------------- checks
def _student_config(teacher: _Teacher, arch: str, encoder: str, overrides: Any) -> Config:
    """The teacher's config with the student's architecture, the overrides applied."""
    from ..models.factory import ARCHITECTURES

    ARCHITECTURES.get(arch)  # an unknown architecture is refused before the data is read
    cfg = Config.from_dict(teacher.cfg.to_dict())
    cfg.model.arch, cfg.model.encoder = str(arch), str(encoder)
    if cfg.model.weights not in ("imagenet", "none"):  # the teacher's starting file is not the student's
        cfg.model.weights = "imagenet"
    cfg.train.cache_features = "off"  # the teacher needs the images of every batch
    cfg.train.name, cfg.train.overwrite = None, False
    ov = override_dict(overrides)
    for key in ("model.arch", "model.encoder"):
        if key in ov:
            raise ConfigError(f"{key}={ov[key]}: the student is set by --student ARCH/ENCODER "
                              "(student_arch=, student_encoder= in Python), not by an override")
    if teacher.steps and not {"train.epochs", "train.max_steps"} & set(ov):
        cfg.train.max_steps = teacher.steps  # the same budget as the teacher's run
    if ov:
        apply_overrides(cfg, ov)
    return cfg.validate()


def _build_student(cfg: Config, num_classes: int) -> Any:
    """The student network (refuses an unknown architecture or encoder, or missing weights)."""
    from ..models import create_model
    from ..strategies import STRATEGY_REGISTRY

    pretrained = STRATEGY_REGISTRY.get(cfg.strategy.name).pretrained
    return create_model(cfg.model.arch, cfg.model.encoder, num_classes=num_classes,
                        weights=cfg.model.weights if pretrained else "none")


def _check_inputs(teacher: _Teacher, data: str | Path, unlabelled: str | Path | None, cfg: Config,
                  progress: bool) -> _Inputs:
    """DATA's classes against the teacher's, its usable pairs and split, the unlabelled images."""
    from ..data import check_data, load_dataset_spec
    from ..data.split import split_train_val

    spec = load_dataset_spec(data)
    if list(spec.classes) != teacher.classes:
        raise DataError(
            f"{spec.source}: classes {list(spec.classes)} differ from the teacher's {teacher.classes} "
            f"in {teacher.dir}; a student learns the teacher's classes: give data with the same class "
            "names in the same order"
        )
    if len(spec.classes) >= _IGNORE:
        raise DataError(f"{spec.source}: {len(spec.classes)} classes; distillation supports up to 254")
    report = check_data(spec, max_pixels=cfg.data.max_pixels, progress=progress)
    errors = [p for p in report.problems if p.level == "error"]
    if errors:
        raise DataError(f"{len(errors)} problem(s) in {spec.root}, first: {errors[0]}; run "
                        f"`segtune check-data {spec.root}` to list all")
    has_val = "val" in spec.splits and spec.splits["val"].masks is not None
    split = split_train_val(report.pairs.get("train", []), report.pairs.get("val", []) if has_val else None,
                            val_fraction=cfg.data.val_fraction, seed=cfg.train.seed,
                            max_train_images=cfg.data.max_train_images, max_val_images=cfg.data.max_val_images,
                            source=str(spec.root))
    if not split.train:
        raise DataError(f"{spec.root}: no image/mask pairs to train on")
    unl = _unlabelled_images(unlabelled, split.train, split.val, cfg.data.max_pixels) if unlabelled else []
    return _Inputs(spec, list(split.train), list(split.val), unl)


def _unlabelled_images(folder: str | Path, train: list, val: list, max_pixels: int) -> list[tuple[Path, tuple[int, int]]]:
    """The images of ``folder`` with their sizes, without DATA's labelled training and val images."""
    from ..data.decode import image_size
    from ..data.pairing import list_files

    files, problems = list_files(folder, "image")
    if problems and not files:
        raise DataError(f"{folder}: {problems[0].message} (give a folder of images for --unlabelled)")
    if not files:
        raise DataError(f"{folder}: no images in this folder (--unlabelled takes a folder of images without masks)")
    labelled = {Path(p).resolve() for p, _ in train}
    held = {Path(p).resolve() for p, _ in val}
    out, skipped, in_val = [], 0, 0
    for f in files:
        r = f.resolve()
        if r in labelled:
            skipped += 1
        elif r in held:
            in_val += 1
        else:
            out.append((f, image_size(f, max_pixels)))
    if skipped:
        _log.info(f"{folder}: {skipped} image(s) are labelled training images of DATA; used with their labels")
    if in_val:
        _log.warn(f"{folder}: {in_val} image(s) are DATA's val images; left out (they score the student)")
    if not out:
        raise DataError(f"{folder}: every image here is already in DATA; give images without masks")
    return out


# ----------------------------------------------------------------------------- the run folder
def _new_folder(teacher: _Teacher, cfg: Config, out: Path, name: str | None) -> Path:
    from ..engine.run import free_run_name, new_run_dir

    enc = cfg.model.encoder.replace("/", "_")
    return new_run_dir(out, name or free_run_name(out, f"{teacher.dir.name}-{cfg.model.arch}-{enc}"))


def _write_data(run_dir: Path, teacher: _Teacher, inputs: _Inputs, progress: bool) -> Path:
    """``run_dir/distill_data``: labelled and unlabelled training images, val; index masks."""
    from .._progress import progress_iter
    from ..data import read_mask
    from ..data.derived import DerivedData

    spec = inputs.spec
    out = DerivedData(run_dir, DISTILL_DATA)
    show = None if progress else False
    jobs = [("train", _LABELLED, p) for p in inputs.train] + [("val", "", p) for p in inputs.val]
    for k, (split, prefix, (img, mask)) in enumerate(progress_iter(jobs, "writing the student's masks", show=show)):
        m = read_mask(mask, spec)
        out.add(split, f"{prefix}{k:05d}_{Path(img).stem}", img, np.where((m >= 0) & (m < spec.num_classes), m, _IGNORE))
    for k, (img, (w, h)) in enumerate(inputs.unlabelled):
        out.add("train", f"{_UNLABELLED}{k:05d}_{Path(img).stem}", img, np.full((h, w), _IGNORE, np.uint8))
    return out.finish(f"distillation data of {teacher.dir.name} ({spec.name or spec.root})", spec.classes,
                      _colors(teacher, spec))


def _colors(teacher: _Teacher, spec: Any) -> list[list[int]] | None:
    colors = teacher.meta.get("colors") or spec.colors
    return [list(map(int, c)) for c in colors] if colors and len(colors) == len(spec.classes) else None


def _finish_config(cfg: Config, plan: _Plan, data_root: Path, out: Path, name: str, overrides: Any) -> None:
    """Point the student's config at the written data; the budget in whole epochs."""
    from ..strategies.auto import steps_per_epoch

    cfg.data.root = str(data_root)
    cfg.data.max_train_images = cfg.data.max_val_images = None  # applied when the data was written
    cfg.train.out, cfg.train.name, cfg.train.overwrite = str(out), name, True
    ov = override_dict(overrides)
    if "train.epochs" not in ov and cfg.train.max_steps:
        n = plan.counts["labelled"] + plan.counts["unlabelled"]
        cfg.train.epochs = max(1, math.ceil(cfg.train.max_steps / steps_per_epoch(n, cfg.data.batch_size)))
    cfg.validate()


# ----------------------------------------------------------------------------- engine hooks
def _train_plan(teacher: _Teacher, plan: _Plan) -> Any:
    from ..engine.train import TrainPlan
    from .module import DistillModule

    def build_model(cfg: Config, spec: Any) -> Any:  # after the engine seeded the run: repeatable
        if list(spec.classes) != plan.classes:
            raise RunError(f"{spec.root}: classes changed since the distillation started")
        return _build_student(cfg, len(plan.classes)).train()

    def build_module(model: Any, strategy: Any, loss: Any, optim: Any, spec: Any) -> DistillModule:
        from ..models.modelfile import load_model

        t_model, t_meta = load_model(teacher.dir)
        norm = t_meta.get("normalization") or {}
        t_norm = (tuple(norm.get("mean", t_model.mean)), tuple(norm.get("std", t_model.std)))
        return DistillModule(model, strategy, loss, optim, spec.num_classes, spec.ignore_index, list(spec.classes),
                             t_model, t_norm, plan.temperature, plan.alpha, plan.hint_weight)

    def finalize(run_dir: Path, model: Any, metrics: dict[str, Any], summary: dict[str, Any]) -> None:
        _store_memory(run_dir)

    tmodel = teacher.meta.get("model") or {}
    # the user's data convention, not the 255 of distill_data: evaluate reads a folder without a
    # dataset.yaml with the model's ignore value
    meta = {"ignore_index": int(teacher.meta.get("ignore_index", _IGNORE)), "distillation": {
        "teacher": plan.teacher, "teacher_arch": tmodel.get("arch"), "teacher_encoder": tmodel.get("encoder"),
        "teacher_val_miou": teacher.meta.get("val_miou"), "temperature": plan.temperature, "alpha": plan.alpha,
        "hint_weight": plan.hint_weight,
        "data": plan.data, "unlabelled": plan.unlabelled, "counts": dict(plan.counts),
    }}
    return TrainPlan(build_model=build_model, build_module=build_module, meta=meta, finalize=finalize, auto=False,
                     expected=_unlabelled_note)


def _unlabelled_note(problem: Any) -> bool:
    """The data check's warnings about the label-free masks of the unlabelled images."""
    return Path(problem.path).name.startswith(_UNLABELLED)


def _store_memory(run_dir: Path) -> None:
    """A replay memory from the labelled training images (as a plain run keeps one)."""
    from ..data import find_pairs, load_dataset_spec
    from ..data.memory import store_training_memory

    cfg = Config.from_yaml(run_dir / "config.yaml")
    spec = load_dataset_spec(run_dir / DISTILL_DATA)
    pairs, _ = find_pairs(spec.splits["train"].images, spec.splits["train"].masks)
    labelled = sorted((Path(i), Path(m)) for i, m in pairs if Path(m).name.startswith(_LABELLED))
    info = store_training_memory(run_dir, labelled, spec, cfg.train.memory, cfg.train.seed)
    if info:
        _log.info(f"replay memory: {info['size']} labelled training samples stored in {run_dir / 'memory'}")
