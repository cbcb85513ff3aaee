"""The LightningModule: what a training step is. The loop itself is Lightning's."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import nn

from .._tensor import cpu_channels_last, forward_chunked
from ..config import OptimConfig
from ..metrics import ConfusionMatrix, segmentation_metrics

__all__ = ["SegTuneModule", "lr_lambda"]


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int, power: float = 0.9) -> Callable[[int], float]:
    """``step -> multiplier`` of the base LR at optimiser step ``step`` (linear warm-up, then the schedule).

    Args:
        schedule: ``cosine`` (to 0), ``poly`` ((1 - t) ** power) or ``constant``.
        warmup_steps: linear ramp from 1/warmup to 1 over this many steps.
        total_steps: total optimiser steps of the run.
    """
    total_steps = max(1, total_steps)
    warmup_steps = min(warmup_steps, max(0, total_steps - 1))

    def f(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        t = min(max(t, 0.0), 1.0)
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t))
        if schedule == "poly":
            return (1.0 - t) ** power
        return 1.0

    return f


class SegTuneModule(L.LightningModule):
    """Trains a :class:`~segtune.models.SegModel` with a transfer strategy.

    Args:
        model: segmentation network, ``(N,3,H,W) -> (N,C,H,W)`` logits.
        strategy: a :class:`~segtune.strategies.Strategy` (param groups, freezing, BN policy).
        loss: ``(logits, target (N,H,W) int64) -> scalar``.
        optim: optimiser / schedule settings.
        num_classes: C.
        ignore_index: label excluded from loss and metrics.
        class_names: for the per-class metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        strategy: Any,
        loss: nn.Module,
        optim: OptimConfig,
        num_classes: int,
        ignore_index: int,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.strategy = strategy
        self.loss_fn = loss
        self.optim_cfg = optim
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.val_cm = ConfusionMatrix(num_classes, ignore_index)
        self.last_val_metrics: dict[str, Any] | None = None
        self._train_loss_sum = 0.0
        self._train_loss_n = 0
        self._val_loss_sum = 0.0
        self._val_loss_n = 0
        self._fill_uninitialized: bool | None = None
        self._channels_last = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---------------------------------------------------------------- set-up
    def setup(self, stage: str) -> None:
        # train.deterministic makes Lightning call torch.use_deterministic_algorithms(True), which
        # also fills every newly allocated tensor with NaN / max-int (fill_uninitialized_memory):
        # ~4-5% of a CPU training step (benchmarks/overhead.py) and no effect on results, since
        # no op here reads memory it did not write (tests/test_resume.py checks bitwise repeats).
        # Off while Lightning runs this module; teardown restores the user's setting (Lightning
        # skips teardown when fit raises, so engine/train.py calls it again after fit).
        det = getattr(torch.utils, "deterministic", None)
        if det is not None and hasattr(det, "fill_uninitialized_memory") and self._fill_uninitialized is None:
            self._fill_uninitialized = bool(det.fill_uninitialized_memory)
            det.fill_uninitialized_memory = False
        if self.trainer.world_size == 1:  # one CPU process: NHWC convolutions (DDP left as is)
            self._channels_last = cpu_channels_last(self.model, self.trainer.strategy.root_device)

    def teardown(self, stage: str) -> None:
        if self._fill_uninitialized is not None:
            torch.utils.deterministic.fill_uninitialized_memory = self._fill_uninitialized
            self._fill_uninitialized = None

    # ----------------------------------------------------------------- train
    def on_train_epoch_start(self) -> None:
        self._train_loss_sum, self._train_loss_n = 0.0, 0

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self._channels_last else x

    def forward_train(self, batch: dict[str, Any]) -> torch.Tensor:
        """Training-mode logits ``(N, C, H, W)`` of a batch (from images, or from cached features)."""
        if "features" in batch:  # frozen-encoder feature cache: float16 features -> float32 decoder
            fmt = torch.channels_last if self._channels_last else torch.contiguous_format
            feats = [f.to(torch.float32, memory_format=fmt) for f in batch["features"]]  # one copy
            return self.model.decode(feats)
        return self.model(self._input(batch["image"]))

    def training_loss(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """The scalar training objective; subclasses (e.g. incremental methods) add terms."""
        return self.loss_fn(logits, batch["mask"])

    def l1_penalty(self) -> torch.Tensor | None:
        """``optim.l1 x sum |w|`` over the trainable weights with 2+ dimensions (the ones weight
        decay acts on; biases and norm parameters are left out), or None when ``optim.l1`` is 0."""
        l1 = float(getattr(self.optim_cfg, "l1", 0.0) or 0.0)
        weights = [p for p in self.model.parameters() if p.requires_grad and p.ndim > 1] if l1 else []
        if not weights:
            return None
        return l1 * torch.stack([w.abs().sum() for w in weights]).sum()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        y = batch["mask"]
        logits = self.forward_train(batch)
        loss = self.training_loss(logits, batch)
        self._train_loss_sum += float(loss.detach())
        self._train_loss_n += 1
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=y.shape[0])
        penalty = self.l1_penalty()
        if penalty is None:
            return loss
        self.log("l1", penalty.detach(), on_step=True, on_epoch=False, batch_size=y.shape[0])
        return loss + penalty

    def train_epoch_loss(self) -> float | None:
        return self._train_loss_sum / self._train_loss_n if self._train_loss_n else None

    def on_train_epoch_end(self) -> None:
        loss = self.train_epoch_loss()
        if loss is not None:  # the epoch's mean training loss, for the run's logger
            self.log("train_loss_epoch", loss, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a mid-epoch checkpoint carries the running train loss, so a resumed epoch's mean is exact
        checkpoint["segtune_train_loss"] = {"sum": self._train_loss_sum, "n": self._train_loss_n}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        acc = checkpoint.get("segtune_train_loss") or {}
        self._train_loss_sum = float(acc.get("sum", 0.0))
        self._train_loss_n = int(acc.get("n", 0))

    # ------------------------------------------------------------------ val
    def on_validation_epoch_start(self) -> None:
        self.val_cm.reset()
        self._val_loss_sum, self._val_loss_n = 0.0, 0

    def predict_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluation logits ``(N, C, H, W)`` as a prediction would score them."""
        return forward_chunked(self.model, self._input(x))  # CPU: large images one at a time

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x, y = batch["image"], batch["mask"]
        logits = self.predict_logits(x)
        loss = self.loss_fn(logits, y)
        if torch.isfinite(loss):
            self._val_loss_sum += float(loss) * x.shape[0]
            self._val_loss_n += x.shape[0]
        self.val_cm.update(logits.argmax(1), y)

    def on_validation_epoch_end(self) -> None:
        cm = self.val_cm.compute()  # summed over ranks
        m = segmentation_metrics(cm.cpu().numpy(), self.class_names)
        self.last_val_metrics = m
        miou = m["miou"] if m["miou"] is not None else 0.0
        self.log("val_miou", float(miou), prog_bar=True, sync_dist=False)
        # per-class IoU for the run's logger (train.logger); classes absent from truth and
        # prediction have none and are left out
        per_class = {f"val_iou/{c['name']}": float(c["iou"]) for c in m["per_class"] if c["iou"] is not None}
        if per_class:
            self.log_dict(per_class, sync_dist=False)
        total = torch.tensor([self._val_loss_sum, float(self._val_loss_n)], dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:  # ranks score different numbers of images: sum, then divide
            total = self.trainer.strategy.reduce(total, reduce_op="sum")
        val_loss = float(total[0] / total[1]) if float(total[1]) else float("nan")
        self.log("val_loss", val_loss, prog_bar=False, sync_dist=False)

    # ------------------------------------------------------------ optimiser
    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimiser over the strategy's param groups (explicit per-group LRs), no schedule;
        also used by the LR range test (:mod:`segtune.tuning.lr_find`)."""
        cfg = self.optim_cfg
        groups = self.strategy.param_groups(cfg.weight_decay)
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True)
        return torch.optim.AdamW(groups, lr=cfg.lr)

    def configure_optimizers(self) -> Any:
        cfg = self.optim_cfg
        opt = self.build_optimizer()
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lr_lambda(cfg.schedule, cfg.warmup_steps, total)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
