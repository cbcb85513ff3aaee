"""segtune: transfer learning for semantic segmentation.

Fine-tune a pretrained model on your own images and masks with an explicit transfer strategy,
measure it with honest (macro, per-class) metrics, and predict on new images; offline.

Python API (the CLI is a thin layer over it)::

    import segtune
    run = segtune.train({"data": {"root": "my_data"}, "strategy": {"name": "head"}})
    print(run.metrics["miou"])
    model = segtune.load(run.dir)
    mask = model.predict("photo.jpg")          # (H, W) int64 class indices
    segtune.evaluate(run.dir, "my_data")       # per-class metrics on the val split
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .config import Config
from .errors import ConfigError, DataError, RunError, SegtuneError, WeightsError

if TYPE_CHECKING:  # pragma: no cover
    from .data import DataReport
    from .engine.run import Run
    from .inference import Predictor

__all__ = [
    "__version__",
    "Config",
    "train",
    "update",
    "evaluate",
    "load",
    "predict",
    "check_data",
    "SegtuneError",
    "DataError",
    "ConfigError",
    "WeightsError",
    "RunError",
]


def train(config: Config | dict | str | Path | None = None, **kwargs: Any) -> Run:
    """Fine-tune a model; see :func:`segtune.engine.train.train`."""
    from .engine.train import train as _train

    return _train(config, **kwargs)


def update(run: str | Path | None = None, new_data: str | Path | None = None, **kwargs: Any) -> Run:
    """Update a trained run with new images or new classes into a new run folder; see
    :func:`segtune.incremental.update.update`."""
    from .incremental.update import update as _update

    return _update(run, new_data, **kwargs)


def evaluate(run: str | Path, data: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Per-class and mean metrics of a trained run on a data set; see :func:`segtune.engine.evaluate.evaluate`."""
    from .engine.evaluate import evaluate as _evaluate

    return _evaluate(run, data, **kwargs)


def load(run_dir: str | Path, device: str | None = None) -> Predictor:
    """Load a trained run for prediction: ``segtune.load(run).predict(image) -> (H, W) int64``."""
    from .inference import Predictor

    return Predictor.from_run(run_dir, device=device)


def predict(run: str | Path, inputs: Any, out: str | Path, **kwargs: Any) -> list[Path]:
    """Segment a file or folder with a trained run and write palette PNG masks."""
    from .inference import predict as _predict

    return _predict(run, inputs, out, **kwargs)


def check_data(data: str | Path, **kwargs: Any) -> DataReport:
    """Check a data set for every problem at once; see :func:`segtune.data.check_data`."""
    from .data import check_data as _check

    return _check(data, **kwargs)
