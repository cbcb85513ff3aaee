"""Distillation: train a smaller student on a trained run's soft outputs (``segtune distill``).

``distill(teacher_run, data, student_arch=..., student_encoder=...)`` returns the student's run
folder; see :mod:`segtune.distill.run` for what it writes and :mod:`segtune.distill.losses` for
the objective.
"""

from __future__ import annotations

from .run import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, distill, resume_distill

__all__ = ["distill", "resume_distill", "DEFAULT_TEMPERATURE", "DEFAULT_ALPHA"]
