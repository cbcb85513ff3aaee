"""Hyperparameter search (``segtune tune``, Optuna) and the LR range test (``segtune lr-find``).

Both build on the training engine: a tuning trial is a normal :func:`segtune.engine.train.train`
run, and the LR finder uses the model, strategy, loss and optimiser that training builds
(:func:`segtune.engine.train.build_parts`).
"""

from .lr_find import LRFindResult, lr_find, range_test
from .samplers import list_pruners, list_samplers
from .space import SearchSpace, load_space, write_default_space
from .study import TuneResult, tune

__all__ = [
    "tune",
    "TuneResult",
    "lr_find",
    "range_test",
    "LRFindResult",
    "SearchSpace",
    "load_space",
    "write_default_space",
    "list_samplers",
    "list_pruners",
]
