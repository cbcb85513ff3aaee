"""Training losses for multiclass segmentation, all honouring ``ignore_index``.

Every loss maps ``(logits (N, C, H, W) float, target (N, H, W) int64)`` to a scalar and is
computed in float32 (safe under AMP). Pixels whose target equals ``ignore_index`` contribute
nothing to the value or to the gradient. A batch in which every pixel is ignored gives
``0.0`` (with a gradient graph attached, so ``backward()`` works), never NaN.

* ``ce``: weighted cross-entropy, identical to :func:`torch.nn.functional.cross_entropy`
  with ``weight`` and ``ignore_index`` (weighted mean: sum w_y * nll / sum w_y).
* ``dice``: soft multiclass "batch" Dice on softmax probabilities, pooled over all pixels
  of the batch. Ignored pixels are removed from both the probabilities and the one-hot
  target. Classes absent from the batch's (non-ignored) target are **excluded** from the mean:
  their Dice would be 0/0, and smoothing would turn any stray probability mass into a
  near-maximal, noisy penalty. False positives on absent classes are still penalised
  indirectly, because softmax mass on them is mass taken from the true class. With class
  weights the mean over present classes is weighted.
* ``focal``: multiclass focal loss ``-alpha_y (1 - p_y)^gamma log p_y``, normalised like
  weighted CE (by sum alpha_y over labelled pixels), so ``gamma = 0`` equals ``ce``.
* ``ce+dice``: ``ce + dice_weight * dice``; class weights go into the CE term only. The Dice
  term is already a macro mean over the classes present in the batch, so every present class
  counts equally however few pixels it has; weighting it again by inverse frequency hands the
  Dice term to the rarest class and measurably costs the common ones (CamVid, 200 steps:
  Building IoU 53 -> 31 at 23 images and 28 -> 11 at 367 when the Dice term is weighted too;
  see benchmarks/RESULTS.md).

Class weights (:func:`class_weights_from_counts`) come from training-pixel frequencies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import Registry
from .errors import ConfigError, DataError

if TYPE_CHECKING:
    from .config import LossConfig

__all__ = [
    "LOSS_REGISTRY",
    "build_loss",
    "list_losses",
    "class_weights_from_counts",
    "CrossEntropyLoss",
    "DiceLoss",
    "FocalLoss",
    "CEDiceLoss",
    "MAX_CLASS_WEIGHT",
]

MAX_CLASS_WEIGHT = 50.0
_NO_IGNORE = -100


def _zero_like_graph(logits: Tensor) -> Tensor:
    """A float32 scalar 0 that is still connected to ``logits`` (so backward works)."""
    return logits.float().sum() * 0.0


def _check_shapes(logits: Tensor, target: Tensor, num_classes: int) -> None:
    if logits.dim() != target.dim() + 1 or logits.shape[1] != num_classes:
        raise ValueError(
            f"expected logits (N, {num_classes}, ...) and target (N, ...), got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(
            f"logits {tuple(logits.shape)} and target {tuple(target.shape)} sizes differ"
        )


class _SegLoss(nn.Module):
    """Shared setup: number of classes, ignore index and an optional (C,) weight buffer."""

    weight: Tensor | None

    def __init__(
        self, num_classes: int, ignore_index: int | None = 255, weight: Tensor | None = None
    ) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.ignore_index = _NO_IGNORE if ignore_index is None else int(ignore_index)
        if weight is not None:
            weight = torch.as_tensor(weight, dtype=torch.float32).flatten()
            if weight.numel() != self.num_classes:
                raise ValueError(
                    f"class weights have {weight.numel()} entries for {self.num_classes} classes"
                )
        # not persistent: derived from the data, kept out of checkpoints/state dicts
        self.register_buffer("weight", weight, persistent=False)

    def _valid(self, target: Tensor) -> Tensor:
        """(N, H, W) bool mask of labelled pixels."""
        return target != self.ignore_index


class CrossEntropyLoss(_SegLoss):
    """Weighted cross-entropy with ignore_index; 0 (not NaN) when every pixel is ignored.

    Args:
        num_classes: C.
        ignore_index: target value to skip (``None``: none).
        weight: optional (C,) float class weights.
    """

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Args: logits (N, C, H, W) float; target (N, H, W) int64. Returns: scalar float32."""
        _check_shapes(logits, target, self.num_classes)
        logits = logits.float()
        target = target.long()
        per_pixel = F.cross_entropy(
            logits, target, weight=self.weight, ignore_index=self.ignore_index, reduction="none"
        )
        valid = self._valid(target)
        if self.weight is not None:
            denom = self.weight[target.clamp(0, self.num_classes - 1)].mul(valid).sum()
        else:
            denom = valid.sum().to(per_pixel.dtype)
        return _safe_divide(per_pixel.sum(), denom, logits)


