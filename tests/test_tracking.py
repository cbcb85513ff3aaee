"""``train.logger``: each logger's files from a tiny training run; missing extras; history.csv stays."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import segtune
from segtune.config import Config
from segtune.errors import ConfigError
from segtune.tracking import list_loggers


def _cfg(data: Path, out: Path, logger: str) -> Config:
    cfg = Config()
    cfg.data.root = str(data)
    cfg.data.crop_size = 32
    cfg.data.batch_size = 4
    cfg.data.max_train_images = 8
    cfg.data.max_val_images = 2
    cfg.model.arch = "fpn"
    cfg.strategy.name = "head"
    cfg.optim.lr = 1e-3
    cfg.optim.warmup_steps = 0
    cfg.train.epochs = 1
    cfg.train.out = str(out)
    cfg.train.name = logger
    cfg.train.progress = False
    cfg.train.num_overlays = 2
    cfg.train.early_stopping = 0
    cfg.train.memory = 0
    cfg.train.logger = logger
    return cfg


def test_registry_names() -> None:
    assert list_loggers() == ["csv", "tensorboard", "mlflow"]


@pytest.fixture(scope="module")
def squares_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import make_squares_dataset

    return make_squares_dataset(tmp_path_factory.mktemp("sq") / "squares", n_train=8, n_val=2, size=32)


def test_csv_logger_writes_steps_epochs_per_class_and_images(squares_small: Path, tmp_path: Path) -> None:
    run = segtune.train(_cfg(squares_small, tmp_path, "csv"))
    rows = list(csv.DictReader((run.dir / "logs" / "csv" / "metrics.csv").open()))
    steps = [r for r in rows if r.get("loss")]
    assert len(steps) == run.summary["steps"] == 2  # 8 images / batch 4: one row per step
    assert len([r for r in rows if r.get("lr-AdamW/head")]) == 2  # learning rate per param group and step
    epochs = [r for r in rows if r.get("val_miou")]
    assert len(epochs) == 1 and all(r["val_loss"] for r in epochs)
    assert any(r.get("train_loss_epoch") for r in rows)
    assert any(r.get("val_iou/square") for r in rows) and any(r.get("val_iou/background") for r in rows)
    images = sorted((run.dir / "logs" / "csv" / "images").glob("*.png"))
    assert len(images) == 2  # 2 overlays x 1 validation
    assert (run.dir / "history.csv").is_file()  # stays


def test_tensorboard_logger_writes_scalars_and_images(squares_small: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = segtune.train(_cfg(squares_small, tmp_path, "tensorboard"))
    ev = EventAccumulator(str(run.dir / "logs" / "tensorboard"), size_guidance={"images": 0})
    ev.Reload()
    scalars = ev.Tags()["scalars"]
    for tag in ("loss", "val_miou", "val_loss", "train_loss_epoch", "val_iou/square", "lr-AdamW/head"):
        assert tag in scalars, (tag, scalars)
    assert len(ev.Scalars("loss")) == 2
    assert set(ev.Tags()["images"]) == {"val_overlay_0", "val_overlay_1"}
    assert (run.dir / "history.csv").is_file()


def test_mlflow_logger_writes_a_local_file_store(squares_small: Path, tmp_path: Path) -> None:
    run = segtune.train(_cfg(squares_small, tmp_path, "mlflow"))
    store = run.dir / "mlruns"
    metric_files = {p.name for p in store.rglob("metrics/*")} | {
        str(p.relative_to(p.parents[1])) for p in store.rglob("metrics/*/*")}
    assert {"loss", "val_miou", "train_loss_epoch"} <= metric_files
    assert any("square" in m for m in metric_files)
    assert len(list(store.rglob("val_overlay_*.png"))) == 2
    assert list(store.rglob("params/model")) or list(store.rglob("params/model/*"))


def test_missing_extra_is_one_line_naming_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "tensorboard" else real(n, *a))
    cfg = Config.from_dict({"train": {"logger": "tensorboard"}})
    with pytest.raises(ConfigError, match=r'train.logger=tensorboard: the tensorboard package is not installed '
                                          r'\(pip install "segtune\[tracking\]"'):
        cfg.validate()
    with pytest.raises(ConfigError, match="unknown logger .*did you mean 'mlflow'"):
        Config.from_dict({"train": {"logger": "mlfow"}}).validate()


def test_resumed_run_continues_its_csv_log(squares_small: Path, tmp_path: Path) -> None:
    """An interrupted run's metrics.csv keeps its rows; the resumed part appends the rest, no
    optimiser step twice (Lightning's own CSV writer would delete the file)."""
    import signal

    from _seams import SignalAtStep

    from segtune.engine.resume import Interrupted

    cfg = _cfg(squares_small, tmp_path, "csv")
    cfg.train.epochs = 2
    cfg.train.num_overlays = 0
    with pytest.raises(Interrupted):
        segtune.train(cfg, callbacks=[SignalAtStep(3, signal.SIGINT)])
    run = segtune.train(resume=tmp_path / "csv")
    rows = list(csv.DictReader((run.dir / "logs" / "csv" / "metrics.csv").open()))
    steps = [int(r["step"]) for r in rows if r.get("loss")]
    # rows from before the interrupt kept, none twice (the loss of the step the interrupt
    # stopped after is not logged: Lightning logs it after the batch-end hooks that stop)
    assert steps[:2] == [0, 1] and steps[-1] == 3 and steps == sorted(set(steps))
    assert len([r for r in rows if r.get("val_miou")]) == 2
