"""Interruption and exact resume: mid-epoch checkpoints, RNG state, Ctrl-C, drift checks.

Lightning removed mid-epoch fault tolerance in 2.0, so segtune keeps what it needs itself:

* :class:`ResumeCallback` writes ``checkpoints/last.ckpt`` every ``train.checkpoint_every``
  optimiser steps (besides the end-of-epoch one) and adds a ``"segtune"`` entry to every
  checkpoint: the position in the epoch (epoch, batches done), the global torch / CUDA /
  NumPy / ``random`` RNG states and a fingerprint of the data set and architecture. On
  resume it hands the position to :meth:`SegDataModule.set_train_position` (the
  :class:`~segtune.data.datamodule.ResumableSampler` skips the samples already used) and
  restores the RNG states right before the first training step. Augmentations are seeded
  per sample from ``(seed, epoch, index)``, so data-loader workers hold no state to save.
  Model, optimiser, LR scheduler, early stopping, best-checkpoint and history state are
  restored by Lightning from the same checkpoint. On CPU with the same seed a killed and
  resumed run ends with bitwise the same weights and metrics as an uninterrupted one.
* :class:`InterruptHandler`: the first SIGINT (Ctrl-C) or SIGTERM asks for a stop; the
  callback saves ``last.ckpt`` at the next step boundary and training ends with
  :class:`Interrupted` (exit code 130, with the ``--resume`` command). A second signal aborts
  at once (the previous ``last.ckpt`` stays valid: checkpoints are written atomically).
* :func:`check_resume` refuses to resume when the classes, the architecture, the training
  images or the batch size changed since the checkpoint (one-line :class:`RunError`).
"""

from __future__ import annotations

import hashlib
import pickle
import random
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from .. import _log
from ..errors import RunError

__all__ = [
    "ResumeCallback",
    "InterruptHandler",
    "Interrupted",
    "StopRequested",
    "check_resume",
    "fingerprint",
    "capture_rng",
    "restore_rng",
    "remove_stale_temp_files",
    "AUTO_CHECKPOINT_STEPS",
    "AUTO_CHECKPOINT_SECONDS",
]

#: ``train.checkpoint_every: 0`` (auto) saves every this many optimiser steps ...
AUTO_CHECKPOINT_STEPS = 50
#: ... but skips a save when the previous one is younger than this (fast GPU steps).
AUTO_CHECKPOINT_SECONDS = 60.0

_FORMAT = 1


class Interrupted(RunError):
    """Training stopped on SIGINT/SIGTERM after saving a checkpoint; the CLI exits with 130."""

    exit_code = 130


class StopRequested(Exception):
    """Raised inside ``trainer.fit`` once the interrupt checkpoint is written (internal)."""


