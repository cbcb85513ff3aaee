"""The distillation objective: temperature KD on the teacher's logits plus the labels' loss.

Per pixel the KD term is ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` summed over
the classes and averaged over the pixels (Hinton et al. 2015; KL rather than cross-entropy, so
it is 0 when the student reproduces the teacher; the ``T^2`` factor keeps its gradient size
comparable across temperatures). The label term is the run's own loss (``loss.name``: CE, Dice,
...) on the pixels that carry a label; pixels of unlabelled images carry none.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..incremental.losses import kd_loss

__all__ = ["kd_loss", "distillation_loss", "hint_loss", "check_temperature_alpha"]


def check_temperature_alpha(temperature: float, alpha: float) -> None:
    """Refuse a temperature <= 0 or an ``alpha`` outside [0, 1] (ValueError with the fix)."""
    if not float(temperature) > 0:
        raise ValueError(f"temperature {temperature}: must be > 0 (e.g. 2)")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha {alpha}: must lie in [0, 1] (weight of the labels' loss; 0: distillation only)")


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, label_loss: Tensor,
                      temperature: float, alpha: float, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``alpha * label_loss + (1 - alpha) * KD``.

    Args:
        student_logits: (N, C, H, W) float logits of the student.
        teacher_logits: (N, C, H, W) float logits of the teacher (no gradient flows into them).
        label_loss: scalar loss of the student on the labels (0 when the batch has none).
        temperature: T > 0 of the softmax of both models.
        alpha: weight of the label term in [0, 1].
        mask: optional (N, H, W) bool: the pixels the KD term averages over (default: all).

    Returns:
        ``(total, kd)``: the scalar objective and the KD term alone (for logging).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ (same classes and input size needed)")
    kd = kd_loss(student_logits, teacher_logits.detach(), T=float(temperature), mask=mask)
    total = float(alpha) * label_loss + (1.0 - float(alpha)) * kd
    return total, kd.detach()


def hint_loss(student_features: Tensor, teacher_features: Tensor) -> Tensor:
    """Feature hint: mean squared difference of (N, C, H, W) maps (FitNets, Romero et al. 2015).

    Args:
        student_features: the student's features mapped to the teacher's channel count C.
        teacher_features: the teacher's features (no gradient flows into them); a different
            spatial size is matched by bilinear resizing of the student's map.

    Returns:
        Scalar float32 loss (>= 0).
    """
    t = teacher_features.detach().float()
    s = student_features.float()
    if s.shape[-2:] != t.shape[-2:]:
        s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
    if s.shape != t.shape:
        raise ValueError(f"hint: student features {tuple(s.shape)} and teacher features {tuple(t.shape)} differ")
    return F.mse_loss(s, t)
