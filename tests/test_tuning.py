"""segtune tune (Optuna study of train runs) and segtune lr-find (LR range test)."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import optuna
import pytest
import torch
import yaml

from segtune.cli import main
from segtune.config import Config
from segtune.engine.resume import Interrupted
from segtune.errors import ConfigError, RunError
from segtune.tuning import load_space, range_test, tune, write_default_space
from segtune.tuning.lr_find import suggest_lr

_BASE = {"data": {"crop_size": 64, "batch_size": 4}, "strategy": {"name": "head"},
         "train": {"epochs": 1, "early_stopping": 0}, "optim": {"warmup_steps": 1}}
_SPACE = {"params": {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True},
                     "loss.class_weights": {"choices": ["median", "none"]}}}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader(path.open()))


# ----------------------------------------------------------------------------- tune
def test_tune_runs_trials_and_resume_continues_the_count(squares: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    r = tune(squares, trials=3, space=_SPACE, config=_BASE, out=out, pruner="none")
    assert r.counts == {"complete": 3, "pruned": 0, "failed": 0}
    assert [row["trial"] for row in r.rows] == [0, 1, 2]
    for f in ("study.db", "tune.yaml", "trials.csv", "best_config.yaml", "optimization_history.png",
              "param_importances.png"):
        assert (out / f).is_file(), f
    # keep=best: only the best trial's run folder stays, without its Lightning checkpoints
    kept = sorted(p.name for p in (out / "trials").iterdir())
    assert kept == [f"trial-{r.best_trial:04d}"]
    assert not (out / "trials" / kept[0] / "checkpoints").exists()
    assert (out / "trials" / kept[0] / "model.safetensors").is_file()
    best = Config.from_yaml(r.best_config).validate()  # usable as `segtune train --config`
    assert best.optim.lr == pytest.approx(r.best_params["optim.lr"])
    assert best.loss.class_weights == r.best_params["loss.class_weights"]
    assert best.data.root == str(squares) and best.train.out == "runs" and best.train.epochs == 1
    assert r.best_value == max(row["val_miou"] for row in r.rows)

    with pytest.raises(RunError, match="already exists"):  # never overwritten without --resume
        tune(squares, trials=3, space=_SPACE, config=_BASE, out=out)
    # a process killed during a trial leaves it RUNNING in the SQLite study: resume closes it as
    # failed (interrupted), does not count it, and runs the missing trial
    optuna.load_study(study_name="segtune", storage=f"sqlite:///{out / 'study.db'}").ask()
    r2 = tune(trials=4, out=out, resume=True)  # data, space and base config come from the study
    assert [row["trial"] for row in r2.rows] == [0, 1, 2, 3, 4]
    assert r2.counts == {"complete": 4, "pruned": 0, "failed": 1}
    assert r2.rows[3]["state"] == "failed" and r2.rows[3]["error"].startswith("interrupted")
    table = _csv_rows(out / "trials.csv")
    assert [t["trial"] for t in table] == ["0", "1", "2", "3", "4"]
    assert {"param.optim.lr", "param.loss.class_weights", "val_miou", "error"} <= set(table[0])


def test_grid_sampler_tries_every_value_and_a_failing_trial_is_recorded(squares: Path, tmp_path: Path) -> None:
    space = {"params": {"data.crop_size": {"choices": [64, 48]}}}  # 48 is not a multiple of 32
    r = tune(squares, trials=5, space=space, sampler="grid", config=_BASE, out=tmp_path / "g", pruner="none")
    assert sorted(row["param.data.crop_size"] for row in r.rows) == [48, 64]  # each grid point once, then stop
    by = {row["param.data.crop_size"]: row for row in r.rows}
    assert by[64]["state"] == "complete" and by[64]["val_miou"] is not None
    assert by[48]["state"] == "failed" and "crop_size" in by[48]["error"] and "\n" not in by[48]["error"]
    assert not (tmp_path / "g" / "trials" / f"trial-{by[48]['trial']:04d}").exists()
    assert r.best_params == {"data.crop_size": 64}


class _Boom(L.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        raise RuntimeError("boom in training\nsecond line")


class _CtrlC(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import os
        import signal

        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: segtune's handler stops the run


def test_crashing_and_pruned_trials_never_crash_the_study(squares: Path, tmp_path: Path) -> None:
    r = tune(squares, trials=2, space=_SPACE, config=_BASE, out=tmp_path / "crash", callbacks=[_Boom()])
    assert r.counts == {"complete": 0, "pruned": 0, "failed": 2}
    assert all(row["error"] == "RuntimeError: boom in training" for row in r.rows)
    # an interrupt stops the study (not recorded as a finished trial) with the command that continues it
    with pytest.raises(Interrupted, match="during trial 0 .*--resume") as e:
        tune(squares, trials=2, space=_SPACE, config=_BASE, out=tmp_path / "int", callbacks=[_CtrlC()])
    assert e.value.exit_code == 130 and "\n" not in str(e.value)
    assert _csv_rows(tmp_path / "int" / "trials.csv")[0]["error"].startswith("interrupted")
    assert r.best_config is None and not list((tmp_path / "crash" / "trials").glob("trial-*"))
    # a pruner that stops every trial at its first report: pruned, not failed, folder removed
    always = optuna.pruners.ThresholdPruner(lower=1.01)
    two_epochs = {**_BASE, "train": {**_BASE["train"], "epochs": 2}}
    r = tune(squares, trials=1, space=_SPACE, config=two_epochs, out=tmp_path / "pruned", pruner=always)
    assert r.counts["pruned"] == 1 and r.rows[0]["epochs"] == 1
    assert not list((tmp_path / "pruned" / "trials").glob("trial-*"))
    # ... but never after the run's last epoch: that would only throw a finished result away
    r = tune(squares, trials=1, space=_SPACE, config=_BASE, out=tmp_path / "last", pruner=always)
    assert r.counts["complete"] == 1 and r.rows[0]["epochs"] == 1


def test_search_space_files(tmp_path: Path) -> None:
    path = write_default_space(tmp_path / "space.yaml")
    space = load_space(path)
    names = [p.name for p in space.params]
    for key in ("strategy.name", "optim.lr", "strategy.encoder_lr_factor", "strategy.freeze_stages",
                "loss.name", "loss.class_weights", "augmentation", "data.crop_size", "train.epochs"):
        assert key in names
    assert space.grid_size() > 1  # every default range has a grid: list
    aug = next(p for p in space.params if p.name == "augmentation")
    assert aug.config_values("rescale_jitter") == {"data.augment": "full", "data.scale_min": 0.5, "data.scale_max": 2.0,
                                                   "data.color_jitter": 0.2}
    with pytest.raises(ConfigError, match="already exists"):
        write_default_space(path)
    bad = [
        ({"params": {"optim.lrr": {"low": 1e-4, "high": 1e-2}}}, "lrr"),
        ({"params": {"optim.lr": {"low": 1e-2, "high": 1e-4}}}, "low < high"),
        ({"params": {"loss.class_weights": {"choices": []}}}, "choices"),
        ({"params": {"lr": {"choices": [1]}}}, "presets"),
        ({"params": {"data.crop_size": {"choices": ["big"]}}}, "integer"),
    ]
    for d, match in bad:
        f = tmp_path / "bad.yaml"
        f.write_text(yaml.safe_dump(d))
        with pytest.raises(ConfigError, match=match) as e:
            load_space(f)
        assert str(f) in str(e.value) and "\n" not in str(e.value)
    ranged = load_space({"params": {"optim.lr": {"low": 1e-4, "high": 1e-2, "log": True}}})
    with pytest.raises(ConfigError, match="grid: list"):
        ranged.grid()


# ----------------------------------------------------------------------------- lr-find
def _linear_regression(scale: float, seed: int = 0):
    """Noisy least squares with SGD: diverges for lr > 2 / lambda_max of the data's Hessian."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(256, 8, generator=g) * scale
    y = X @ torch.randn(8, generator=g) + 0.1 * torch.randn(256, generator=g)
    lam = float(torch.linalg.eigvalsh(X.T @ X / 256).max())
    w = torch.nn.Parameter(torch.zeros(8))
    opt = torch.optim.SGD([w], lr=1.0)

    def step() -> float:
        idx = torch.randint(0, 256, (32,), generator=g)
        opt.zero_grad()
        loss = 0.5 * ((X[idx] @ w - y[idx]) ** 2).mean()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step, opt, 2.0 / lam


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_lr_find_locates_the_known_divergence_and_suggests_a_stable_lr(scale: float) -> None:
    step, opt, lr_div = _linear_regression(scale)
    r = range_test(step, opt, min_lr=1e-5, max_lr=10.0, num_steps=100, show_progress=False)
    assert r.stopped == "diverged"
    assert lr_div <= r.lrs[-1] <= 4 * lr_div  # stops soon after the LR where SGD diverges
    assert lr_div / 100 <= r.suggestion <= lr_div / 3  # inside the stable range, not at its edge
    assert r.suggestion == r.steepest and r.min_div10 < lr_div


