"""Rank encoders before training: transferability scores of frozen features on your data.

Public API:

* :func:`logme`, :func:`h_score`, :func:`gbc` (``features (N, D)``, ``labels (N,)`` -> float,
  numpy only, cheap to import; see :mod:`segtune.selection.scores`);
* :func:`rank_encoders` (``segtune rank-encoders``): frozen features of each candidate encoder on
  a data set's training images, the scores, a table, ``ranking.json`` and a bar plot
  (:mod:`segtune.selection.rank`, imported on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from .scores import (
    SCORES,
    gbc,
    h_score,
    h_score_shrink,
    list_scores,
    log_evidence,
    logme,
    logme_fit,
)

__all__ = [
    "SCORES",
    "gbc",
    "h_score",
    "h_score_shrink",
    "list_scores",
    "log_evidence",
    "logme",
    "logme_fit",
    "rank_encoders",
    "format_table",
    "Ranking",
    "parse_candidates",
    "Candidate",
]

_LAZY = {
    "rank_encoders": "rank",
    "format_table": "rank",
    "Ranking": "rank",
    "parse_candidates": "candidates",
    "Candidate": "candidates",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
