"""Rank encoders before training: transferability scores of frozen features on your data.

Public API:

* :func:`logme`, :func:`h_score`, :func:`gbc` (``features (N, D)``, ``labels (N,)`` -> float,
  numpy only, cheap to import; see :mod:`segtune.selection.scores`);
* :func:`rank_encoders` (``segtune rank-encoders``): frozen features of each candidate encoder on
  a data set's training images, the scores, a table, ``ranking.json`` and a bar plot
  (:mod:`segtune.selection.rank`, imported on first use).
"""

from __future__ import annotations

from .._lazy import lazy_getattr
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


__getattr__ = lazy_getattr(__name__, _LAZY)
