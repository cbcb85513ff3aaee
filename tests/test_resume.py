"""Interruption and exact resume: SIGKILL / SIGINT a training run, resume it, compare bitwise.

An uninterrupted reference run (3 epochs x 4 steps, in this process) is compared with runs
killed in a subprocess (``tests/_seams.py --signal-at`` sends the signal at the start of an
optimiser step, so the point of death is deterministic) and then resumed with
``segtune train --resume RUN``: weights, metrics and history must be identical.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_squares_dataset
from safetensors.torch import load_file

from segtune.cli import main
from segtune.engine.resume import capture_rng, restore_rng

#: runs the CLI with test callbacks injected (SignalAtStep for --signal-at)
_SEAMS = str(Path(__file__).with_name("_seams.py"))


def _train_args(data: Path, out: Path, name: str, workers: int = 0) -> list[str]:
    return [
        "train", str(data), "--out", str(out), "--name", name, "--epochs", "3", "--batch-size", "2",
        "--crop-size", "64", "--no-progress", "--num-workers", str(workers),
        "--set", "train.checkpoint_every=2", "--set", "train.num_overlays=0", "--set", "train.early_stopping=0",
        "--set", "data.scale_min=0.9", "--set", "data.scale_max=1.1",
    ]


def _run_cli(args: list[str], signal_at: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, _SEAMS, "--signal-at", signal_at, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def _history(run: Path) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, runs folder, uninterrupted reference run)."""
    root = tmp_path_factory.mktemp("resume")
    data = make_squares_dataset(root / "data", n_train=8, n_val=2)
    out = root / "runs"
    # in a subprocess like the interrupted runs, so no global torch state of earlier tests
    # (thread count, deterministic flags) can make the reference differ
    r = _run_cli(_train_args(data, out, "ref"), "")
    assert r.returncode == 0, r.stderr[-2000:]
    return data, out, out / "ref"


def _assert_same_as_reference(run: Path, ref: Path) -> None:
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == [], differ[:5]
    ma = json.loads((ref / "metrics.json").read_text())["metrics"]
    mb = json.loads((run / "metrics.json").read_text())["metrics"]
    assert ma["miou"] == mb["miou"] and ma["per_class"] == mb["per_class"]
    hist = _history(run)
    assert [r["epoch"] for r in hist] == ["1", "2", "3"]  # one row per epoch, no duplicates
    assert hist == _history(ref)  # same losses, val metrics and LR per epoch
    leftovers = [p.name for d in (run, run / "checkpoints") for p in d.glob(".*.tmp*")]
    assert leftovers == []


@pytest.mark.parametrize(("workers", "kill_at", "resumes_from"), [(0, 7, 6), (2, 3, 2)])
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(reference, workers: int, kill_at: int, resumes_from: int, capsys) -> None:
    data, out, ref = reference
    name = f"kill{kill_at}-w{workers}"
    p = _run_cli(_train_args(data, out, name, workers), str(kill_at))
    assert p.returncode == -9, p.stderr[-2000:]
    run = out / name
    assert not (run / "model.safetensors").exists() and not (run / "metrics.json").exists()
    assert _step(run / "checkpoints" / "last.ckpt") == resumes_from  # mid-epoch: 4 steps per epoch
    (run / "checkpoints" / ".last.abc123.tmp.ckpt").write_bytes(b"half")  # what a kill mid-save leaves
    capsys.readouterr()

    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert f"after step {resumes_from}" in capsys.readouterr().err
    _assert_same_as_reference(run, ref)

    # a finished run is not trained again
    assert main(["train", "--resume", str(run)]) == 0
    assert "already complete" in capsys.readouterr().err


