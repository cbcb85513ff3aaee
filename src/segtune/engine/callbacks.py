"""Callbacks: apply the transfer strategy each epoch, keep the epoch history, save atomically."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from .._io import atomic_path, atomic_write_text

__all__ = ["StrategyCallback", "HistoryCallback", "AtomicCheckpointIO", "HISTORY_FIELDS"]

HISTORY_FIELDS = ["epoch", "step", "train_loss", "val_loss", "val_miou", "lr", "seconds"]


class StrategyCallback(L.Callback):
    """Applies ``strategy.apply(model, epoch)`` at train start, every epoch start and after validation.

    The strategy is a pure function of the epoch, so resume needs no extra state: an epoch-5
    resume re-derives which stages are trainable. BatchNorm of frozen stages is put back in
    eval mode every time, so running statistics of frozen stages never move.
    """

    def __init__(self) -> None:
        self._last_epoch_announced = -1

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.strategy.apply(pl_module.model, trainer.current_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module)
        # a strategy whose trainable set changes over epochs (gradual) says how much trains now
        if not pl_module.strategy.static and trainer.current_epoch != self._last_epoch_announced:
            self._last_epoch_announced = trainer.current_epoch
            rows = pl_module.strategy.summary(trainer.current_epoch)
            trainable = sum(r["trainable"] for r in rows)
            pl_module.print(f"epoch {trainer.current_epoch}: {trainable:,} trainable parameters")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._apply(trainer, pl_module)


class HistoryCallback(L.Callback):
    """Records one row per validated epoch, writes ``history.csv`` and ``curves.png`` each time.

    Its rows are part of the Lightning checkpoint (``state_dict``), so a resumed run keeps
    the rows of the epochs it already did and never duplicates one.
    """

    def __init__(self, run_dir: Path, plot: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []
        self.plot = plot
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs after the module's on_validation_epoch_end has computed this epoch's metrics
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        m = pl_module.last_val_metrics or {}
        lrs = [g["lr"] for g in trainer.optimizers[0].param_groups] if trainer.optimizers else []
        row = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "train_loss": pl_module.train_epoch_loss(),
            "val_loss": float(trainer.callback_metrics.get("val_loss", float("nan"))),
            "val_miou": m.get("miou"),
            "lr": max(lrs) if lrs else None,
            "seconds": round(time.perf_counter() - self._t0, 2),
        }
        self.rows = [r for r in self.rows if r["epoch"] != row["epoch"]] + [row]
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
        w.writeheader()
        for r in self.rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in HISTORY_FIELDS})
        atomic_write_text(self.run_dir / "history.csv", buf.getvalue())
        if self.plot and len(self.rows) >= 1:
            from ..report import plot_curves

            try:
                plot_curves(self.rows, self.run_dir / "curves.png")
            except Exception as e:  # a plot must never kill a training run
                from .._log import warn

                warn(f"could not draw curves.png ({e})")

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that writes to a temp file, fsyncs, then renames.

    A kill during a save leaves the previous ``last.ckpt`` intact. Loading always uses
    ``torch.load(weights_only=True)``: a checkpoint can only hold tensors and plain data.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    def remove_checkpoint(self, path: Any) -> None:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
