"""Experiment-tracking back-ends: Lightning's loggers, one registered name each (``train.logger``).

======================  ==========================================  ==================================
name                    writes (under the run folder)               needs
======================  ==========================================  ==================================
``csv``                 ``logs/csv/metrics.csv`` (+ ``images/``)     nothing
``tensorboard``         ``logs/tensorboard/events.out.tfevents.*``   ``pip install "segtune[tracking]"``
``mlflow``              ``mlruns/`` (a local MLflow file store,      ``pip install "segtune[tracking]"``
                        unless ``MLFLOW_TRACKING_URI`` is set)
======================  ==========================================  ==================================

``none`` (the default) writes no logger files; ``history.csv`` and ``curves.png`` are written
either way. View them with ``tensorboard --logdir RUN/logs`` or ``mlflow ui --backend-store-uri
RUN/mlruns``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path
from .._registry import Registry
from ..errors import ConfigError

__all__ = ["LOGGERS", "LoggerKind", "NO_LOGGER", "build_logger", "list_loggers"]

#: ``train.logger`` value that disables the loggers (not a registered name).
NO_LOGGER = "none"
_EXTRA = 'pip install "segtune[tracking]"'


@dataclass(frozen=True)
class LoggerKind:
    """A registered logger.

    Attributes:
        build: ``(run_dir, run_name) -> lightning Logger``.
        log_image: ``(logger, tag, image (H, W, 3) uint8, step) -> None``.
        requires: Python module the logger needs (checked before the run starts), or ``""``.
    """

    build: Callable[[Path, str], Any]
    log_image: Callable[[Any, str, np.ndarray, int], None]
    requires: str = ""


LOGGERS: Registry[LoggerKind] = Registry("logger", "train.logger")


def list_loggers() -> list[str]:
    """Names accepted by ``train.logger`` besides ``none``."""
    return LOGGERS.names()


def _csv_build(run_dir: Path, run_name: str) -> Any:
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(run_dir), name="logs", version="csv")


def _csv_image(logger: Any, tag: str, image: np.ndarray, step: int) -> None:
    from PIL import Image

    path = Path(logger.log_dir) / "images" / f"{tag}_step{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, durable=False) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def _tb_build(run_dir: Path, run_name: str) -> Any:
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(run_dir), name="logs", version="tensorboard", default_hp_metric=False)


def _tb_image(logger: Any, tag: str, image: np.ndarray, step: int) -> None:
    logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")


def _mlflow_build(run_dir: Path, run_name: str) -> Any:
    """A local file store ``RUN/mlruns`` unless ``MLFLOW_TRACKING_URI`` names another backend.

    MLflow 3 keeps its file store in maintenance mode and refuses it unless
    ``MLFLOW_ALLOW_FILE_STORE=true``, which is set here (for this process) when unset.
    """
    import os

    from lightning.pytorch.loggers import MLFlowLogger

    uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / "mlruns").resolve().as_uri()
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name="segtune", run_name=run_name, tracking_uri=uri)


def _mlflow_image(logger: Any, tag: str, image: np.ndarray, step: int) -> None:
    logger.experiment.log_image(logger.run_id, image, artifact_file=f"{tag}_step{step:06d}.png")


LOGGERS.register("csv")(LoggerKind(_csv_build, _csv_image))
LOGGERS.register("tensorboard")(LoggerKind(_tb_build, _tb_image, requires="tensorboard"))
LOGGERS.register("mlflow")(LoggerKind(_mlflow_build, _mlflow_image, requires="mlflow"))


def check_logger(name: str) -> LoggerKind | None:
    """The logger named ``name`` (None for ``none``); its extra must be installed.

    Raises:
        ConfigError: unknown name, or the package it needs is missing (names the pip command).
    """
    if str(name).lower() == NO_LOGGER:
        return None
    kind = LOGGERS.get(name, also=(NO_LOGGER,))
    if kind.requires and importlib.util.find_spec(kind.requires) is None:
        raise ConfigError(
            f"train.logger={name}: the {kind.requires} package is not installed ({_EXTRA}, "
            f"or train.logger=csv / none)"
        )
    return kind


def build_logger(name: str, run_dir: Path) -> tuple[Any, LoggerKind] | None:
    """The Lightning logger for ``train.logger=name`` writing under ``run_dir`` (None for ``none``)."""
    kind = check_logger(name)
    if kind is None:
        return None
    return kind.build(Path(run_dir), Path(run_dir).name), kind