def test_sigint_saves_checkpoint_prints_hint_and_resumes(reference, capsys) -> None:
    data, out, ref = reference
    run = out / "int8"
    # SIGINT during step 8, the last of epoch 2: the stop waits for the epoch's validation
    p = _run_cli(_train_args(data, out, "int8"), "8:INT")
    assert p.returncode == 130, p.stderr[-2000:]
    last_line = p.stderr.strip().splitlines()[-1]
    assert "stopped by SIGINT at step 8" in last_line and f"segtune train --resume {run}" in last_line
    assert "Traceback" not in p.stderr
    assert _step(run / "checkpoints" / "last.ckpt") == 8
    assert _step(run / "checkpoints" / "best.ckpt") == 8  # epoch 2's validation counted before stopping
    assert [r["epoch"] for r in _history(run)] == ["1", "2"]
    capsys.readouterr()

    # drift: resuming with another architecture or other classes is refused in one line
    cfg_file = run / "config.yaml"
    cfg_text = cfg_file.read_text()
    cfg_file.write_text(cfg_text.replace("arch: unet", "arch: fpn"))
    assert main(["-q", "train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "the architecture changed" in err and err.count("\n") == 1, err
    cfg_file.write_text(cfg_text)
    spec_file = data / "dataset.yaml"
    spec_text = spec_file.read_text()
    try:
        spec_file.write_text(spec_text.replace("classes: [background, square]", "classes: [background, box]"))
        assert main(["-q", "train", "--resume", str(run)]) == 2
        err = capsys.readouterr().err
        assert "classes changed" in err and "[background, square]" in err and err.count("\n") == 1, err
    finally:
        spec_file.write_text(spec_text)

    moved = run.rename(out / "int8-moved")  # a run folder may be moved or copied before resuming
    assert main(["train", "--resume", str(moved), "--no-progress"]) == 0
    _assert_same_as_reference(moved, ref)


def test_moved_run_keeps_best_checkpoint_bookkeeping(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from segtune.engine.resume import _rebase_model_checkpoints

    cb = ModelCheckpoint(dirpath=tmp_path / "new" / "checkpoints", filename="best", monitor="val_miou", mode="max")
    old = str(tmp_path / "old" / "checkpoints")
    ckpt = {"callbacks": {cb.state_key: {
        "dirpath": old, "best_model_score": torch.tensor(0.7), "best_model_path": f"{old}/best.ckpt",
        "kth_best_model_path": f"{old}/best.ckpt", "last_model_path": f"{old}/last.ckpt",
        "best_k_models": {f"{old}/best.ckpt": torch.tensor(0.7)}, "kth_value": torch.tensor(0.7),
    }}}
    _rebase_model_checkpoints(SimpleNamespace(callbacks=[cb]), ckpt)
    cb.load_state_dict(ckpt["callbacks"][cb.state_key])
    assert cb.best_model_score == torch.tensor(0.7)
    assert cb.best_model_path == str(Path(cb.dirpath) / "best.ckpt")
    assert list(cb.best_k_models) == [cb.best_model_path]


def test_sampler_resumes_mid_epoch_and_shards() -> None:
    from segtune.data.datamodule import ResumableSampler

    full = list(ResumableSampler(10, seed=3))
    assert sorted(i for i, _ in full) == list(range(10))
    s = ResumableSampler(10, seed=3)
    s.load_state_dict({"epoch": 0, "start": 4})
    assert list(s) == full[4:] and list(s) == full  # the skip applies to one iteration only
    s.set_epoch(1)
    e1 = list(s)
    assert e1 != full
    other = ResumableSampler(10, seed=3)
    other.set_epoch(1)
    assert list(other) == e1  # the order is a function of (seed, epoch) only
    shards = [list(ResumableSampler(10, seed=3, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(sh) == 4 for sh in shards)
    assert {i for sh in shards for i, _ in sh} == set(range(10))


def test_seeded_sample_is_independent_of_global_rng_and_restores_it(squares: Path) -> None:
    from segtune.data import SegDataset, load_dataset_spec, train_transforms

    spec = load_dataset_spec(squares)
    pairs = sorted(zip(sorted((squares / "train/images").iterdir()), sorted((squares / "train/masks").iterdir()), strict=True))
    ds = SegDataset(pairs, spec, train_transforms(32, (0.5,) * 3, (0.5,) * 3, 255))
    torch.manual_seed(1)
    a = ds[(2, 12345)]
    torch.manual_seed(2)
    np.random.seed(2)
    before = capture_rng()
    b = ds[(2, 12345)]
    after = capture_rng()
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert torch.equal(before["torch"], after["torch"]) and torch.equal(before["numpy"]["keys"], after["numpy"]["keys"])
    assert not torch.equal(ds[(2, 1)]["image"], a["image"])


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    state = capture_rng()
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.save({"rng": state}, tmp_path / "s.ckpt")
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    restore_rng(torch.load(tmp_path / "s.ckpt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]
