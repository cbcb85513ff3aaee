"""The Lightning module of a distillation run: the engine's training step with a frozen teacher."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..engine.module import SegTuneModule
from .losses import distillation_loss, hint_loss

__all__ = ["DistillModule", "renormalize"]


def renormalize(x: Tensor, mean_from: tuple[float, ...], std_from: tuple[float, ...],
                mean_to: tuple[float, ...], std_to: tuple[float, ...]) -> Tensor:
    """Images normalised with one mean/std, re-normalised with another.

    Args:
        x: (N, 3, H, W) float images, ``(rgb01 - mean_from) / std_from``.
        mean_from, std_from, mean_to, std_to: per-channel constants for [0, 1] RGB.

    Returns:
        (N, 3, H, W) float ``(rgb01 - mean_to) / std_to`` (``x`` itself when both are the same).
    """
    if tuple(mean_from) == tuple(mean_to) and tuple(std_from) == tuple(std_to):
        return x

    def col(v: tuple[float, ...]) -> Tensor:
        return torch.as_tensor(v, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)

    return (x * col(std_from) + col(mean_from) - col(mean_to)) / col(std_to)


class DistillModule(SegTuneModule):
    """A :class:`SegTuneModule` whose objective is ``alpha * labels + (1 - alpha) * KD``.

    The teacher runs next to the student on every training batch: eval mode, no gradients, held
    outside the module's parameters (checkpoints hold only the student), fed the batch
    re-normalised with its own mean/std. Validation scores the student alone, on the labels.

    Args:
        model, strategy, loss, optim, num_classes, ignore_index, class_names: as SegTuneModule
            (``model`` is the student, ``loss`` the labels' loss).
        teacher: the teacher network, ``(N, 3, H, W) -> (N, C, H, W)`` logits.
        teacher_norm: ``(mean, std)`` the teacher's inputs are normalised with.
        temperature: softmax temperature T of the KD term.
        alpha: weight of the labels' loss in [0, 1].
        hint_weight: weight of the feature hint (0: off): the student's decoder output, through a
            trained 1x1 convolution (``hint_adapter``, in checkpoints but not in the saved model),
            regresses the teacher's (FitNets-style MSE); SMP architectures only.
    """

    def __init__(self, model: nn.Module, strategy: Any, loss: nn.Module, optim: Any, num_classes: int,
                 ignore_index: int, class_names: list[str] | None, teacher: nn.Module,
                 teacher_norm: tuple[tuple[float, ...], tuple[float, ...]], temperature: float,
                 alpha: float, hint_weight: float = 0.0) -> None:
        super().__init__(model, strategy, loss, optim, num_classes, ignore_index, class_names)
        self._teacher = [teacher.eval().requires_grad_(False)]
        self.teacher_mean, self.teacher_std = (tuple(float(v) for v in t) for t in teacher_norm)
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hint_weight = float(hint_weight)
        self.hint_adapter = _hint_adapter(model, teacher) if self.hint_weight > 0 else None
        self._hints: dict[str, Tensor] = {}

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher model (held outside the module's children, so never trained or saved)."""
        return self._teacher[0]

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)
        if self._channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self.teacher.eval()

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor:
        """The teacher's (N, C, H, W) logits of a batch normalised for the student (with hints
        on, its decoder output is kept for :meth:`training_loss`)."""
        xt = self._input(renormalize(x, self.model.mean, self.model.std, self.teacher_mean, self.teacher_std))
        if self.hint_adapter is None:
            return self.teacher(xt).float()
        dec = self.teacher.net.decoder(self.teacher.encode(xt))
        self._hints["teacher"] = dec.float()
        return self.teacher.net.segmentation_head(dec).float()

    def forward_train(self, batch: dict[str, Any]) -> Tensor:
        """The student's (N, C, H, W) logits; with hints on, its decoder output is kept for the hint loss."""
        if self.hint_adapter is None:
            return super().forward_train(batch)
        dec = self.model.net.decoder(self.model.encode(self._input(batch["image"])))
        self._hints["student"] = dec
        return self.model.net.segmentation_head(dec)

    def training_loss(self, logits: Tensor, batch: dict[str, Any]) -> Tensor:
        """Scalar loss of a batch: ``alpha * label loss + (1 - alpha) * KD`` (+ ``hint_weight`` x hint MSE).

        Args:
            logits: the student's (N, C, H, W) logits.
            batch: ``image`` (N, 3, H, W) float, ``mask`` (N, H, W) int64 (255 ignored everywhere
                for unlabelled images).
        """
        label = self.loss_fn(logits, batch["mask"])  # unlabelled images: every pixel ignored
        total, kd = distillation_loss(logits, self.teacher_logits(batch["image"]), label,
                                      self.temperature, self.alpha)
        n = batch["mask"].shape[0]
        self.log("kd", kd, on_step=True, on_epoch=False, batch_size=n)
        self.log("label_loss", label.detach(), on_step=True, on_epoch=False, batch_size=n)
        if self.hint_adapter is not None:
            hint = hint_loss(self.hint_adapter(self._hints.pop("student")), self._hints.pop("teacher"))
            self.log("hint", hint.detach(), on_step=True, on_epoch=False, batch_size=n)
            total = total + self.hint_weight * hint
        return total

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The engine's optimiser plus, with hints on, the adapter's group at the head LR (added
        before the schedule is built, so the schedule covers it from step 0)."""
        opt = super().build_optimizer()
        if self.hint_adapter is not None:
            opt.add_param_group({"name": "hint_adapter", "params": list(self.hint_adapter.parameters()),
                                 "lr": float(self.optim_cfg.lr), "weight_decay": 0.0})
        return opt


def _decoder_channels(model: nn.Module, who: str) -> int:
    head = getattr(getattr(model, "net", None), "segmentation_head", None)
    conv = next((m for m in head.modules() if isinstance(m, nn.Conv2d)), None) if head is not None else None
    if not getattr(model, "splits_encoder_decoder", False) or conv is None:
        from ..errors import ConfigError

        raise ConfigError(f"hint_weight: the {who} ({getattr(model, 'arch', '?')}) has no encoder/decoder split; "
                          "feature hints need SMP architectures for teacher and student (or set the hint weight to 0)")
    return int(conv.in_channels)


def _hint_adapter(student: nn.Module, teacher: nn.Module) -> nn.Conv2d:
    """1x1 convolution from the student's decoder channels to the teacher's."""
    return nn.Conv2d(_decoder_channels(student, "student"), _decoder_channels(teacher, "teacher"), 1)
