"""The train/val split of a data set: one pure function, used by the data module and by the
auto defaults (which need the number of training images before the data module exists).

Seeded with ``numpy.random.default_rng([seed, stream])``, one stream per random choice, so the
held-out val pairs do not change when ``max_train_images`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

__all__ = ["Split", "split_train_val", "STREAM_VAL_SPLIT", "STREAM_TRAIN_SUBSET", "STREAM_VAL_SUBSET", "STREAM_TRAIN_ORDER"]

Pair = tuple[Path, Path]

STREAM_VAL_SPLIT = 0
STREAM_TRAIN_SUBSET = 1
STREAM_VAL_SUBSET = 2
STREAM_TRAIN_ORDER = 3


@dataclass(frozen=True)
class Split:
    """The pairs a run trains and validates on.

    Attributes:
        train: training pairs, in the order given.
        val: validation pairs.
        held_out: how many training pairs were moved to val (0 when the data set has a val split).
    """

    train: list[Pair]
    val: list[Pair]
    held_out: int = 0


def _subset(pairs: list[Pair], limit: int | None, seed: int, stream: int) -> list[Pair]:
    if limit is None or limit >= len(pairs):
        return pairs
    if limit < 1:
        raise DataError(f"max images = {limit}: must be at least 1 (or unset to use all)")
    keep = set(np.random.default_rng([seed, stream]).permutation(len(pairs))[: int(limit)].tolist())
    return [p for i, p in enumerate(pairs) if i in keep]


def split_train_val(
    train: Sequence[Pair],
    val: Sequence[Pair] | None,
    *,
    val_fraction: float,
    seed: int,
    max_train_images: int | None = None,
    max_val_images: int | None = None,
    source: str = "the data set",
) -> Split:
    """Split and subset the usable pairs of a data set.

    Args:
        train: the train split's pairs.
        val: the val split's pairs, or ``None`` when the data set has no val split with masks:
            then ``round(len(train) * val_fraction)`` pairs (at least 1, at most all but one)
            are held out with a seeded shuffle.
        val_fraction: share of training pairs held out when ``val`` is None.
        seed: run seed.
        max_train_images, max_val_images: seeded random subsets (None: all).
        source: where the pairs come from, for the error message.

    Raises:
        DataError: fewer than 2 training pairs and no val split; a limit below 1.
    """
    train = list(train)
    held_out = 0
    if val is None:
        if len(train) < 2:
            raise DataError(
                f"{source}: only {len(train)} image/mask pair and no val split "
                "(add more pairs, or a val split in dataset.yaml)"
            )
        held_out = min(len(train) - 1, max(1, int(round(len(train) * float(val_fraction)))))
        order = np.random.default_rng([seed, STREAM_VAL_SPLIT]).permutation(len(train))
        val_idx = set(order[:held_out].tolist())
        val = [p for i, p in enumerate(train) if i in val_idx]
        train = [p for i, p in enumerate(train) if i not in val_idx]
    train = _subset(train, max_train_images, seed, STREAM_TRAIN_SUBSET)
    val = _subset(list(val), max_val_images, seed, STREAM_VAL_SUBSET)
    return Split(train, val, held_out)
