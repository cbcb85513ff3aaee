"""What a run sends to its logger besides Lightning's own ``self.log`` scalars.

Lightning logs the module's scalars: the training ``loss`` (and ``l1``) every step, the epoch's
mean training loss (``train_loss_epoch``), ``val_miou``, ``val_loss`` and the per-class
validation IoU (``val_iou/<class>``, classes absent from truth and prediction left out) every
validation; Lightning's ``LearningRateMonitor`` adds the learning rate of every param group every
step (``lr-AdamW/head``, ``lr-AdamW/encoder.4``...). :class:`TrackingCallback` adds
``num_images`` validation overlays (input | truth | prediction) as images (``val_overlay_<i>``),
at the optimiser step of the validation, and on resume drops the rows a CSV log holds from
after the checkpoint (they are logged again).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch

from .loggers import LoggerKind

__all__ = ["TrackingCallback"]


class TrackingCallback(L.Callback):
    """Per-epoch scalars, per-class IoU and validation overlays to the trainer's logger.

    Args:
        kind: the registered logger (how to send an image).
        num_images: validation images drawn as overlays each validation (the first ones).
        colors: per-class ``(r, g, b)`` (None: the default palette).
        ignore_index: label drawn black.
    """

    def __init__(self, kind: LoggerKind, num_images: int = 4, colors: Any = None, ignore_index: int = 255) -> None:
        self.kind = kind
        self.num_images = int(num_images)
        self.colors = colors
        self.ignore_index = ignore_index
        self._panels: list[np.ndarray] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        drop = getattr(getattr(trainer.logger, "experiment", None), "drop_from", None)
        if drop is not None and trainer.is_global_zero:
            drop(trainer.fit_loop.epoch_loop._batches_that_stepped)  # the step its next row gets

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # an interrupted run keeps what it logged since the last flush (a resume continues it)
        if trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.save()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._panels = []

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        want = self.num_images - len(self._panels)
        if want <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        x, y = batch["image"][:want], batch["mask"][:want]
        with torch.no_grad():
            pred = pl_module.predict_logits(x).argmax(1)
        model = pl_module.model
        mean = torch.tensor(model.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(model.std, device=x.device).view(1, 3, 1, 1)
        images = ((x.float() * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for img, truth, p in zip(images, y.cpu().numpy(), pred.cpu().numpy(), strict=True):
            self._panels.append(self._triptych(img, truth, p))

    def _triptych(self, image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
        from ..report import colorize

        gap = np.full((image.shape[0], 4, 3), 255, np.uint8)
        return np.concatenate([image, gap, colorize(truth, self.colors, self.ignore_index), gap,
                               colorize(pred, self.colors, self.ignore_index)], axis=1)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = trainer.logger
        if logger is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        step = trainer.global_step
        for i, panel in enumerate(self._panels):
            self.kind.log_image(logger, f"val_overlay_{i}", panel, step)
        logger.save()
