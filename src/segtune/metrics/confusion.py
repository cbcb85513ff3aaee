"""Confusion matrix accumulation and the per-class segmentation scores derived from it.

Averaging semantics (stated once, used everywhere in segtune):

* Everything is computed from one confusion matrix summed over the whole evaluation set
  (all images, all DDP ranks). Rows are ground truth, columns are predictions.
* Pixels whose ground truth is ``ignore_index`` are excluded before counting.
* ``miou`` / ``mdice`` are **macro** averages: the mean of the per-class scores over the
  classes that occur in the ground truth *or* in the prediction. A class absent from both
  has an undefined IoU (0/0); it is reported as ``None`` and left out of the mean (never
  counted as 0, never as 1, never NaN). A class that is predicted but absent from the
  ground truth has IoU 0 and is included.
* ``pixel_acc`` is the micro average (correct pixels / labelled pixels). Note that the
  "micro IoU" of some libraries (sum of TP over sum of TP+FP+FN over all classes) is not
  mIoU; segtune does not report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "ConfusionMatrix",
    "confusion_matrix",
    "segmentation_metrics",
    "format_metrics_table",
    "AVERAGING",
]

AVERAGING = "macro over classes present in ground truth or prediction; ignore_index excluded"

_MAX_LISTED = 10


def _as_labels(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Turn ``preds`` into integer labels shaped like ``target`` (argmax over logits)."""
    if preds.is_floating_point() and preds.dim() == target.dim() + 1:
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"logits have {preds.shape[1]} channels but the metric has {num_classes} classes"
            )
        preds = preds.argmax(dim=1)
    if preds.shape != target.shape:
        raise ValueError(
            f"preds shape {tuple(preds.shape)} does not match target shape {tuple(target.shape)}"
        )
    if preds.is_floating_point():
        raise ValueError(
            "preds must be integer class indices (N, H, W) or float logits (N, C, H, W)"
        )
    return preds


def _bad_values(values: Tensor) -> str:
    uniq = torch.unique(values).tolist()
    shown = ", ".join(str(v) for v in uniq[:_MAX_LISTED])
    more = f" and {len(uniq) - _MAX_LISTED} more" if len(uniq) > _MAX_LISTED else ""
    return shown + more


def confusion_matrix(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = 255
) -> Tensor:
    """Confusion matrix of one batch (or any set of pixels).

    Args:
        preds: (N, H, W) integer class indices, or (N, C, H, W) float logits/probabilities
            (argmax over dim 1 is taken). Any shape equal to ``target``'s also works.
        target: (N, H, W) integer ground truth; pixels equal to ``ignore_index`` are skipped.
        num_classes: number of classes C.
        ignore_index: label value excluded from counting (``None``: nothing is ignored).

    Returns:
        (C, C) int64 tensor on ``target``'s device; rows = ground truth, columns = prediction.

    Raises:
        ValueError: ``target`` holds values outside ``[0, C)`` other than ``ignore_index``,
            or ``preds`` holds out-of-range values on labelled pixels, or shapes differ.
    """
    c = int(num_classes)
    preds = _as_labels(preds, target, c)
    target = target.long().reshape(-1)
    preds = preds.long().reshape(-1)
    if ignore_index is not None:
        keep = target != ignore_index
        target = target[keep]
        preds = preds[keep]
    bad_t = (target < 0) | (target >= c)
    if bool(bad_t.any()):
        raise ValueError(
            f"target has values outside [0, {c}) that are not ignore_index={ignore_index}: "
            f"{_bad_values(target[bad_t])}"
        )
    bad_p = (preds < 0) | (preds >= c)
    if bool(bad_p.any()):
        raise ValueError(f"preds has values outside [0, {c}): {_bad_values(preds[bad_p])}")
    # bincount without weights is deterministic on CUDA (allowed under deterministic mode)
    counts = torch.bincount(target * c + preds, minlength=c * c)
    return counts.reshape(c, c).to(torch.int64)


class ConfusionMatrix(Metric):
    """Streaming (C, C) confusion matrix, summed over batches and across DDP ranks.

    The state ``confmat`` is an int64 (C, C) tensor with ``dist_reduce_fx="sum"``: ranks'
    counts are added, never averaged. Rows are ground truth, columns are prediction.

    Args:
        num_classes: number of classes C.
        ignore_index: ground-truth value excluded from counting (``None``: none).
        **kwargs: passed to :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    confmat: Tensor

    def __init__(self, num_classes: int, ignore_index: int | None = 255, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.add_state(
            "confmat",
            default=torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64),
            dist_reduce_fx="sum",
        )

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add one batch.

        Args:
            preds: (N, H, W) integer class indices or (N, C, H, W) float logits.
            target: (N, H, W) integer ground truth (``ignore_index`` pixels are skipped).

        Raises:
            ValueError: out-of-range labels (the offending values are listed).
        """
        cm = confusion_matrix(preds, target, self.num_classes, self.ignore_index)
        self.confmat += cm.to(self.confmat.device)

    def compute(self) -> Tensor:
        """Return the accumulated (C, C) int64 matrix (rows = ground truth)."""
        return self.confmat.clone()


