"""Confusion matrix and segmentation scores against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segtune.metrics import (
    AVERAGING,
    ConfusionMatrix,
    confusion_matrix,
    format_metrics_table,
    segmentation_metrics,
)

# 3-class example, one image of 2x3 pixels:
#   target = [[0, 0, 1], [1, 2, 2]]
#   preds  = [[0, 1, 1], [1, 2, 0]]
# rows = ground truth, cols = prediction:
#   gt 0: pred 0 once, pred 1 once      -> [1, 1, 0]
#   gt 1: pred 1 twice                  -> [0, 2, 0]
#   gt 2: pred 2 once, pred 0 once      -> [1, 0, 1]
TARGET = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
PREDS = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
CM = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PREDS, TARGET, 3, 255)
    assert cm.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), CM)


def test_ignore_pixels_excluded():
    target = torch.tensor([[[0, 0, 1, 255], [1, 2, 2, 255]]])
    preds = torch.tensor([[[0, 1, 1, 2], [1, 2, 0, 0]]])
    np.testing.assert_array_equal(confusion_matrix(preds, target, 3, 255).numpy(), CM)


def test_logits_are_argmaxed():
    logits = torch.nn.functional.one_hot(PREDS, 3).permute(0, 3, 1, 2).float() * 5.0
    np.testing.assert_array_equal(confusion_matrix(logits, TARGET, 3, 255).numpy(), CM)


def test_out_of_range_target_raises_with_values():
    target = torch.tensor([[[0, 7, 1], [1, 2, 255]]])
    with pytest.raises(ValueError, match="7"):
        confusion_matrix(PREDS, target, 3, 255)


def test_scores_three_class_hand_example():
    m = segmentation_metrics(CM, ["a", "b", "c"])
    ious = [p["iou"] for p in m["per_class"]]
    assert ious == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert [p["dice"] for p in m["per_class"]] == pytest.approx([0.5, 0.8, 2 / 3])
    assert [p["precision"] for p in m["per_class"]] == pytest.approx([0.5, 2 / 3, 1.0])
    assert [p["recall"] for p in m["per_class"]] == pytest.approx([0.5, 1.0, 0.5])
    assert [p["support"] for p in m["per_class"]] == [2, 2, 2]
    assert [p["predicted"] for p in m["per_class"]] == [2, 3, 1]
    assert m["miou"] == pytest.approx(0.5)
    assert m["mdice"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 6)
    assert m["mean_recall"] == m["mean_class_acc"] == pytest.approx(2 / 3)
    assert m["mean_precision"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    assert m["fw_iou"] == pytest.approx(0.5)
    assert m["num_pixels"] == 6
    assert m["averaging"] == AVERAGING
    assert all(isinstance(v, float) for v in ious)


def test_binary_case_reports_both_classes():
    # background 0, foreground 1; gt fg = 4 px, pred fg = 3 px, overlap 2
    cm = np.array([[10, 1], [2, 2]])
    m = segmentation_metrics(cm, ["background", "foreground"])
    bg, fg = m["per_class"]
    assert bg["iou"] == pytest.approx(10 / 13)
    assert fg["iou"] == pytest.approx(2 / 5)
    assert m["miou"] == pytest.approx((10 / 13 + 2 / 5) / 2)


def test_class_absent_everywhere_is_excluded_not_nan():
    cm = np.zeros((4, 4), dtype=np.int64)
    cm[:3, :3] = CM
    m = segmentation_metrics(torch.from_numpy(cm))
    absent = m["per_class"][3]
    assert absent["present"] is False
    assert absent["iou"] is None and absent["dice"] is None
    assert absent["precision"] is None and absent["recall"] is None
    assert m["miou"] == pytest.approx(0.5)  # same as the 3-class example
    assert m["num_present"] == 3
    for key in ("miou", "mdice", "mean_precision", "mean_recall", "pixel_acc", "fw_iou"):
        assert m[key] is not None and not math.isnan(m[key])


def test_class_only_predicted_counts_as_zero():
    # class 2 never in ground truth but predicted on 1 pixel
    cm = np.array([[3, 0, 1], [0, 4, 0], [0, 0, 0]])
    m = segmentation_metrics(cm)
    c2 = m["per_class"][2]
    assert c2["present"] is True
    assert c2["iou"] == 0.0 and c2["precision"] == 0.0 and c2["recall"] is None
    assert m["miou"] == pytest.approx((3 / 4 + 1.0 + 0.0) / 3)
    assert m["mean_recall"] == pytest.approx((3 / 4 + 1.0) / 2)


def test_missed_class_has_zero_precision():
    cm = np.array([[5, 0], [2, 0]])  # class 1 in truth, never predicted
    c1 = segmentation_metrics(cm)["per_class"][1]
    assert c1["iou"] == 0.0 and c1["precision"] == 0.0 and c1["recall"] == 0.0


def test_macro_not_micro_on_imbalanced_example():
    cm = np.array([[90, 0], [5, 5]])
    m = segmentation_metrics(cm)
    macro = (90 / 95 + 5 / 10) / 2
    tp = np.diag(cm).sum()
    fp_fn = 2 * (cm.sum() - tp)
    micro = tp / (tp + fp_fn)  # SMP-style "micro IoU"
    assert micro == pytest.approx(95 / 105)
    assert m["miou"] == pytest.approx(macro)
    assert abs(m["miou"] - micro) > 0.1


def test_empty_matrix_gives_none():
    m = segmentation_metrics(np.zeros((2, 2)))
    assert m["miou"] is None and m["pixel_acc"] is None and m["num_pixels"] == 0


def test_bad_inputs():
    with pytest.raises(ValueError):
        segmentation_metrics(np.zeros((2, 3)))
    with pytest.raises(ValueError):
        segmentation_metrics(CM, ["only", "two"])


def test_metric_accumulates_by_sum():
    metric = ConfusionMatrix(num_classes=3, ignore_index=255)
    metric.update(PREDS, TARGET)
    metric.update(PREDS, TARGET)
    out = metric.compute()
    assert out.dtype == torch.int64 and out.shape == (3, 3)
    np.testing.assert_array_equal(out.numpy(), 2 * CM)


def test_metric_states_merge_and_reduce_by_sum():
    a = ConfusionMatrix(3, 255)
    b = ConfusionMatrix(3, 255)
    a.update(PREDS, TARGET)
    other_t = torch.tensor([[[2, 2, 2], [0, 0, 255]]])
    other_p = torch.tensor([[[2, 2, 1], [0, 2, 1]]])
    b.update(other_p, other_t)
    cm_b = b.compute()
    # the DDP reduction registered for the state is a sum over ranks, not a mean
    reduce_fx = a._reductions["confmat"]
    stacked = torch.stack([a.confmat, b.confmat])
    np.testing.assert_array_equal(reduce_fx(stacked).numpy(), CM + cm_b.numpy())
    a.merge_state(b)
    np.testing.assert_array_equal(a.compute().numpy(), CM + cm_b.numpy())
    a.reset()
    assert int(a.confmat.sum()) == 0


def test_format_table_marks_absent_classes():
    cm = np.zeros((3, 3), dtype=np.int64)
    cm[:2, :2] = [[3, 1], [0, 4]]
    text = format_metrics_table(segmentation_metrics(cm, ["road", "car", "boat"]))
    lines = text.splitlines()
    boat = next(line for line in lines if line.startswith("boat"))
    assert "N/A" in boat
    assert any(line.startswith("mIoU") and "(2/3 classes)" in line for line in lines)
    road = next(line for line in lines if line.startswith("road"))
    assert "0.7500" in road and "50.00%" in road
