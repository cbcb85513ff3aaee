"""Experiment-tracking back-ends: Lightning's loggers, one registered name each (``train.logger``).

======================  ==========================================  ==================================
name                    writes (under the run folder)               needs
======================  ==========================================  ==================================
``csv``                 ``logs/csv/metrics.csv`` (+ ``images/``)     nothing
``tensorboard``         ``logs/tensorboard/events.out.tfevents.*``   ``pip install "segtune[tracking]"``
``mlflow``              ``mlruns/`` (a local MLflow file store,      ``pip install "segtune[tracking]"``
                        unless ``MLFLOW_TRACKING_URI`` is set)
======================  ==========================================  ==================================

A resumed run (``segtune train --resume``) continues the same ``metrics.csv`` and the same
MLflow run (found by the tag ``segtune_run_dir``); TensorBoard adds a second events file.

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
    """Lightning's CSVLogger, except that a resumed run continues ``metrics.csv`` (Lightning's
    writer deletes an existing file) after dropping its rows from past the checkpoint."""
    import csv

    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    class _ContinuingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if Path(self.metrics_file_path).is_file():
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])

        def drop_from(self, step: int) -> None:
            path = Path(self.metrics_file_path)
            if not path.is_file():
                return
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            keep = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
            if len(keep) < len(rows):
                with atomic_path(path, durable=False) as tmp, open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=self.metrics_keys)
                    w.writeheader()
                    w.writerows(keep)

    class _ContinuingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self) -> Any:
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = _ContinuingWriter(log_dir=self.log_dir)
            return self._experiment

    return _ContinuingCSVLogger(save_dir=str(run_dir), name="logs", version="csv")


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
    return MLFlowLogger(experiment_name="segtune", run_name=run_name, tracking_uri=uri,
                        tags={"segtune_run_dir": str(run_dir.resolve())},
                        run_id=_mlflow_run_id(uri, run_dir))


def _mlflow_run_id(uri: str, run_dir: Path) -> str | None:
    """The MLflow run this run folder logged to before (a resumed run continues it), else None."""
    if uri.startswith("file:") and not (run_dir / "mlruns").is_dir():
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("segtune")
    if exp is None:
        return None
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.segtune_run_dir = '{run_dir.resolve()}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


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
