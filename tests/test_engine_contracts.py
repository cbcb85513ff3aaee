"""Engine behaviour that ships but had no test: early stopping, optimiser groups and LR schedule,
and refusing an unsafe or foreign ``last.ckpt`` on ``--resume``.

(The feature cache's end-to-end equivalence is in tests/test_feature_cache.py.)
"""

from __future__ import annotations

import builtins
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from conftest import make_squares_dataset

import segtune
from segtune.cli import main
from segtune.config import SCHEDULES, Config, LossConfig, OptimConfig, StrategyConfig
from segtune.engine.module import SegTuneModule
from segtune.losses import build_loss
from segtune.models import create_model
from segtune.strategies import build_strategy

LR = 1e-3


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """4 train / 2 val 32x32 images: 2 optimiser steps per epoch at batch 2."""
    return make_squares_dataset(tmp_path / "tiny", n_train=4, n_val=2, size=32)


def _cfg(data: Path, out: Path, name: str, **kw) -> Config:
    cfg = Config()
    cfg.data.root = str(data)
    cfg.data.crop_size = 32
    cfg.data.batch_size = 2
    cfg.model.weights = "none"
    cfg.strategy.name = "head"
    cfg.optim.lr = LR
    cfg.optim.warmup_steps = 0
    cfg.loss.class_weights = "none"
    cfg.train.out = str(out)
    cfg.train.name = name
    cfg.train.progress = False
    cfg.train.num_overlays = 0
    for k, v in kw.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    return cfg


# --------------------------------------------------------------------------- early stopping
def _flat_run(data: Path, out: Path, name: str, **kw) -> segtune.Run:
    # FPN's decoder normalises with GroupNorm (no running statistics) and the head strategy keeps
    # the encoder's BatchNorm in eval mode, so at lr 1e-9 the model, hence val mIoU, cannot change
    return segtune.train(_cfg(data, out, name, model__arch="fpn", optim__lr=1e-9, **kw))


def test_early_stopping_stops_after_patience_validations_without_improvement(tiny: Path, tmp_path: Path) -> None:
    assert Config().train.early_stopping > 0  # on by default
    run = _flat_run(tiny, tmp_path / "runs", "es", train__early_stopping=2, train__epochs=20)
    mious = [r["val_miou"] for r in run.history]
    assert len(set(mious)) == 1, mious  # the premise: nothing to improve on
    # the first validation sets the best, two more without improvement stop the run
    assert run.summary["epochs"] == 3 and len(run.history) == 3
    assert [r["epoch"] for r in run.history] == [1, 2, 3]
    assert run.summary["steps"] == 3 * 2
    assert len((run.dir / "history.csv").read_text().strip().splitlines()) == 1 + 3


def test_early_stopping_zero_runs_every_epoch(tiny: Path, tmp_path: Path) -> None:
    run = _flat_run(tiny, tmp_path / "runs", "all", train__early_stopping=0, train__epochs=5)
    assert len({r["val_miou"] for r in run.history}) == 1  # as flat as above, yet no stop
    assert run.summary["epochs"] == 5 and [r["epoch"] for r in run.history] == [1, 2, 3, 4, 5]
    assert run.summary["steps"] == 5 * 2


# ----------------------------------------------------------------- optimiser and LR schedule
@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("unet", num_classes=3, weights="none")


def _module(model, strategy_cfg: StrategyConfig, total_steps: int, **optim) -> SegTuneModule:
    cfg = OptimConfig(**{"lr": LR, "weight_decay": 0.05, "warmup_steps": 0, **optim})
    strategy = build_strategy(model, strategy_cfg, cfg.lr)
    loss = build_loss(LossConfig(name="ce"), 3, 255)
    module = SegTuneModule(model, strategy, loss, cfg, num_classes=3, ignore_index=255)
    # configure_optimizers reads only the run length from the trainer
    module.trainer = SimpleNamespace(estimated_stepping_batches=total_steps)
    return module


def _stage(group_name: str) -> int | None:
    base = group_name.removesuffix(".no_decay")
    return None if base == "head" else int(base.split(".")[1])


