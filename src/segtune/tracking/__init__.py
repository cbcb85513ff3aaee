"""Experiment tracking: ``train.logger`` = ``csv`` | ``tensorboard`` | ``mlflow`` (Lightning's loggers).

Public API: :func:`build_tracking` (the logger and its callbacks for a run), :func:`list_loggers`,
:data:`LOGGERS`, :func:`check_logger`; :class:`~segtune.tracking.callback.TrackingCallback`
(imported on use: this package stays light for the CLI's help).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .loggers import LOGGERS, NO_LOGGER, LoggerKind, build_logger, check_logger, list_loggers

__all__ = [
    "LOGGERS",
    "NO_LOGGER",
    "LoggerKind",
    "build_logger",
    "build_tracking",
    "check_logger",
    "list_loggers",
]


def build_tracking(name: str, run_dir: Path, num_images: int = 4, colors: Any = None,
                   ignore_index: int = 255, params: dict[str, Any] | None = None) -> tuple[Any, list[Any]]:
    """The Lightning logger for ``train.logger=name`` and the callbacks that feed it.

    Args:
        name: ``none`` or a registered logger.
        run_dir: the run folder; the logger writes under it.
        num_images: validation overlays sent per validation.
        colors, ignore_index: how masks are drawn.
        params: logged once as hyperparameters (the resolved config).

    Returns:
        ``(False, [])`` for ``none``; else ``(logger, [LearningRateMonitor, TrackingCallback])``.
    """
    built = build_logger(name, run_dir)
    if built is None:
        return False, []
    from lightning.pytorch.callbacks import LearningRateMonitor

    from .callback import TrackingCallback

    logger, kind = built
    if params:
        logger.log_hyperparams(params)
    return logger, [LearningRateMonitor(logging_interval="step"),
                    TrackingCallback(kind, num_images, colors, ignore_index)]
