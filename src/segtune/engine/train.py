"""``segtune.train``: fine-tune a model on a folder data set and write a run folder."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from .. import _log
from .._io import atomic_write_yaml
from .._tensor import cpu_channels_last
from ..config import Config, apply_overrides
from ..errors import ConfigError, DataError, RunError, SegtuneError
from .callbacks import AtomicCheckpointIO, HistoryCallback, StrategyCallback
from .distributed import (
    RUN_DIR_ENV,
    TimmSyncBatchNorm,
    check_distributed_config,
    check_val_size,
    ddp_strategy,
    ddp_summary,
    follower_run_dir,
    launch_rank,
    lr_factor,
    world_size,
)
from .module import SegTuneModule
from .resume import (
    Interrupted,
    InterruptHandler,
    ResumeCallback,
    StopRequested,
    check_resume,
    fingerprint,
    remove_stale_temp_files,
)
from .run import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_META,
    Run,
    default_run_name,
    free_run_name,
    new_run_dir,
    remove_if_unused,
    save_model,
)

__all__ = ["train", "TrainPlan", "build_parts", "resolve_config", "resolve_precision"]


def resolve_config(config: Config | dict | str | Path | None, overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Turn a Config, a nested dict or a YAML path into a validated Config, applying overrides."""
    if config is None:
        cfg = Config()
    elif isinstance(config, Config):
        cfg = Config.from_dict(config.to_dict())
    elif isinstance(config, dict):
        cfg = Config.from_dict(config)
    else:
        cfg = Config.from_yaml(config)
    if overrides:
        apply_overrides(cfg, overrides)
    return cfg.validate()


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` -> ``bf16-mixed`` on a CUDA GPU that supports it, else ``32``."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32"


def _print_strategy(strategy: Any, model: torch.nn.Module) -> dict[str, Any]:
    rows = strategy.summary(0)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(r["trainable"] for r in rows)
    _log.info(f"strategy: {strategy.describe()}")
    width = max(len(str(r["group"])) for r in rows)
    _log.info(f"  {'group':<{width}}  {'trainable':>12}  {'total':>12}  {'lr':>9}")
    for r in rows:
        _log.info(f"  {r['group']:<{width}}  {r['trainable']:>12,}  {r['total']:>12,}  {r['lr']:>9.2e}")
    _log.info(f"  {'all':<{width}}  {trainable:>12,}  {total:>12,}")
    return {"trainable_params": trainable, "total_params": total}


class _EpochPrinter(L.Callback):
    """One readable line per validated epoch (also when no progress bar is shown)."""

    def __init__(self, max_epochs: int) -> None:
        self.max_epochs = max_epochs

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = pl_module.last_val_metrics or {}
        tl = pl_module.train_epoch_loss()
        vl = trainer.callback_metrics.get("val_loss")
        miou = m.get("miou")
        parts = [f"epoch {trainer.current_epoch + 1}/{self.max_epochs}"]
        if tl is not None:
            parts.append(f"train loss {tl:.4f}")
        if vl is not None:
            parts.append(f"val loss {float(vl):.4f}")
        parts.append(f"val mIoU {miou:.4f}" if miou is not None else "val mIoU n/a")
        msg = "  ".join(parts)
        bar = trainer.progress_bar_callback
        if bar is not None and hasattr(bar, "print"):
            pl_module.print(msg)
        else:
            _log.info(msg)


@dataclass
class TrainPlan:
    """How a run differs from fine-tuning a freshly built model; every hook defaults to plain
    training. Features built on the engine (``segtune.incremental``) pass one to :func:`train`.

    Attributes:
        build_model: ``(cfg, spec) -> SegModel``: the model to start from (default:
            ``create_model`` with the strategy's pretrained weights).
        build_module: ``(model, strategy, loss, optim_cfg, spec) -> SegTuneModule`` (default:
            :class:`SegTuneModule`).
        meta: extra keys of model.yaml (e.g. ``lineage``, ``inference.suppress``).
        finalize: ``(run_dir, model, metrics, summary) -> None`` after the model and metrics are
            written (rank 0), e.g. to store a replay memory.
        auto: fill ``auto`` config values from the data (False: the caller set them).
        expected: ``(problem) -> bool``: data-check warnings the plan expects (counted in one line,
            not printed one by one), e.g. the label-free masks of a distillation's unlabelled images.
    """

    build_model: Callable[[Config, Any], torch.nn.Module] | None = None
    build_module: Callable[..., SegTuneModule] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    finalize: Callable[[Path, torch.nn.Module, dict[str, Any], dict[str, Any]], None] | None = None
    auto: bool = True
    expected: Callable[[Any], bool] | None = None


def train(
    config: Config | dict | str | Path | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    callbacks: Sequence[L.Callback] = (),
    plan: TrainPlan | None = None,
) -> Run:
    """Fine-tune a segmentation model and write a run folder.

    The phases, each a function below: open the run folder (:func:`_open_run`); check the data
    and fill the auto defaults (:func:`_check_data`, :func:`_choose_defaults`); build the model,
    data, loss, strategy and module (:func:`_build_parts`); build the Lightning trainer
    (:func:`_build_trainer`); fit (:func:`_fit`); evaluate and write the model
    (:func:`_finalize`). A run refused before training starts (bad data, bad weights, bad
    config) leaves no run folder behind.

    Args:
        config: a :class:`Config`, a nested dict, or a YAML path. ``config.data.root`` must name
            the data set (a folder with dataset.yaml, or images/ + masks/).
        resume: a run folder to continue from its last checkpoint (its config.yaml is used;
            ``config`` is ignored).
        overrides: ``{"optim.lr": 3e-4}`` or ``["optim.lr=3e-4"]`` applied on top of ``config``.
        callbacks: extra Lightning callbacks (logging, custom stops), run after segtune's own.
        plan: hooks for runs that do not start from a fresh model (:class:`TrainPlan`).

    Returns:
        The :class:`Run` (folder, final validation metrics, history, summary).

    Raises:
        SegtuneError: bad data, bad config, missing weights, or an existing run folder.
    """
    t_start = time.perf_counter()
    _quiet_lightning()
    plan = plan or TrainPlan()
    start = _open_run(config, resume, overrides)
    if start.complete:
        _log.info(f"{start.run_dir}: run already complete; nothing to resume")
        return _load_run(start.run_dir)
    try:
        if start.rank:
            _log.set_quiet(True)  # rank 0 reports for all processes
        L.seed_everything(start.cfg.train.seed, workers=True, verbose=False)
        data = _check_data(start.cfg, start.rank, plan.expected)
        notes = _choose_defaults(start, data, plan.auto)
        parts = _build_parts(start, data, notes, plan)
        trainer, cbs = _build_trainer(start, parts, callbacks)
        _fit(start, parts, trainer, cbs)
    except SegtuneError:
        start.remove_if_unused()
        raise
    if not trainer.is_global_zero:
        return Run(dir=start.run_dir)
    return _finalize(start, parts, trainer, cbs, t_start, plan)


# ----------------------------------------------------------------------------- phase: run folder
@dataclass
class _Start:
    """What :func:`_open_run` decided: the config, the run folder and where training begins."""

    cfg: Config
    run_dir: Path
    resuming: bool
    ckpt_path: str | None = None
    complete: bool = False
    world: int = 1
    rank: int = 0
    created: list[Path] = field(default_factory=list)

    def remove_if_unused(self) -> None:
        """Delete the folders this call created if a refused start left only config.yaml there."""
        for d in self.created:
            if d == self.run_dir:
                remove_if_unused(d)
            else:  # the output folder: only when it is empty now
                try:
                    d.rmdir()
                except OSError:
                    pass


def _open_run(config: Any, resume: str | Path | None, overrides: Any) -> _Start:
    """Resolve the config and open the run folder: a new one (rank 0 creates it), or the one
    being resumed with its last checkpoint."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunError(f"{run_dir}: no {CONFIG_FILE} here, so it is not a segtune run folder to resume")
        if (run_dir / MODEL_META).is_file() and (run_dir / METRICS_FILE).is_file():
            return _Start(Config(), run_dir, resuming=True, complete=True)
        cfg = resolve_config(run_dir / CONFIG_FILE, overrides)
        check_distributed_config(cfg)
        rank = launch_rank(cfg.train.devices)
        if rank == 0:
            remove_stale_temp_files(run_dir)  # half-written files of a killed run
        last = run_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            _log.info(f"{run_dir}: no checkpoint yet; starting this run again from the beginning")
        return _Start(cfg, run_dir, True, str(last) if last.is_file() else None,
                      world=world_size(cfg), rank=rank)
    cfg = resolve_config(config, overrides)
    if not cfg.data.root:
        raise ConfigError("data.root is not set: pass the data set folder (e.g. `segtune train DATA`)")
    check_distributed_config(cfg)
    rank = launch_rank(cfg.train.devices)
    created: list[Path] = []
    if rank == 0:
        name = cfg.train.name or free_run_name(cfg.train.out, default_run_name(cfg.model.arch, cfg.strategy.name))
        cfg.train.name = name
        out = Path(cfg.train.out)
        if not out.exists():
            created.append(out)
        fresh = not (out / name).exists()
        run_dir = new_run_dir(out, name, overwrite=cfg.train.overwrite)
        if fresh:
            created.insert(0, run_dir)
        if world_size(cfg) > 1:  # the processes Lightning starts for DDP find the folder here
            os.environ[RUN_DIR_ENV] = str(run_dir)
    else:  # DDP rank > 0: rank 0 owns the run folder; this process writes nothing there
        run_dir = follower_run_dir(cfg)
    return _Start(cfg, run_dir, False, world=world_size(cfg), rank=rank, created=created)


# ----------------------------------------------------------------------------- phase: data + auto
@dataclass
class _Data:
    spec: Any
    report: Any
    skip: set[Path]


def _check_data(cfg: Config, rank: int, expected: Callable[[Any], bool] | None = None) -> _Data:
    """Check every pair (one pass, all problems); refuse bad data unless ``data.skip_bad``.
    Warnings for which ``expected`` is true are counted in one line instead of printed."""
    from ..data import check_data, load_dataset_spec

    spec = load_dataset_spec(cfg.data.root)
    report = check_data(spec, max_pixels=cfg.data.max_pixels, progress=cfg.train.progress and rank == 0)
    errors = [p for p in report.problems if p.level == "error"]
    hidden = []
    for p in report.problems:
        if p.level != "error":
            if expected is not None and expected(p):
                hidden.append(p)
            else:
                _log.warn(str(p))
    if hidden:
        _log.info(f"{len(hidden)} expected data-check note(s) not shown, e.g. {hidden[0]}")
    skip: set[Path] = set()
    if errors:
        if not cfg.data.skip_bad:
            raise DataError(
                f"{len(errors)} problem(s) in {cfg.data.root}, first: {errors[0]}; "
                f"run `segtune check-data {cfg.data.root}` to list all, or pass --skip-bad"
            )
        for p in errors:
            _log.warn(f"skipped: {p}")
        skip = set(report.bad_files)
    return _Data(spec, report, skip)


def _probe(cfg: Config, spec: Any, images: list[Path]) -> Any:
    """The data probe ``auto`` decides from (:func:`segtune.strategies.probe.probe_data`); the
    pretrained encoder is built for the domain-shift signal only when ``auto`` picks the strategy."""
    from ..models import create_model
    from ..strategies.auto import AUTO
    from ..strategies.probe import probe_data

    model = None
    if cfg.strategy.name == AUTO and cfg.model.weights != "none":
        model = create_model(cfg.model.arch, cfg.model.encoder, num_classes=spec.num_classes,
                             weights=cfg.model.weights)
    return probe_data(images, model, seed=cfg.train.seed)


def _choose_defaults(start: _Start, data: _Data, auto: bool = True) -> list[str]:
    """Fill ``auto`` values from the number of training images (new runs only); write
    config.yaml (rank 0). Returns the lines explaining the choices (printed once the model
    is built, so a refusal stays a single line)."""
    cfg = start.cfg
    notes = _auto_notes(cfg, data) if auto and not start.resuming else []
    if start.rank == 0 and (not start.resuming or not (start.run_dir / CONFIG_FILE).is_file()):
        atomic_write_yaml(start.run_dir / CONFIG_FILE, cfg.to_dict())
    return notes


def _auto_notes(cfg: Config, data: _Data) -> list[str]:
    """Fill the ``auto`` values of ``cfg`` in place; the lines explaining the choices."""
    from ..data.split import split_train_val
    from ..strategies.auto import resolve_auto

    # the same pure split as the data module's (report.pairs holds the usable pairs only)
    spec, pairs = data.spec, data.report.pairs
    has_val = "val" in spec.splits and spec.splits["val"].masks is not None
    split = split_train_val(
        pairs.get("train", []), pairs.get("val", []) if has_val else None,
        val_fraction=cfg.data.val_fraction, seed=cfg.train.seed,
        max_train_images=cfg.data.max_train_images, source=str(cfg.data.root),
    )
    return resolve_auto(cfg, len(split.train), _probe(cfg, spec, [i for i, _ in split.train]))


def build_parts(config: Config | dict | str | Path | None,
                overrides: dict[str, Any] | list[str] | None = None) -> tuple[Config, _Parts]:
    """The model, data module, loss, strategy and Lightning module exactly as :func:`train`
    builds them for a new run, without a run folder or trainer (e.g. for an LR range test).

    Returns:
        ``(cfg, parts)``: the resolved config (``auto`` values filled in) and the parts
        (``parts.model``, ``parts.dm`` set up, ``parts.strategy``, ``parts.module``).

    Raises:
        SegtuneError: bad data, bad config or missing weights (nothing is written).
    """
    cfg = resolve_config(config, overrides)
    if not cfg.data.root:
        raise ConfigError("data.root is not set: pass the data set folder (e.g. `segtune lr-find DATA`)")
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    data = _check_data(cfg, 0)
    notes = _auto_notes(cfg, data)
    start = _Start(cfg, Path(cfg.train.out), resuming=False)
    return cfg, _build_parts(start, data, notes, TrainPlan())


# ----------------------------------------------------------------------------- phase: components
@dataclass
class _Parts:
    spec: Any
    model: Any
    dm: Any
    strategy: Any
    module: SegTuneModule
    fprint: dict[str, Any]
    feature_cache: bool
    summary: dict[str, Any]


def _build_parts(start: _Start, data: _Data, notes: list[str], plan: TrainPlan) -> _Parts:
    """Model, data module, loss, strategy and the Lightning module; the feature-cache decision."""
    from ..data import SegDataModule
    from ..data.feature_cache import cache_decision
    from ..losses import build_loss, class_weights_from_counts
    from ..models import create_model
    from ..strategies import STRATEGY_REGISTRY, build_strategy

    cfg, spec = start.cfg, data.spec
    if plan.build_model is not None:
        model = plan.build_model(cfg, spec)
    else:
        pretrained = STRATEGY_REGISTRY.get(cfg.strategy.name).pretrained
        model = create_model(cfg.model.arch, cfg.model.encoder, num_classes=spec.num_classes,
                             weights=cfg.model.weights if pretrained else "none")
    for note in notes:
        _log.info(note)
    dm = SegDataModule(spec, cfg.data, model.mean, model.std, seed=cfg.train.seed, skip=data.skip)
    dm.setup()
    _log.info(
        f"data: {spec.name or cfg.data.root}: {len(dm.train_pairs)} train / {len(dm.val_pairs)} val images, "
        f"{spec.num_classes} classes, ignore_index {spec.ignore_index}"
    )
    if start.world > 1:
        check_val_size(len(dm.val_pairs), start.world)
    fprint = fingerprint(spec, model, dm.train_pairs, cfg.data.batch_size)
    if start.ckpt_path is not None:
        at = check_resume(start.ckpt_path, fprint)  # refuses when classes / architecture / images changed
        _log.info(f"resuming {start.run_dir} from {start.ckpt_path} (after step {at['step']})")
    cw = None
    if cfg.loss.class_weights != "none":
        cw = class_weights_from_counts(dm.class_pixel_counts(), cfg.loss.class_weights)
        if cw is not None:
            _log.info("class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(spec.classes, cw.tolist(), strict=True)))
    loss = build_loss(cfg.loss, spec.num_classes, spec.ignore_index, cw)
    lr = cfg.optim.lr * lr_factor(cfg.optim.lr_scaling, start.world)
    strategy = build_strategy(model, cfg.strategy, lr)
    summary = _print_strategy(strategy, model)
    use_cache, cache_line = cache_decision(cfg, model, strategy, start.world)
    if use_cache or strategy.encoder_frozen or cfg.data.augment == "flip":
        _log.info(cache_line)  # said where the user could want it
    build_module = plan.build_module or (
        lambda m, st, lo, oc, sp: SegTuneModule(m, st, lo, oc, sp.num_classes, sp.ignore_index, sp.classes)
    )
    module = build_module(model, strategy, loss, dataclasses.replace(cfg.optim, lr=lr), spec)
    return _Parts(spec, model, dm, strategy, module, fprint, use_cache, summary)


# ----------------------------------------------------------------------------- phase: trainer
@dataclass
class _Callbacks:
    history: HistoryCallback
    best: ModelCheckpoint
    resume: ResumeCallback
    interrupt: InterruptHandler


def _build_trainer(start: _Start, parts: _Parts, extra: Sequence[L.Callback]) -> tuple[L.Trainer, _Callbacks]:
    """The Lightning trainer with segtune's callbacks (strategy, history, checkpoints, resume,
    early stopping, epoch lines, progress bar) followed by the caller's ``extra`` ones."""
    cfg, run_dir = start.cfg, start.run_dir
    ckpt_dir = run_dir / "checkpoints"
    cbs = _Callbacks(
        history=HistoryCallback(run_dir),
        best=ModelCheckpoint(
            dirpath=ckpt_dir, filename="best", monitor="val_miou", mode="max", save_top_k=1,
            save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
        ),
        resume=None,  # type: ignore[arg-type]
        interrupt=InterruptHandler(),
    )
    cbs.resume = ResumeCallback(ckpt_dir / "last.ckpt", parts.dm, cfg.train.checkpoint_every, parts.fprint, cbs.interrupt)
    callbacks: list[L.Callback] = [StrategyCallback(), cbs.history, cbs.best, cbs.resume, _EpochPrinter(cfg.train.epochs)]
    if cfg.train.early_stopping:
        callbacks.append(EarlyStopping(monitor="val_miou", mode="max", patience=cfg.train.early_stopping,
                                       check_finite=False, strict=False))
    show_bar = cfg.train.progress and sys.stderr.isatty()
    if show_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=False))
    from ..tracking import build_tracking

    spec = parts.spec
    logger, tracking = build_tracking(cfg.train.logger, run_dir, cfg.train.num_overlays, spec.colors,
                                      spec.ignore_index, params=cfg.to_dict() if start.rank == 0 else None)
    callbacks.extend(tracking)
    callbacks.extend(extra)
    precision = resolve_precision(cfg.train.precision, cfg.train.accelerator)
    parts.summary["precision"] = precision
    sync_bn = [TimmSyncBatchNorm()] if cfg.train.sync_batchnorm and start.world > 1 else []
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps or -1,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        precision=precision,
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(run_dir),
        gradient_clip_val=cfg.optim.grad_clip or None,
        check_val_every_n_epoch=cfg.train.val_every,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=show_bar,
        strategy=ddp_strategy(parts.strategy.static) if start.world > 1 else "auto",
        plugins=[AtomicCheckpointIO(), *sync_bn],
        deterministic="warn" if cfg.train.deterministic else None,
        log_every_n_steps=1,
    )
    _log.info(f"training on {trainer.strategy.root_device}, precision {precision}, run folder {run_dir}")
    return trainer, cbs


# ----------------------------------------------------------------------------- phase: fit
def _fit(start: _Start, parts: _Parts, trainer: L.Trainer, cbs: _Callbacks) -> None:
    """Train (from cached encoder features when decided), turning interrupts into a saved
    checkpoint and a one-line :class:`Interrupted` error."""
    cfg, run_dir, model = start.cfg, start.run_dir, parts.model
    if parts.feature_cache:
        from ..data.feature_cache import FEATURE_CACHE_DIR

        device = trainer.strategy.root_device
        model.to(device)
        # the same NHWC decision SegTuneModule.setup makes for one CPU process, so the cached
        # features are computed exactly as the live encoder computes them in training
        parts.dm.train_from_features(model, run_dir / FEATURE_CACHE_DIR,
                                     channels_last=cpu_channels_last(model, device), progress=cfg.train.progress)
    if start.world > 1:
        _log.info(ddp_summary(start.world, cfg.data.batch_size, cfg.optim.lr, cfg.optim.lr_scaling))
        if parts.strategy.static:
            parts.strategy.set_trainable(model, 0)  # frozen parameters must be frozen before DDP wraps the model
        else:
            model.requires_grad_(True)  # gradual: all registered with DDP; unused (frozen) ones get no grad
    resume_hint = f"continue with `segtune train --resume {run_dir}`"
    with warnings.catch_warnings():
        for message in (
            ".*does not have many workers.*", ".*number of training batches.*", ".*deterministic.*",
            ".*sync_dist=True.*",  # val_miou: already summed over ranks
            ".*ended before the epoch ended.*",  # resumable: ResumeCallback
        ):
            warnings.filterwarnings("ignore", message=message)
        try:
            with cbs.interrupt:
                try:
                    trainer.fit(parts.module, datamodule=parts.dm, ckpt_path=start.ckpt_path, weights_only=True)
                finally:
                    parts.module.teardown("fit")  # idempotent; Lightning skips it when fit raises
                    parts.dm.train_from_images()  # RAM freed, <run>/feature_cache/ deleted
        except StopRequested:
            raise Interrupted(
                f"{run_dir}: training stopped by {cbs.interrupt.signal_name or 'an interrupt'} at step "
                f"{cbs.resume.stopped_at}, checkpoint saved; {resume_hint}"
            ) from None
        except (KeyboardInterrupt, SystemExit):
            if not cbs.interrupt.requested:
                raise
            raise Interrupted(
                f"{run_dir}: training aborted by a second interrupt; {resume_hint} (from the last checkpoint)"
            ) from None
    if trainer.interrupted:
        raise RunError(f"training interrupted; {resume_hint}")


# ----------------------------------------------------------------------------- phase: finalize
def _finalize(start: _Start, parts: _Parts, trainer: L.Trainer, cbs: _Callbacks, t_start: float,
              plan: TrainPlan) -> Run:
    """Load the best checkpoint, score the whole val set, write the model, metrics, overlays
    and history (rank 0)."""
    from .evaluate import evaluate_model, write_evaluation

    cfg, run_dir, spec, dm = start.cfg, start.run_dir, parts.spec, parts.dm
    best = Path(cbs.best.best_model_path) if cbs.best.best_model_path else None
    if best and best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        parts.module.load_state_dict(state)
        if cbs.best.best_model_score is not None:
            _log.info(f"best epoch by val mIoU: {float(cbs.best.best_model_score):.4f}")
    model = parts.module.model.cpu().eval()
    suppress = (plan.meta.get("inference") or {}).get("suppress", [])
    metrics = evaluate_model(model, dm.val_dataloader(whole=True), spec.num_classes, spec.ignore_index,
                             spec.classes, suppress=suppress)
    summary = parts.summary
    summary.update(
        strategy=cfg.strategy.name,
        epochs=len(cbs.history.rows),
        steps=int(trainer.global_step),
        seconds=round(time.perf_counter() - t_start, 1),
        train_images=len(dm.train_pairs),
        val_images=len(dm.val_pairs),
        processes=start.world,
        feature_cache=parts.feature_cache,
    )
    meta = {
        "classes": list(spec.classes),
        "colors": [list(c) for c in spec.colors] if spec.colors else None,
        "ignore_index": spec.ignore_index,
        "normalization": {"mean": list(model.mean), "std": list(model.std)},
        "input": {"pad_multiple": 32},
        "strategy": cfg.strategy.name,
        "trained_on": str(cfg.data.root),
        "val_miou": metrics.get("miou"),
        **plan.meta,
    }
    save_model(run_dir, model, meta)
    write_evaluation(run_dir, metrics, summary=summary, confusion_png=True)
    if plan.finalize is not None:
        plan.finalize(run_dir, model, metrics, summary)
    else:  # a plain run keeps a small replay memory for a later `segtune update`
        from ..data.memory import store_training_memory

        info = store_training_memory(run_dir, dm.train_pairs, spec, cfg.train.memory, cfg.train.seed)
        if info:
            _log.info(f"replay memory: {info['size']} training samples stored in {run_dir / 'memory'} "
                      "(class-balanced; for `segtune update`)")
    _write_overlays(run_dir, model, meta, dm.val_pairs[: cfg.train.num_overlays], spec)
    if not cbs.history.rows:  # max_steps ended the first epoch before any validation: one partial row
        cbs.history.rows.append({"epoch": 1, "step": int(trainer.global_step), "val_miou": metrics.get("miou"),
                                 "train_loss": parts.module.train_epoch_loss(), "seconds": summary["seconds"]})
    cbs.history.write()
    done = f"{summary['epochs']} epochs" if summary["epochs"] else "less than one epoch"
    _log.info(
        f"done: val mIoU {metrics['miou']:.4f} after {done} ({summary['steps']} steps), "
        f"{summary['seconds']:.0f} s; results in {run_dir}"
    )
    return Run(dir=run_dir, metrics=metrics, history=cbs.history.rows, summary=summary)


def _quiet_lightning() -> None:
    """Keep Lightning's banner lines (GPU available, tips) out of the user's terminal."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*could not find the monitored key.*")
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")


def _write_overlays(run_dir: Path, model: torch.nn.Module, meta: dict[str, Any], pairs: list, spec: Any) -> None:
    if not pairs:
        return
    from ..data import read_image, read_mask
    from ..inference import Predictor
    from ..report import save_triptych

    pred = Predictor(model, meta)
    out = run_dir / "val_overlays"
    out.mkdir(exist_ok=True)
    for img_path, mask_path in pairs:
        image = read_image(img_path)
        truth = read_mask(mask_path, spec)
        save_triptych(
            out / f"{Path(img_path).stem}.png", image, truth, pred.predict(image),
            meta["colors"], spec.ignore_index, class_names=meta["classes"],
        )


def _load_run(run_dir: Path) -> Run:
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    return Run(dir=run_dir, metrics=metrics.get("metrics", metrics), summary=metrics.get("summary", {}))