def _safe_divide(num: Tensor, denom: Tensor, logits: Tensor) -> Tensor:
    """num / denom, or a graph-connected 0 when denom == 0 (no host sync)."""
    ok = denom > 0
    return torch.where(ok, num / denom.clamp_min(1e-12), _zero_like_graph(logits))


class DiceLoss(_SegLoss):
    """Soft multiclass batch Dice loss (1 - mean Dice over classes present in the target).

    Args:
        num_classes: C.
        ignore_index: target value to skip (``None``: none).
        weight: optional (C,) class weights for the mean over present classes.
        smooth: added to numerator and denominator of each class's Dice (default 0; classes
            in the mean always have a positive denominator).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        weight: Tensor | None = None,
        smooth: float = 0.0,
    ) -> None:
        super().__init__(num_classes, ignore_index, weight)
        self.smooth = float(smooth)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Args: logits (N, C, H, W) float; target (N, H, W) int64. Returns: scalar float32."""
        _check_shapes(logits, target, self.num_classes)
        c = self.num_classes
        probs = logits.float().softmax(dim=1)
        target = target.long()
        valid = self._valid(target)
        classes = torch.arange(c, device=target.device).view(1, c, *([1] * (target.dim() - 1)))
        # (N, C, H, W) one-hot with all-zero columns at ignored pixels
        keep = valid.unsqueeze(1)
        onehot = ((target.unsqueeze(1) == classes) & keep).to(probs.dtype)
        probs = probs * keep.to(probs.dtype)
        dims = [0] + list(range(2, probs.dim()))
        inter = (probs * onehot).sum(dims)
        card = probs.sum(dims) + onehot.sum(dims)
        dice = (2 * inter + self.smooth) / (card + self.smooth).clamp_min(1e-7)
        present = (onehot.sum(dims) > 0).to(probs.dtype)
        w = present if self.weight is None else present * self.weight
        return _safe_divide(((1 - dice) * w).sum(), w.sum(), logits)


class FocalLoss(_SegLoss):
    """Multiclass focal loss, normalised like weighted CE (gamma = 0 gives exactly CE).

    Args:
        num_classes: C.
        ignore_index: target value to skip (``None``: none).
        weight: optional (C,) per-class alpha.
        gamma: focusing parameter (>= 0).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        weight: Tensor | None = None,
        gamma: float = 2.0,
    ) -> None:
        super().__init__(num_classes, ignore_index, weight)
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Args: logits (N, C, H, W) float; target (N, H, W) int64. Returns: scalar float32."""
        _check_shapes(logits, target, self.num_classes)
        target = target.long()
        valid = self._valid(target)
        safe_t = torch.where(valid, target, 0).clamp(0, self.num_classes - 1)
        logp = F.log_softmax(logits.float(), dim=1)
        logpt = logp.gather(1, safe_t.unsqueeze(1)).squeeze(1)  # (N, H, W)
        loss = -logpt
        if self.gamma > 0:
            # clamp keeps the gradient finite where p_t == 1 and 0 < gamma < 1
            loss = (1 - logpt.exp()).clamp_min(1e-12).pow(self.gamma) * loss
        alpha = valid.to(loss.dtype)
        if self.weight is not None:
            alpha = alpha * self.weight[safe_t]
        return _safe_divide((loss * alpha).sum(), alpha.sum(), logits)


class CEDiceLoss(nn.Module):
    """``ce + dice_weight * dice``: class-weighted CE plus unweighted (macro) Dice.

    Args:
        num_classes: C.
        ignore_index: target value to skip (``None``: none).
        weight: optional (C,) class weights of the CE term (the Dice term is a plain mean over
            the classes present in the batch, already balanced between classes).
        dice_weight: multiplier of the Dice term.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        weight: Tensor | None = None,
        dice_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.ce = CrossEntropyLoss(num_classes, ignore_index, weight)
        self.dice = DiceLoss(num_classes, ignore_index)
        self.dice_weight = float(dice_weight)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Args: logits (N, C, H, W) float; target (N, H, W) int64. Returns: scalar float32."""
        return self.ce(logits, target) + self.dice_weight * self.dice(logits, target)


#: loss name -> builder ``(cfg, num_classes, ignore_index, class_weights) -> nn.Module``.
LOSS_REGISTRY: Registry[Callable[..., nn.Module]] = Registry("loss", "loss.name")


