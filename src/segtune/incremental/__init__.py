"""Class-incremental segmentation building blocks: MiB/PLOP losses, pseudo-labels and
classifier growth (see ``docs/incremental.md``).

Everything here is a pure function of tensors or a model surgery helper; the training loop
that combines them lives elsewhere.
"""

from __future__ import annotations

from .heads import (
    INIT_REGISTRY,
    InitRule,
    expand_classifier,
    find_classifier,
    find_classifiers,
    grow_model_classes,
)
from .losses import (
    entropy_pseudo_labels,
    entropy_uncertainty,
    kd_loss,
    local_pod,
    logits_merge_new_into_background,
    median_uncertainty_thresholds,
    pod_embedding,
    unbiased_cross_entropy,
    unbiased_kd,
)

__all__ = [
    "INIT_REGISTRY",
    "InitRule",
    "expand_classifier",
    "find_classifier",
    "find_classifiers",
    "grow_model_classes",
    "entropy_pseudo_labels",
    "entropy_uncertainty",
    "kd_loss",
    "local_pod",
    "logits_merge_new_into_background",
    "median_uncertainty_thresholds",
    "pod_embedding",
    "unbiased_cross_entropy",
    "unbiased_kd",
]