def _f(x: float | np.floating) -> float:
    return float(x)


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def segmentation_metrics(
    cm: np.ndarray | Tensor, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per-class and averaged scores from a confusion matrix.

    Per class c (TP = cm[c, c], FP = column sum - TP, FN = row sum - TP):

    * ``iou`` = TP / (TP + FP + FN), ``dice`` = 2TP / (2TP + FP + FN): ``None`` when the class
      is absent from both ground truth and prediction.
    * ``precision`` = TP / predicted: ``None`` for an absent class; 0.0 when the class is in the
      ground truth but never predicted (it was missed entirely).
    * ``recall`` = TP / support: ``None`` when the class is absent from the ground truth.

    Args:
        cm: (C, C) confusion matrix (rows = ground truth, columns = prediction), any
            integer/float dtype, numpy or torch (any device).
        class_names: C names; default ``class_0 .. class_{C-1}``.

    Returns:
        JSON-able dict (Python floats/ints; ``None`` for undefined values, never NaN):

        * ``per_class``: list of C dicts ``{index, name, iou, dice, precision, recall,
          support (ground-truth pixels, int), predicted (predicted pixels, int),
          present (bool: in ground truth or prediction)}``.
        * ``miou``, ``mdice``: mean IoU / Dice over present classes.
        * ``mean_precision``: mean precision over present classes.
        * ``mean_recall`` and its alias ``mean_class_acc``: mean recall over classes present
          in the ground truth.
        * ``pixel_acc``: trace / total labelled pixels.
        * ``fw_iou``: frequency-weighted IoU, sum_c support_c / total * IoU_c.
        * ``num_pixels``: labelled pixels counted; ``num_classes``; ``num_present``.
        * ``averaging``: a sentence stating the averaging rule.

    Raises:
        ValueError: ``cm`` is not square or ``class_names`` has the wrong length.
    """
    if isinstance(cm, Tensor):
        cm = cm.detach().cpu().numpy()
    m = np.asarray(cm, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {m.shape}")
    c = m.shape[0]
    if class_names is None:
        names = [f"class_{i}" for i in range(c)]
    else:
        names = [str(n) for n in class_names]
        if len(names) != c:
            raise ValueError(f"{len(names)} class names given for a {c}-class confusion matrix")

    tp = np.diag(m)
    support = m.sum(axis=1)
    predicted = m.sum(axis=0)
    fp = predicted - tp
    fn = support - tp
    total = m.sum()

    per_class: list[dict[str, Any]] = []
    for i in range(c):
        in_gt = support[i] > 0
        in_pred = predicted[i] > 0
        present = bool(in_gt or in_pred)
        union = tp[i] + fp[i] + fn[i]
        iou = _f(tp[i] / union) if present else None
        dice = _f(2 * tp[i] / (2 * tp[i] + fp[i] + fn[i])) if present else None
        if in_pred:
            precision: float | None = _f(tp[i] / predicted[i])
        elif in_gt:
            precision = 0.0
        else:
            precision = None
        recall = _f(tp[i] / support[i]) if in_gt else None
        per_class.append(
            {
                "index": i,
                "name": names[i],
                "iou": iou,
                "dice": dice,
                "precision": precision,
                "recall": recall,
                "support": int(round(support[i])),
                "predicted": int(round(predicted[i])),
                "present": present,
            }
        )

    ious = [p["iou"] for p in per_class]
    fw_iou: float | None = None
    if total > 0:
        fw_iou = _f(sum(support[i] / total * ious[i] for i in range(c) if support[i] > 0))
    mean_recall = _mean([p["recall"] for p in per_class])
    return {
        "miou": _mean(ious),
        "mdice": _mean([p["dice"] for p in per_class]),
        "mean_precision": _mean([p["precision"] for p in per_class]),
        "mean_recall": mean_recall,
        "mean_class_acc": mean_recall,
        "pixel_acc": _f(tp.sum() / total) if total > 0 else None,
        "fw_iou": fw_iou,
        "num_pixels": int(round(total)),
        "num_classes": c,
        "num_present": sum(1 for p in per_class if p["present"]),
        "averaging": AVERAGING,
        "per_class": per_class,
    }


def _fmt(v: float | None, width: int = 8) -> str:
    return f"{'N/A':>{width}}" if v is None else f"{v:>{width}.4f}"


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """Readable per-class table plus a summary line.

    Args:
        metrics: the dict returned by :func:`segmentation_metrics`.

    Returns:
        Multi-line string: one row per class (name, IoU, Dice, precision, recall, share of
        ground-truth pixels), ``N/A`` for undefined values, then the summary line
        ``mIoU ... | mDice ... | pixel acc ... | mean class acc ...`` and the averaging rule.
    """
    rows = metrics.get("per_class", [])
    total = sum(int(r.get("support", 0)) for r in rows)
    name_w = max([len("class")] + [len(str(r["name"])) for r in rows])
    header = f"{'class':<{name_w}}  {'IoU':>8}{'Dice':>8}{'Prec':>8}{'Recall':>8}{'support':>9}"
    lines = [header, "-" * len(header)]
    for r in rows:
        share = f"{100.0 * r['support'] / total:>8.2f}%" if total > 0 else f"{'N/A':>9}"
        lines.append(
            f"{str(r['name']):<{name_w}}  {_fmt(r.get('iou'))}{_fmt(r.get('dice'))}"
            f"{_fmt(r.get('precision'))}{_fmt(r.get('recall'))}{share}"
        )
    lines.append("-" * len(header))

    def s(key: str) -> str:
        v = metrics.get(key)
        return "N/A" if v is None else f"{v:.4f}"

    n_present = metrics.get("num_present", sum(1 for r in rows if r.get("present")))
    lines.append(
        f"mIoU {s('miou')} ({n_present}/{len(rows)} classes) | mDice {s('mdice')} | "
        f"pixel acc {s('pixel_acc')} | mean class acc {s('mean_class_acc')}"
    )
    lines.append(f"averaging: {metrics.get('averaging', AVERAGING)}")
    return "\n".join(lines)