# ----------------------------------------------------------------------------- RNG state
def capture_rng() -> dict[str, Any]:
    """Global torch (CPU and, when initialised, CUDA), NumPy and ``random`` states.

    Returns plain tensors / lists / numbers only, so the checkpoint still loads with
    ``torch.load(weights_only=True)``.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(cuda),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(v) for v in py_state], "gauss": gauss},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


# ----------------------------------------------------------------------------- interrupts
class InterruptHandler:
    """Context manager turning SIGINT / SIGTERM into a stop request.

    The first signal sets :attr:`requested` (training stops at the next step boundary after
    saving a checkpoint); a second one raises ``KeyboardInterrupt`` to abort at once.
    Installs nothing outside the main thread; restores the previous handlers on exit.
    """

    def __init__(self) -> None:
        self.count = 0
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.count > 0

    def __enter__(self) -> InterruptHandler:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count == 1:
            self.signal_name = signal.Signals(signum).name
            _log.warn(f"{self.signal_name}: saving a checkpoint after this step, then stopping "
                      "(interrupt again to abort at once)")
            return
        raise KeyboardInterrupt


# ----------------------------------------------------------------------------- callback
class ResumeCallback(Checkpoint):
    """Mid-epoch ``last.ckpt``, exact-resume state, and the stop-on-interrupt step boundary.

    A :class:`~lightning.pytorch.callbacks.Checkpoint` subclass, so Lightning runs it after
    the other callbacks (put it after the ``ModelCheckpoint`` in the list).

    Args:
        last_path: the ``last.ckpt`` path (shared with the epoch-end ModelCheckpoint).
        datamodule: receives the resume position (:meth:`SegDataModule.set_train_position`).
        every: optimiser steps between mid-epoch saves; ``0`` = auto
            (:data:`AUTO_CHECKPOINT_STEPS`, at most one save per :data:`AUTO_CHECKPOINT_SECONDS`).
        fingerprint: what :func:`check_resume` compares (see :func:`fingerprint`).
        interrupt: the active :class:`InterruptHandler`, if any.
    """

    def __init__(
        self,
        last_path: str | Path,
        datamodule: Any,
        every: int = 0,
        fingerprint: dict[str, Any] | None = None,
        interrupt: InterruptHandler | None = None,
    ) -> None:
        self.last_path = Path(last_path)
        self.dm = datamodule
        self.auto = not every
        self.every = int(every) if every else AUTO_CHECKPOINT_STEPS
        self.fingerprint = dict(fingerprint or {})
        self.interrupt = interrupt
        self.stopped_at: int | None = None
        self._last_saved_step = -1
        self._last_save_time = time.monotonic()
        self._pending_rng: dict[str, Any] | None = None
        self._save_at_epoch_end = False

    # -- hooks ---------------------------------------------------------------
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:
            restore_rng(self._pending_rng)  # exactly where the saved run continued
            self._pending_rng = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        # After an epoch's last batch, validation and the epoch-end hooks still have to run:
        # Lightning resumes a checkpoint taken here without validating that epoch, so stops and
        # saves wait for the end of the epoch (see on_train_epoch_end).
        last = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        stop = self._stop_requested(trainer)
        if stop and not last:
            self._save_and_stop(trainer)
        step = int(trainer.global_step)
        if step <= 0 or step % self.every or step == self._last_saved_step:
            return
        if self.auto and time.monotonic() - self._last_save_time < AUTO_CHECKPOINT_SECONDS:
            return
        if last:
            self._save_at_epoch_end = True
        else:
            self._save(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_at_epoch_end = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            # the epoch-end ModelCheckpoint writes last.ckpt (at its on_validation_end or
            # on_train_epoch_end, both before this callback's on_train_epoch_end)
            self._save_at_epoch_end = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the last hook of an epoch: validation, best-model and early-stopping bookkeeping are done
        if self._stop_requested(trainer):
            self._save_and_stop(trainer)
        if self._save_at_epoch_end:  # an epoch without validation: nobody else saved
            self._save_at_epoch_end = False
            self._save(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["segtune"] = {
            "format": _FORMAT,
            "position": {
                "epoch": int(trainer.current_epoch),
                "batches": int(trainer.fit_loop.epoch_loop.batch_progress.current.processed),
                "epoch_batches": int(trainer.num_training_batches),
                "batch_size": int(self.dm.cfg.batch_size),
            },
            "rng": capture_rng(),
            "fingerprint": self.fingerprint,
        }

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        _rebase_model_checkpoints(trainer, checkpoint)
        state = checkpoint.get("segtune")
        if not state:  # a checkpoint from an older segtune: Lightning restarts the epoch's data
            return
        pos = state["position"]
        if pos["batches"] >= pos["epoch_batches"]:
            self.dm.set_train_position(pos["epoch"] + 1, 0)
        else:
            self.dm.set_train_position(pos["epoch"], pos["batches"] * pos["batch_size"])
        self._pending_rng = state.get("rng")
        self._last_saved_step = int(checkpoint.get("global_step", -1))

    # -- helpers -------------------------------------------------------------
    def _stop_requested(self, trainer: L.Trainer) -> bool:
        flag = bool(self.interrupt is not None and self.interrupt.requested)
        if trainer.world_size > 1:  # every rank must stop at the same step
            flag = bool(trainer.strategy.reduce_boolean_decision(flag, all=False))
        return flag

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(self.last_path)
        self._last_saved_step = int(trainer.global_step)
        self._last_save_time = time.monotonic()

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        if self._last_saved_step != int(trainer.global_step) or not self.last_path.is_file():
            self._save(trainer)
        self.stopped_at = int(trainer.global_step)
        raise StopRequested(self.stopped_at)


def _rebase_model_checkpoints(trainer: L.Trainer, checkpoint: dict[str, Any]) -> None:
    """Point ModelCheckpoint states saved in another folder at this run's folder.

    A run folder that was moved or copied keeps its best score, best path and early-stopping
    bookkeeping on resume (Lightning drops them when ``dirpath`` differs), so the resumed run
    still picks the same best epoch as an uninterrupted one.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    states = checkpoint.get("callbacks") or {}
    for cb in trainer.callbacks:
        if not isinstance(cb, ModelCheckpoint) or cb.dirpath is None:
            continue
        state = states.get(cb.state_key)
        old = state.get("dirpath") if isinstance(state, dict) else None
        if not old or old == cb.dirpath:
            continue
        new = str(cb.dirpath)

        def move(path: Any, old: str = str(old), new: str = new) -> Any:
            if isinstance(path, str) and path and Path(path).parent == Path(old):
                return str(Path(new) / Path(path).name)
            return path

        for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
            if key in state:
                state[key] = move(state[key])
        if isinstance(state.get("best_k_models"), dict):
            state["best_k_models"] = {move(k): v for k, v in state["best_k_models"].items()}
        state["dirpath"] = new


