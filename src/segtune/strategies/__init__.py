"""Transfer strategies: which parameters train, at which learning rate, and when.

Usage (what the training engine does; ``strategy.name: auto`` and ``optim.lr: None`` are first
filled in by :func:`segtune.strategies.auto.resolve_auto` from the number of training images)::

    resolve_auto(cfg, num_train_images)
    strategy = build_strategy(model, cfg.strategy, cfg.optim.lr)
    optimizer = torch.optim.AdamW(strategy.param_groups(cfg.optim.weight_decay))
    strategy.apply(model, epoch)   # on train start, every epoch start, after validation

See :mod:`segtune.strategies.builtin` for the table of strategies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import HEAD, Strategy, Unit, norm_layers, partition
from .builtin import (
    STRATEGY_REGISTRY,
    DiscriminativeStrategy,
    FullStrategy,
    GradualStrategy,
    HeadStrategy,
    PartialStrategy,
    ScratchStrategy,
)

if TYPE_CHECKING:
    from ..config import StrategyConfig
    from ..models import SegModel

__all__ = [
    "HEAD",
    "STRATEGY_REGISTRY",
    "DiscriminativeStrategy",
    "FullStrategy",
    "GradualStrategy",
    "HeadStrategy",
    "PartialStrategy",
    "ScratchStrategy",
    "Strategy",
    "Unit",
    "build_strategy",
    "list_strategies",
    "norm_layers",
    "partition",
]


def list_strategies() -> list[str]:
    """Names accepted by ``strategy.name``."""
    return STRATEGY_REGISTRY.names()


def build_strategy(model: SegModel, cfg: StrategyConfig, lr: float) -> Strategy:
    """Create the strategy named by ``cfg.name`` for ``model``.

    Nothing is changed on the model until :meth:`Strategy.apply` is called.

    Args:
        model: the :class:`~segtune.models.SegModel` to train.
        cfg: the ``strategy`` config section.
        lr: decoder/head learning rate (``optim.lr``); encoder groups derive theirs from it.

    Raises:
        ConfigError: unknown name (with a suggestion) or a value that does not fit the model
            (e.g. ``freeze_stages`` larger than the number of encoder stages).
    """
    return STRATEGY_REGISTRY.get(cfg.name)(model, cfg, lr)
