"""``segtune.train``: fine-tune a model on a folder data set and write a run folder."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from .. import _log
from .._io import atomic_write_json, atomic_write_yaml
from ..config import Config, apply_overrides
from ..errors import ConfigError, DataError, RunError, SegtuneError
from .callbacks import AtomicCheckpointIO, HistoryCallback, StrategyCallback
from .distributed import (
    RUN_DIR_ENV,
    TimmSyncBatchNorm,
    check_distributed_config,
    ddp_strategy,
    ddp_summary,
    dump_rank_state,
    follower_run_dir,
    launch_rank,
    lr_factor,
    use_unrepeated_validation,
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
    save_model,
)

__all__ = ["train", "resolve_config", "resolve_precision"]


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


def train(
    config: Config | dict | str | Path | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> Run:
    """Fine-tune a segmentation model and write a run folder (see :func:`_train`).

    A run refused before training starts (bad data, bad weights) leaves no run folder behind.
    """
    created: list[Path] = []
    try:
        return _train(config, resume=resume, overrides=overrides, _created=created)
    except SegtuneError:
        for d in created:
            _remove_if_unused(d)
        raise


def _remove_if_unused(run_dir: Path) -> None:
    """Delete a run folder this call created if it holds nothing but its config.yaml."""
    try:
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {CONFIG_FILE}:
            (run_dir / CONFIG_FILE).unlink(missing_ok=True)
            run_dir.rmdir()
    except OSError:
        pass


def _train(
    config: Config | dict | str | Path | None = None,
    *,
    resume: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    _created: list[Path] | None = None,
) -> Run:
    """Fine-tune a segmentation model and write a run folder.

    Args:
        config: a :class:`Config`, a nested dict, or a YAML path. ``config.data.root`` must name
            the data set (a folder with dataset.yaml, or images/ + masks/).
        resume: a run folder to continue from its last checkpoint (its config.yaml is used;
            ``config`` is ignored).
        overrides: ``{"optim.lr": 3e-4}`` or ``["optim.lr=3e-4"]`` applied on top of ``config``.

    Returns:
        The :class:`Run` (folder, final validation metrics, history, summary).

    Raises:
        SegtuneError: bad data, bad config, missing weights, or an existing run folder.
    """
    from ..data import SegDataModule, check_data, load_dataset_spec
    from ..losses import build_loss, class_weights_from_counts
    from ..models import create_model
    from ..strategies import build_strategy

    t_start = time.perf_counter()
    _quiet_lightning()
    ckpt_path: str | None = None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG_FILE).is_file():
            raise RunError(f"{run_dir}: no {CONFIG_FILE} here, so it is not a segtune run folder to resume")
        if (run_dir / MODEL_META).is_file() and (run_dir / METRICS_FILE).is_file():
            _log.info(f"{run_dir}: run already complete; nothing to resume")
            return _load_run(run_dir)
        cfg = resolve_config(run_dir / CONFIG_FILE, overrides)
        check_distributed_config(cfg)
        if launch_rank(cfg.train.devices) == 0:
            remove_stale_temp_files(run_dir)  # half-written files of a killed run
        last = run_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            ckpt_path = str(last)
        else:
            _log.info(f"{run_dir}: no checkpoint yet; starting this run again from the beginning")
    else:
        cfg = resolve_config(config, overrides)
        if not cfg.data.root:
            raise ConfigError("data.root is not set: pass the data set folder (e.g. `segtune train DATA`)")
        check_distributed_config(cfg)
        if launch_rank(cfg.train.devices) == 0:
            name = cfg.train.name or free_run_name(cfg.train.out, default_run_name(cfg.model.arch, cfg.strategy.name))
            cfg.train.name = name
            fresh = not (Path(cfg.train.out) / name).exists()
            run_dir = new_run_dir(cfg.train.out, name, overwrite=cfg.train.overwrite)
            if fresh and _created is not None:
                _created.append(run_dir)
            if world_size(cfg) > 1:  # the processes Lightning starts for DDP find the folder here
                os.environ[RUN_DIR_ENV] = str(run_dir)
        else:  # DDP rank > 0: rank 0 owns the run folder; this process writes nothing there
            run_dir = follower_run_dir(cfg)
    world = world_size(cfg)
    rank = launch_rank(cfg.train.devices)
    if rank:
        _log.set_quiet(True)  # rank 0 reports for all processes

    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    spec = load_dataset_spec(cfg.data.root)
    report = check_data(spec, max_pixels=cfg.data.max_pixels, progress=cfg.train.progress and rank == 0)
    errors = [p for p in report.problems if getattr(p, "level", "error") == "error"]
    for p in report.problems:
        if getattr(p, "level", "error") != "error":
            _log.warn(str(p))
    skip: set[Path] = set()
    if errors:
        if not cfg.data.skip_bad:
            raise DataError(
                f"{len(errors)} problem(s) in {cfg.data.root}, first: {errors[0]}; "
                f"run `segtune check-data {cfg.data.root}` to list all, or pass --skip-bad"
            )
        for p in errors:
            _log.warn(f"skipped: {p}")
        skip = set(getattr(report, "bad_files", set()))

    if resume is None:
        from ..strategies.auto import resolve_auto

        auto_notes = resolve_auto(cfg, _count_train_images(cfg, spec, report, skip))
    else:
        auto_notes = []
    if rank == 0 and (not (run_dir / CONFIG_FILE).is_file() or resume is None):
        atomic_write_yaml(run_dir / CONFIG_FILE, cfg.to_dict())

    strategy_pretrained = cfg.strategy.name != "scratch"
    weights = cfg.model.weights if strategy_pretrained else "none"
    model = create_model(cfg.model.arch, cfg.model.encoder, num_classes=spec.num_classes, weights=weights)
    for note in auto_notes:  # after the model exists, so a refusal stays a single line
        _log.info(note)
    dm = SegDataModule(spec, cfg.data, model.mean, model.std, seed=cfg.train.seed, skip=skip)
    dm.setup()
    _log.info(
        f"data: {spec.name or cfg.data.root}: {len(dm.train_pairs)} train / {len(dm.val_pairs)} val images, "
        f"{spec.num_classes} classes, ignore_index {spec.ignore_index}"
    )
    full_val_loader = dm.val_dataloader  # the final evaluation always scores the whole val set
    if world > 1:
        use_unrepeated_validation(dm, world)  # during fit: each val image on exactly one rank
    fprint = fingerprint(spec, model, dm.train_pairs, cfg.data.batch_size)
    if ckpt_path is not None:
        at = check_resume(ckpt_path, fprint)  # refuses when classes / architecture / images changed
        _log.info(f"resuming {run_dir} from {ckpt_path} (after step {at['step']})")

    cw = None
    if cfg.loss.class_weights != "none":
        cw = class_weights_from_counts(dm.class_pixel_counts(), cfg.loss.class_weights)
        if cw is not None:
            _log.info("class weights: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(spec.classes, cw.tolist(), strict=True)))
    loss = build_loss(cfg.loss, spec.num_classes, spec.ignore_index, cw)
    lr = cfg.optim.lr * lr_factor(cfg.optim.lr_scaling, world)
    strategy = build_strategy(model, cfg.strategy, lr)
    summary = _print_strategy(strategy, model)
    from ..data.feature_cache import cache_decision

    use_feature_cache, cache_line = cache_decision(cfg, model, world, strategy)
    if use_feature_cache or cfg.strategy.name == "head" or cfg.data.augment == "flip":
        _log.info(cache_line)
    optim_cfg = dataclasses.replace(cfg.optim, lr=lr)
    module = SegTuneModule(model, strategy, loss, optim_cfg, spec.num_classes, spec.ignore_index, spec.classes)

    precision = resolve_precision(cfg.train.precision, cfg.train.accelerator)
    history = HistoryCallback(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val_miou", mode="max", save_top_k=1,
        save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
    )
    interrupt = InterruptHandler()
    resume_cb = ResumeCallback(ckpt_dir / "last.ckpt", dm, cfg.train.checkpoint_every, fprint, interrupt)
    callbacks: list[L.Callback] = [StrategyCallback(), history, best_cb, resume_cb, _EpochPrinter(cfg.train.epochs)]
    if cfg.train.early_stopping:
        callbacks.append(EarlyStopping(monitor="val_miou", mode="max", patience=cfg.train.early_stopping, check_finite=False, strict=False))
    show_bar = cfg.train.progress and sys.stderr.isatty()
    if show_bar:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar(leave=False))
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        max_steps=cfg.train.max_steps or -1,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        precision=precision,
        callbacks=callbacks,
        logger=False,
        default_root_dir=str(run_dir),
        gradient_clip_val=cfg.optim.grad_clip or None,
        check_val_every_n_epoch=cfg.train.val_every,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=show_bar,
        strategy=ddp_strategy(strategy.static) if world > 1 else "auto",
        plugins=[AtomicCheckpointIO(), *([TimmSyncBatchNorm()] if cfg.train.sync_batchnorm and world > 1 else [])],
        deterministic="warn" if cfg.train.deterministic else None,
        log_every_n_steps=1,
    )
    _log.info(f"training on {trainer.strategy.root_device}, precision {precision}, run folder {run_dir}")
    feature_store = None
    if use_feature_cache:
        feature_store = _use_feature_cache(dm, model, cfg, run_dir, trainer.strategy.root_device)
    if world > 1:
        _log.info(ddp_summary(world, cfg.data.batch_size, cfg.optim.lr, cfg.optim.lr_scaling))
        if strategy.static:
            strategy.set_trainable(model, 0)  # frozen parameters must be frozen before DDP wraps the model
        else:
            model.requires_grad_(True)  # gradual: all registered with DDP; unused (frozen) ones get no grad
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*deterministic.*")
        warnings.filterwarnings("ignore", message=".*sync_dist=True.*")  # val_miou: already summed over ranks
        warnings.filterwarnings("ignore", message=".*ended before the epoch ended.*")  # resumable: ResumeCallback
        resume_hint = f"continue with `segtune train --resume {run_dir}`"
        try:
            with interrupt:
                try:
                    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
                finally:
                    module.teardown("fit")  # idempotent; Lightning skips it when fit raises
                    if feature_store is not None:  # RAM freed, <run>/feature_cache/ deleted
                        dm.set_feature_dataset(None)
                        feature_store.release()
        except StopRequested:
            raise Interrupted(
                f"{run_dir}: training stopped by {interrupt.signal_name or 'an interrupt'} at step "
                f"{resume_cb.stopped_at}, checkpoint saved; {resume_hint}"
            ) from None
        except (KeyboardInterrupt, SystemExit):
            if not interrupt.requested:
                raise
            raise Interrupted(
                f"{run_dir}: training aborted by a second interrupt; {resume_hint} "
                "(from the last checkpoint)"
            ) from None
    if trainer.interrupted:
        raise RunError(f"training interrupted; continue with `segtune train --resume {run_dir}`")
    dump_rank_state(trainer, module)  # test hook, off unless SEGTUNE_TEST_DUMP_RANK_WEIGHTS is set
    if not trainer.is_global_zero:
        return Run(dir=run_dir)

    best = Path(best_cb.best_model_path) if best_cb.best_model_path else None
    if best and best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        if best_cb.best_model_score is not None:
            _log.info(f"best epoch by val mIoU: {float(best_cb.best_model_score):.4f}")
    model = module.model.cpu().eval()

    from .evaluate import evaluate_model, write_evaluation

    metrics = evaluate_model(model, full_val_loader(), spec.num_classes, spec.ignore_index, spec.classes)
    epochs_done = len(history.rows)
    summary.update(
        strategy=cfg.strategy.name,
        epochs=epochs_done,
        steps=int(trainer.global_step),
        seconds=round(time.perf_counter() - t_start, 1),
        train_images=len(dm.train_pairs),
        val_images=len(dm.val_pairs),
        precision=precision,
        processes=world,
        feature_cache=use_feature_cache,
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
    }
    save_model(run_dir, model, meta)
    write_evaluation(run_dir, metrics, summary=summary)
    _write_overlays(run_dir, model, meta, dm.val_pairs[: cfg.train.num_overlays], spec)
    history.write()
    _log.info(
        f"done: val mIoU {metrics['miou']:.4f} after {epochs_done} epochs ({summary['steps']} steps), "
        f"{summary['seconds']:.0f} s; "
        f"results in {run_dir}"
    )
    return Run(dir=run_dir, metrics=metrics, history=history.rows, summary=summary)


def _use_feature_cache(dm: Any, model: torch.nn.Module, cfg: Config, run_dir: Path, device: torch.device) -> Any:
    """Compute the frozen encoder's features of every training image (and mirror) and make the
    data module serve them; returns the :class:`~segtune.data.feature_cache.FeatureStore`."""
    from ..data.feature_cache import FEATURE_CACHE_DIR, CachedFeatureDataset, build_feature_cache
    from ..inference.predictor import cpu_channels_last

    model.to(device)
    # the same NHWC decision SegTuneModule.setup makes for one CPU process, so the cached
    # features are computed exactly as the live encoder would compute them in training
    channels_last = cpu_channels_last(model, device)
    size = dm.train_pad_size()
    store = build_feature_cache(
        model, dm.train_dataset, size, model.mean, model.std, hflip=cfg.data.hflip,
        budget_bytes=float(cfg.data.cache_max_gb) * 2**30, disk_dir=run_dir / FEATURE_CACHE_DIR,
        batch_size=int(cfg.data.batch_size), channels_last=channels_last, progress=cfg.train.progress,
    )
    dm.set_feature_dataset(CachedFeatureDataset(dm.train_dataset, store, size, 0.5 if cfg.data.hflip else 0.0))
    dm.train_dataset.clear_cache()  # decoded training images are not needed any more
    return store


def _count_train_images(cfg: Config, spec: Any, report: Any, skip: set[Path]) -> int:
    """Training images the run will see (before the datamodule exists): usable train pairs,
    minus the val share when the data set has no val split, capped by data.max_train_images."""
    pairs = [p for p in report.pairs.get("train", []) if p[0] not in skip]
    n = len(pairs)
    if "val" not in spec.splits:
        n = max(1, n - max(1, round(n * cfg.data.val_fraction)))
    if cfg.data.max_train_images:
        n = min(n, cfg.data.max_train_images)
    return n


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


_ = (os, atomic_write_json)