# ----------------------------------------------------------------------------- drift
def fingerprint(spec: Any, model: Any, train_pairs: list, batch_size: int) -> dict[str, Any]:
    """What must not change between a checkpoint and its resume.

    Args:
        spec: the :class:`~segtune.data.spec.DatasetSpec`.
        model: the :class:`~segtune.models.SegModel` (its ``describe()``).
        train_pairs: training ``(image, mask)`` pairs (their file names are hashed).
        batch_size: per-device training batch size.
    """
    names = "\n".join(f"{Path(i).name}\t{Path(m).name}" for i, m in train_pairs)
    return {
        "classes": [str(c) for c in spec.classes],
        "ignore_index": int(spec.ignore_index),
        "model": model.describe(),
        "train_images": len(train_pairs),
        "train_files_sha256": hashlib.sha256(names.encode("utf-8")).hexdigest(),
        "batch_size": int(batch_size),
    }


def check_resume(ckpt_path: str | Path, current: dict[str, Any]) -> dict[str, Any]:
    """Refuse to resume from ``ckpt_path`` when the run's inputs changed since it was written.

    Returns:
        ``{"epoch": int, "step": int}`` of the checkpoint, for the log line.

    Raises:
        RunError: unreadable checkpoint, or classes / architecture / training images /
            batch size differ from ``current`` (a :func:`fingerprint`).
    """
    ckpt_path = Path(ckpt_path)
    restart = "delete it to start this run again from the beginning"
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # torch's own text suggests loading it unsafely: not ours
        raise RunError(
            f"{ckpt_path}: refused, not a plain-tensor checkpoint (it holds Python objects other "
            f"than tensors, which could run code when loaded); {restart}"
        ) from None
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise RunError(f"{ckpt_path}: cannot read the checkpoint ({first}); {restart}") from None
    if not isinstance(ckpt, dict):
        raise RunError(f"{ckpt_path}: holds a {type(ckpt).__name__}, not a segtune checkpoint; {restart}")
    info = {"epoch": int(ckpt.get("epoch", 0)), "step": int(ckpt.get("global_step", 0))}
    saved = (ckpt.get("segtune") or {}).get("fingerprint") or {}
    del ckpt
    fix = "undo the change, or start a new run instead of --resume"
    checks = (
        ("classes", "the data set's classes"),
        ("ignore_index", "the data set's ignore_index"),
        ("model", "the architecture"),
        ("batch_size", "data.batch_size"),
    )
    for key, what in checks:
        if key in saved and key in current and saved[key] != current[key]:
            raise RunError(
                f"{ckpt_path}: {what} changed since this run started (then {_short(saved[key])}, "
                f"now {_short(current[key])}); {fix}"
            )
    key = "train_files_sha256"
    if key in saved and key in current and saved[key] != current[key]:
        raise RunError(
            f"{ckpt_path}: the training images changed since this run started (then "
            f"{saved.get('train_images')} files, now {current.get('train_images')}, or renamed); {fix}"
        )
    return info


def _short(value: Any, limit: int = 120) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}={v}" for k, v in value.items() if k not in ("mean", "std"))
    elif isinstance(value, list):
        text = "[" + ", ".join(str(v) for v in value) + "]"
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def remove_stale_temp_files(run_dir: str | Path) -> int:
    """Delete temp files (``.name.XXXX.tmp.ext``) a killed run left in its folder; returns the count."""
    run_dir = Path(run_dir)
    n = 0
    for folder in (run_dir, run_dir / "checkpoints", run_dir / "val_overlays"):
        if not folder.is_dir():
            continue
        for f in folder.glob(".*.tmp*"):
            try:
                f.unlink()
                n += 1
            except OSError:
                pass
    return n
