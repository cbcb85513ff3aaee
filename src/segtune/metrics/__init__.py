"""Segmentation metrics: a sum-reduced confusion matrix and macro scores over present classes."""

from .confusion import (
    AVERAGING,
    ConfusionMatrix,
    confusion_matrix,
    format_metrics_table,
    segmentation_metrics,
)

__all__ = [
    "AVERAGING",
    "ConfusionMatrix",
    "confusion_matrix",
    "format_metrics_table",
    "segmentation_metrics",
]