def test_lr_find_keeps_the_param_group_ratios() -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [a], "lr": 1e-2, "name": "head"},
                           {"params": [b], "lr": 1e-3, "name": "encoder.0"}], lr=1e-2)
    seen = []

    def step() -> float:
        seen.append([g["lr"] for g in opt.param_groups])
        opt.zero_grad()
        loss = (a ** 2).sum() + (b ** 2).sum()
        loss.backward()
        opt.step()
        return float(loss.detach())

    r = range_test(step, opt, min_lr=1e-4, max_lr=1e-1, num_steps=10, show_progress=False)
    assert r.group_ratios == {"head": 1.0, "encoder.0": pytest.approx(0.1)}
    assert all(enc == pytest.approx(head * 0.1) for head, enc in seen)
    assert [h for h, _ in seen] == pytest.approx(r.lrs)
    assert suggest_lr([1e-3, 1e-2], [1.0, 0.5]) == (None, None, None)


def test_lr_find_cli_and_train_with_lr_find(squares: Path, tmp_path: Path, capsys) -> None:
    common = ["--crop-size", "64", "--batch-size", "4", "--strategy", "head"]
    out = tmp_path / "lf"
    assert main(["lr-find", str(squares), *common, "--steps", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "suggested LR" in printed
    result = json.loads((out / "lr_find.json").read_text())
    assert len(result["lrs"]) == len(result["losses"]) <= 12 and result["suggestion"] > 0
    assert (out / "lr_find.png").stat().st_size > 0
    assert main(["lr-find", str(squares), *common, "--steps", "12", "--out", str(out)]) == 2  # no overwrite
    assert "already exists" in capsys.readouterr().err

    runs = tmp_path / "runs"
    assert main(["train", str(squares), *common, "--lr", "find", "--lr-find-steps", "12", "--epochs", "1",
                 "--out", str(runs), "--name", "lf", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "--lr find: suggested LR" in printed
    lr = float(printed.split("training with optim.lr=")[1].split()[0])
    assert Config.from_yaml(runs / "lf" / "config.yaml").optim.lr == pytest.approx(lr)
    assert (runs / "lf" / "lr_find.json").is_file() and (runs / "lf" / "lr_find.png").is_file()


# ----------------------------------------------------------------------------- CLI errors
def test_cli_errors_are_one_line(squares: Path, tmp_path: Path, capsys) -> None:
    space = tmp_path / "space.yaml"
    cases = [
        (["tune"], "give the data set folder"),
        (["tune", str(squares), "--out", str(tmp_path / "none"), "--resume"], "no study to resume"),
        (["tune", str(squares), "--out", str(tmp_path / "g"), "--sampler", "grid", "--space", str(space)], "not found"),
        (["tune", str(squares), "--out", str(tmp_path / "s"), "--sampler", "tpee"], "did you mean 'tpe'"),
        (["tune", str(squares), "--out", str(tmp_path / "p"), "--pruner", "nope"], "choose one of"),
        (["tune", str(squares), "--trials", "0"], "--trials 0"),
        (["tune", str(tmp_path / "nodata"), "--out", str(tmp_path / "nd")], "nodata"),
        (["lr-find"], "give the data set folder"),
        (["lr-find", str(squares), "--steps", "2", "--out", str(tmp_path / "lf")], "steps=2"),
    ]
    for argv, match in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and match in err and "\n" not in err, (argv, err)
    assert main(["tune", "--write-space", str(space)]) == 0
    assert main(["tune", "--write-space", str(space)]) == 2
    assert "already exists" in capsys.readouterr().err
    # the default space has ranges with grid: lists, so the grid sampler accepts it; a range
    # without one is refused before anything is written
    space.write_text("params:\n  optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    assert main(["tune", str(squares), "--out", str(tmp_path / "g2"), "--sampler", "grid", "--space", str(space)]) == 2
    assert "grid: list" in capsys.readouterr().err
    for name in ("g2", "p", "lf", "nd"):
        assert not (tmp_path / name).exists(), name


# ----------------------------------------------------------------------------- benchmark report
@pytest.mark.parametrize("tuned, word", [(0.52, "scored higher"), (0.48, "did not beat")])
def test_tune_benchmark_report_follows_its_json(tuned: float, word: str) -> None:
    from conftest import load_benchmark

    bench = load_benchmark("tune")
    rows = [{"trial": 0, "state": "complete", "val_miou": 0.41, "seconds": 30.0, "param.optim.lr": 0.004},
            {"trial": 1, "state": "pruned", "val_miou": None, "seconds": 12.0, "param.optim.lr": 0.009}]
    final = {name: {"strategy": "head", "lr": 0.003, "loss": "ce+dice", "class_weights": "median", "val_miou": v,
                    "steps": 150, "seconds": 60.0, "cpu_seconds": 50.0}
             for name, v in (("default", 0.50), ("tuned", tuned))}
    doc = {"profile": bench.PROFILE, "command": "python benchmarks/tune.py", "machine": "test machine",
           "load": [1.0, 1.0], "study": {"rows": rows, "seconds": 42.0, "cpu_seconds": 40.0, "best_trial": 0,
                                          "best_heldout_miou": 0.41}, "final": final}
    text = bench.section(doc)
    assert word in text and f"{100 * (tuned - 0.50):+.1f} points" in text
    assert "| 1 | pruned | n/a | optim.lr 0.009 | 12.0 |" in text and "| tuned | head | 0.003 |" in text


def test_lr_find_sweeps_the_engines_discriminative_groups(squares: Path) -> None:
    from segtune.tuning import lr_find

    cfg = {"data": {"root": str(squares), "crop_size": 64, "batch_size": 4},
           "strategy": {"name": "discriminative", "encoder_lr_factor": 0.1}, "train": {"progress": False}}
    r = lr_find(cfg, num_steps=4, min_lr=1e-4, max_lr=1e-2)
    assert len(r.lrs) == 4 and r.lrs[0] == pytest.approx(1e-4) and r.lrs[-1] == pytest.approx(1e-2)
    assert r.group_ratios["head"] == 1.0
    enc = {k: v for k, v in r.group_ratios.items() if k.startswith("encoder.")}
    assert enc and all(v == pytest.approx(0.1) for v in enc.values())


def test_tune_results_section_is_generated_from_the_committed_json() -> None:
    from conftest import load_benchmark

    bench = load_benchmark("tune")
    doc = json.loads((bench.JSON_DEFAULT).read_text())
    results = (bench.C.RESULTS).read_text()
    assert bench.section(doc) in results
    assert doc["study"]["best_params"] and set(doc["final"]) == {"default", "tuned"}


def test_lr_find_on_real_camvid_images(camvid_small: Path, tmp_path: Path) -> None:
    from segtune.tuning import lr_find

    cfg = {"data": {"root": str(camvid_small), "crop_size": 128, "batch_size": 2, "augment": "full"},
           "strategy": {"name": "head"}, "train": {"progress": False}}
    r = lr_find(cfg, num_steps=8, min_lr=1e-4, max_lr=1e-1, out=tmp_path / "lf")
    assert len(r.losses) == 8 and all(np.isfinite(r.losses))
    assert 1e-4 <= r.suggestion <= 1e-1
    assert json.loads((tmp_path / "lf" / "lr_find.json").read_text())["suggestion"] == pytest.approx(r.suggestion)


def test_a_study_where_every_trial_fails_prints_no_optuna_warnings(squares: Path, tmp_path: Path) -> None:
    """Optuna's own '[W ...] There are no complete trials.' lines never reach the user."""
    import logging

    seen: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = _Keep(level=logging.WARNING)
    logging.getLogger("optuna").addHandler(handler)
    try:
        r = tune(squares, trials=1, space=_SPACE, config=_BASE, out=tmp_path / "t", callbacks=[_Boom()])
    finally:
        logging.getLogger("optuna").removeHandler(handler)
    assert r.counts == {"complete": 0, "pruned": 0, "failed": 1}
    assert [rec.getMessage() for rec in seen] == []
    assert not list((tmp_path / "t").glob("*.png"))  # no empty plots
    assert (tmp_path / "t" / "trials.csv").is_file()


def test_train_lr_that_is_neither_a_number_nor_find_says_so(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["train", "data", "--lr", "fast"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --lr: expected a number (e.g. 1e-3) or find, got 'fast'" in err and "<lambda>" not in err


def test_cli_tune_where_no_trial_finished_exits_2(tmp_path: Path, monkeypatch, capsys) -> None:
    """A study with no finished trial has nothing to use: one error line and exit 2, not success."""
    from segtune.tuning import study

    def no_trial_finished(*args, **kwargs) -> study.TuneResult:
        return study.TuneResult(dir=tmp_path / "t", best_value=None, best_trial=None, best_params={},
                                best_config=None, counts={"complete": 0, "pruned": 0, "failed": 2}, rows=[])

    monkeypatch.setattr(study, "tune", no_trial_finished)
    assert main(["tune", str(tmp_path), "--trials", "2", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no trial finished (0 complete, 0 pruned, 2 failed)")
    assert "trials.csv" in err[0]
