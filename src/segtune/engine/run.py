"""Run folders: where a training run keeps its model, config, metrics and pictures.

Layout of ``<out>/<name>/``::

    model.safetensors   weights of the best checkpoint (safetensors: loading runs no code)
    model.yaml          architecture, classes, colours, normalisation, strategy, versions, sha256
    config.yaml         the fully resolved Config
    metrics.json        final validation metrics (per class + means) and the run summary
    history.csv         one row per epoch (losses, val mIoU, lr, seconds)
    curves.png          training curves
    per_class_iou.png   per-class IoU bars
    val_overlays/       input | ground truth | prediction for a few validation images
    checkpoints/        last.ckpt and best.ckpt (Lightning, for --resume)
    memory/, memory.json  a few class-balanced training samples for `segtune update` to replay
                          (``train.memory``, default 20)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RunError
from ..models.modelfile import MODEL_FILE, MODEL_META, load_model, load_model_meta, save_model

if TYPE_CHECKING:
    from ..inference import Predictor

__all__ = [
    "Run",
    "CONFIG_FILE",
    "METRICS_FILE",
    "new_run_dir",
    "default_run_name",
    "free_run_name",
    "remove_if_unused",
    "RUN_MODEL_FILES",
    "missing_run_files",
    "run_steps",
    # model files live in segtune.models.modelfile; names kept here for run-folder users
    "MODEL_FILE",
    "MODEL_META",
    "save_model",
    "load_model_meta",
    "load_model",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
RUN_MODEL_FILES = (MODEL_META, MODEL_FILE, CONFIG_FILE)  # what a run needs to be built on (update, distill)


@dataclass
class Run:
    """The result of :func:`segtune.train`: a finished run folder and its headline numbers.

    Attributes:
        dir: run folder.
        metrics: final validation metrics (see :func:`segtune.metrics.segmentation_metrics`).
        history: one dict per epoch.
        summary: strategy, trainable parameters, epochs, seconds, ...
    """

    dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def miou(self) -> float | None:
        """Final validation mIoU as a fraction in [0, 1] (mean over present classes; None if not scored)."""
        return self.metrics.get("miou")

    def load(self, device: str | None = None) -> Predictor:
        """Load the trained model for prediction (see :class:`segtune.inference.Predictor`)."""
        from ..inference import Predictor

        return Predictor.from_run(self.dir, device=device)


def new_run_dir(out: str | Path, name: str, overwrite: bool = False) -> Path:
    """Create and return ``out/name``.

    An existing folder is an error unless ``overwrite``; then its files are replaced as they
    are rewritten (never deleted wholesale).
    """
    if not re.fullmatch(r"[\w.\-+=@ ]+", name):
        raise RunError(f"run name '{name}' may only hold letters, digits, space and ._-+=@")
    run = Path(out) / name
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise RunError(
            f"{run}: run folder already exists (pass --overwrite to replace it, "
            f"--resume {run} to continue it, or --name to pick another)"
        )
    run.mkdir(parents=True, exist_ok=True)
    return run


def default_run_name(arch: str, strategy: str) -> str:
    """``<arch>-<strategy>``, or just ``<arch>`` while the strategy is still ``auto``."""
    return arch if strategy == "auto" else f"{arch}-{strategy}"


def free_run_name(out: str | Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet under ``out``."""
    out = Path(out)
    if not (out / base).exists():
        return base
    i = 2
    while (out / f"{base}-{i}").exists():
        i += 1
    return f"{base}-{i}"


def remove_if_unused(run_dir: str | Path) -> bool:
    """Delete a run folder if it holds nothing but its ``config.yaml`` (a refused or never-started
    run); True if it was removed. The one clean-up of run folders (train and the CLI use it)."""
    run_dir = Path(run_dir)
    try:
        if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {CONFIG_FILE}:
            (run_dir / CONFIG_FILE).unlink(missing_ok=True)
            run_dir.rmdir()
            return True
    except OSError:
        pass
    return False


def missing_run_files(run_dir: str | Path, names: tuple[str, ...] = RUN_MODEL_FILES) -> list[str]:
    """The ``names`` that are not files in ``run_dir`` (empty: the run can be built on)."""
    return [f for f in names if not (Path(run_dir) / f).is_file()]


def run_steps(run_dir: str | Path) -> int:
    """Optimiser steps a finished run took (``summary.steps`` of its ``metrics.json``); 0 if unknown."""
    import json

    try:
        return int(json.loads((Path(run_dir) / METRICS_FILE).read_text()).get("summary", {}).get("steps") or 0)
    except (OSError, ValueError):
        return 0
