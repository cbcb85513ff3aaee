"""``segtune check-data DATA --fix OUT``: a repaired copy of a data set (the originals are never touched).

See :func:`segtune.repair.fix.fix_dataset` for what is repaired and what is listed as not repairable.
"""

from __future__ import annotations

from .fix import FixReport, fix_dataset

__all__ = ["FixReport", "fix_dataset"]