@LOSS_REGISTRY.register("ce")
def _ce(cfg: LossConfig, num_classes: int, ignore_index: int | None, weight: Tensor | None) -> nn.Module:
    return CrossEntropyLoss(num_classes, ignore_index, weight)


@LOSS_REGISTRY.register("dice")
def _dice(cfg: LossConfig, num_classes: int, ignore_index: int | None, weight: Tensor | None) -> nn.Module:
    return DiceLoss(num_classes, ignore_index, weight)


@LOSS_REGISTRY.register("focal")
def _focal(cfg: LossConfig, num_classes: int, ignore_index: int | None, weight: Tensor | None) -> nn.Module:
    return FocalLoss(num_classes, ignore_index, weight, gamma=cfg.focal_gamma)


@LOSS_REGISTRY.register("ce+dice")
def _ce_dice(cfg: LossConfig, num_classes: int, ignore_index: int | None, weight: Tensor | None) -> nn.Module:
    return CEDiceLoss(num_classes, ignore_index, weight, cfg.dice_weight)


def list_losses() -> list[str]:
    """Names accepted by ``loss.name``."""
    return LOSS_REGISTRY.names()


def build_loss(
    cfg: LossConfig,
    num_classes: int,
    ignore_index: int | None = 255,
    class_weights: Tensor | None = None,
) -> nn.Module:
    """Build the training loss named by ``cfg.name`` (see :data:`LOSS_REGISTRY`).

    Args:
        cfg: loss section of the config (``name``, ``focal_gamma``, ``dice_weight``;
            ``class_weights`` is resolved by the caller via :func:`class_weights_from_counts`).
        num_classes: C.
        ignore_index: target value excluded from the loss (``None``: none).
        class_weights: optional (C,) float tensor; stored as a buffer (moves with ``.to()``).

    Returns:
        ``nn.Module`` mapping ``(logits (N, C, H, W), target (N, H, W) int64)`` to a scalar.

    Raises:
        ConfigError: unknown loss name (with a suggestion) or invalid parameter.
    """
    builder = LOSS_REGISTRY.get(cfg.name)
    try:
        return builder(cfg, num_classes, ignore_index, class_weights)
    except ValueError as e:
        raise ConfigError(f"config: loss: {e} (fix the loss section)") from None


def class_weights_from_counts(
    counts: Sequence[int] | np.ndarray | Tensor, mode: str = "none"
) -> Tensor | None:
    """Per-class loss weights from training pixel counts.

    * ``none``: returns ``None`` (unweighted).
    * ``inverse``: w_c = 1 / freq_c, rescaled so the mean over classes with pixels is 1.
    * ``median``: median frequency balancing (Eigen & Fergus 2015, SegNet):
      w_c = median(freq) / freq_c, the median taken over classes with pixels. Frequencies are
      global (class pixels / all labelled pixels), the common approximation of the paper's
      per-image-presence frequency.

    Classes with 0 training pixels get weight 0: they never occur as a target in training, so
    the weight has no effect on CE/focal and it keeps them out of weighted means. Weights are
    then clamped to ``[0, MAX_CLASS_WEIGHT]`` (50) so that a handful of pixels of a rare class
    cannot dominate the loss (after clamping the mean may be slightly below 1).

    Args:
        counts: (C,) non-negative pixel counts per class (ignore pixels not included).
        mode: ``none`` | ``inverse`` | ``median``.

    Returns:
        (C,) float32 tensor, or ``None`` for mode ``none``.

    Raises:
        ConfigError: unknown mode. DataError: all counts are zero.
    """
    mode = str(mode).lower()
    if mode == "none":
        return None
    if mode not in ("inverse", "median"):
        raise ConfigError(
            f"config: unknown loss.class_weights {mode!r} (use one of: none, inverse, median)"
        )
    if isinstance(counts, Tensor):
        counts = counts.detach().cpu().numpy()
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    if (c < 0).any():
        raise ValueError(f"class pixel counts must be non-negative, got {c.tolist()}")
    total = c.sum()
    if total <= 0:
        raise DataError(
            "training masks: no labelled pixels to compute class weights from "
            "(check the masks and ignore_index, or set loss.class_weights=none)"
        )
    present = c > 0
    freq = c / total
    w = np.zeros_like(freq)
    if mode == "inverse":
        w[present] = 1.0 / freq[present]
        w[present] /= w[present].mean()
    else:
        w[present] = np.median(freq[present]) / freq[present]
    w = np.clip(w, 0.0, MAX_CLASS_WEIGHT)
    return torch.tensor(w, dtype=torch.float32)