STRATEGY_LRS = {
    # name: (config, expected lr of encoder stage k of S as a multiple of LR)
    "head": (StrategyConfig(name="head"), lambda k, s: 1.0),
    "full": (StrategyConfig(name="full"), lambda k, s: 1.0),
    "discriminative": (StrategyConfig(name="discriminative", encoder_lr_factor=0.1), lambda k, s: 0.1),
    "discriminative-decay": (
        StrategyConfig(name="discriminative", encoder_lr_factor=0.1, stage_lr_decay=0.5),
        lambda k, s: 0.1 * 0.5 ** (s - 1 - k),
    ),
    "gradual": (StrategyConfig(name="gradual", encoder_lr_factor=0.2), lambda k, s: 0.2),
}


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
@pytest.mark.parametrize("case", list(STRATEGY_LRS))
def test_param_groups_carry_the_strategy_lrs_and_no_decay(unet, case: str, optimizer: str) -> None:
    strategy_cfg, factor = STRATEGY_LRS[case]
    module = _module(unet, strategy_cfg, total_steps=10, optimizer=optimizer)
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    if optimizer == "sgd":
        assert type(opt) is torch.optim.SGD
        assert all(g["momentum"] == 0.9 and g["nesterov"] for g in opt.param_groups)
    else:
        assert type(opt) is torch.optim.AdamW
    assert isinstance(sched["scheduler"], torch.optim.lr_scheduler.LambdaLR)

    s = module.strategy.num_stages
    names = [g["name"] for g in opt.param_groups]
    assert "head" in names and "head.no_decay" in names
    assert {_stage(n) for n in names} == {None, *range(s)}  # every stage has its group(s)
    in_groups = [id(p) for g in opt.param_groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups)) == len(list(unet.parameters()))
    for g in opt.param_groups:
        k = _stage(g["name"])
        expected = LR if k is None else LR * factor(k, s)
        assert g["initial_lr"] == pytest.approx(expected, rel=1e-12), g["name"]
        if g["name"].endswith(".no_decay"):
            assert g["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in g["params"]), g["name"]
        else:
            assert g["weight_decay"] == 0.05 and all(p.ndim >= 2 for p in g["params"]), g["name"]


def _lrs_over_run(module: SegTuneModule, total: int) -> tuple[list[list[float]], list[float]]:
    """LR of every group at each optimiser step 0..total-1, and after the last step."""
    conf = module.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    used = []
    for _ in range(total):
        used.append([g["lr"] for g in opt.param_groups])
        opt.step()  # no gradients: nothing moves, but the scheduler sees a real step
        sched.step()
    return used, [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("warmup", [0, 5])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_lr_schedule_shape(unet, schedule: str, warmup: int) -> None:
    total = 25
    module = _module(unet, StrategyConfig(name="discriminative", encoder_lr_factor=0.1), total,
                     schedule=schedule, warmup_steps=warmup)
    used, after = _lrs_over_run(module, total)
    base = [g["initial_lr"] for g in module.configure_optimizers()["optimizer"].param_groups]
    # every group follows one multiplier: the ratios between groups never change
    mult = [row[0] / base[0] for row in used]
    for row, m in zip(used, mult, strict=True):
        assert row == pytest.approx([b * m for b in base], rel=1e-12)
    assert len({round(b / LR, 12) for b in base}) == 2  # head at LR, encoder at 0.1 LR

    # linear warm-up from 1/warmup to the peak at its last step
    for k in range(warmup):
        assert mult[k] == pytest.approx((k + 1) / warmup, rel=1e-12)
    if warmup:
        assert mult[warmup - 1] == pytest.approx(1.0)
    # then the schedule, from the peak at its first step
    rest = mult[warmup:]
    assert rest[0] == pytest.approx(1.0)
    span = total - warmup
    if schedule == "constant":
        assert rest == pytest.approx([1.0] * span) and after[0] == pytest.approx(base[0])
        return
    assert all(b < a for a, b in zip(rest, rest[1:], strict=False)), rest  # strictly falling
    # the floor (0) is reached exactly when the run ends (the value after the last step)
    assert after == [0.0] * len(after)
    t_mid = (span // 2) / span
    expected_mid = 0.5 * (1 + math.cos(math.pi * t_mid)) if schedule == "cosine" else (1 - t_mid) ** 0.9
    assert rest[span // 2] == pytest.approx(expected_mid, rel=1e-9)
    assert 0 < rest[-1] < 0.1  # the last step trains at a small but non-zero LR


def test_warmup_longer_than_the_run_still_reaches_the_peak(unet) -> None:
    module = _module(unet, StrategyConfig(name="head"), 6, warmup_steps=100, schedule="cosine")
    used, after = _lrs_over_run(module, 6)
    mult = [row[0] / LR for row in used]
    assert mult[:5] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0])  # cut to total - 1 steps
    assert mult[5] == pytest.approx(1.0) and after[0] == 0.0


class _RecordLR(L.Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []  # head LR used at each optimiser step
        self.total = 0
        self.after = float("nan")  # head LR once training ended

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.total = int(trainer.estimated_stepping_batches)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after = trainer.optimizers[0].param_groups[0]["lr"]


def test_training_run_steps_the_schedule_once_per_step_to_its_floor(tiny: Path, tmp_path: Path) -> None:
    rec = _RecordLR()
    run = segtune.train(_cfg(tiny, tmp_path / "runs", "lr", train__epochs=3, optim__warmup_steps=2,
                             train__early_stopping=0), callbacks=[rec])
    assert run.summary["steps"] == 6 == rec.total == len(rec.lrs)  # the schedule spans the run
    peak = LR
    assert rec.lrs[:2] == pytest.approx([peak / 2, peak])
    assert all(b < a for a, b in zip(rec.lrs[2:], rec.lrs[3:], strict=False)), rec.lrs
    assert rec.after == 0.0  # cosine ends at 0 exactly after the last step


# ------------------------------------------------------------------ unsafe --resume checkpoint
class _RunsCode:
    """Unpickling this runs code (writes ``marker``): what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _interrupted_run(data: Path, out: Path) -> Path:
    """A run folder as a killed run leaves it: config.yaml and checkpoints/, no model files."""
    cfg = _cfg(data, out, "victim", train__epochs=2)
    run = out / "victim"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    return run


def _resume_cli(run: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["-q", "train", "--resume", str(run)])  # -q: stderr holds errors only
    return code, capsys.readouterr().err


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny: Path, tmp_path: Path, capsys) -> None:
    run = _interrupted_run(tiny, tmp_path / "runs")
    ckpt = run / "checkpoints" / "last.ckpt"
    marker = tmp_path / "marker"
    torch.save({"epoch": 0, "global_step": 1, "state_dict": {}, "payload": _RunsCode(marker)}, ckpt)
    # the premise: loading this file unsafely really runs its code
    torch.load(ckpt, weights_only=False)
    assert marker.read_text() == "pwned"
    marker.unlink()

    code, err = _resume_cli(run, capsys)
    assert code == 2
    assert not marker.exists()  # never unpickled unsafely
    assert err.count("\n") == 1 and err.startswith("error: "), err  # one line, no traceback
    assert err[:-1].isprintable()  # no terminal escape codes (torch's message has some)
    assert str(ckpt) in err and "not a plain-tensor checkpoint" in err and "delete it" in err
    # nothing was trained or written, the folder is left as it was
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.yaml"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("content", ["list", "garbage"])
def test_resume_refuses_a_foreign_checkpoint_in_one_line(tiny: Path, tmp_path: Path, capsys, content: str) -> None:
    run = _interrupted_run(tiny, tmp_path / "runs")
    ckpt = run / "checkpoints" / "last.ckpt"
    if content == "list":  # loads safely, but is not a checkpoint dict
        torch.save([torch.zeros(2)], ckpt)
    else:
        ckpt.write_bytes(b"\x00not a checkpoint" * 8)
    code, err = _resume_cli(run, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert str(ckpt) in err and "delete it" in err
    assert ("holds a list, not a segtune checkpoint" if content == "list" else "cannot read the checkpoint") in err
