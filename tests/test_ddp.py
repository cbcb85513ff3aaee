"""Data-parallel training: 2 CPU processes (gloo) through the CLI, plus the DDP helpers.

The end-to-end tests start ``python -m segtune.cli train ... --accelerator cpu --devices 2``
in a subprocess (Lightning launches the second rank by re-running the command; the last one
starts both ranks itself with Slurm's variables, as ``srun`` does) and use the
``tests/_seams.py --dump-ranks`` callback: every rank writes its final weights and the validation
metrics it computed. 15-30 s each on 2 shared CPU cores.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_squares_dataset
from PIL import Image
from safetensors.torch import load_file

import segtune
from segtune.config import Config
from segtune.engine.distributed import (
    RUN_DIR_ENV,
    TimmSyncBatchNorm,
    check_distributed_config,
    ddp_summary,
    launch_rank,
    lr_factor,
)
from segtune.errors import ConfigError

N_VAL = 5  # odd on purpose: Lightning's default sampler would score one image twice


def _train_ddp(data: Path, out: Path, dump: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop(RUN_DIR_ENV, None)
    cmd = [
        sys.executable, str(Path(__file__).with_name("_seams.py")), "--dump-ranks", str(dump), "train", str(data), "--accelerator", "cpu", "--devices", "2",
        "--batch-size", "2", "--crop-size", "64", "--out", str(out), "--no-progress",
        "--set", "data.scale_min=0.9", "--set", "data.scale_max=1.1", "--set", "train.num_overlays=1",
        "--set", "data.val_batch_size=1", "--set", "train.early_stopping=0", *extra,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _ranks(dump: Path) -> tuple[list[dict[str, torch.Tensor]], list[dict]]:
    weights = [load_file(str(dump / f"rank{r}.safetensors")) for r in (0, 1)]
    infos = [json.loads((dump / f"rank{r}.json").read_text()) for r in (0, 1)]
    return weights, infos


def _labelled_pixels(data: Path) -> int:
    return sum(int((np.asarray(Image.open(p)) != 255).sum()) for p in sorted((data / "val" / "masks").glob("*.png")))


def test_ddp_two_cpu_ranks_identical_weights_and_summed_metrics(tmp_path: Path) -> None:
    data = make_squares_dataset(tmp_path / "sq", n_train=12, n_val=N_VAL)
    out, dump = tmp_path / "runs", tmp_path / "dump"
    # 12 train images / (2 ranks x batch 2) = 3 steps = one epoch; partial freezes 2 encoder stages
    proc = _train_ddp(data, out, dump, "--max-steps", "3", "--strategy", "partial", "--name", "ddp")
    assert "DDP: 2 processes x batch 2 = global batch 4; LR scaling rule: none" in proc.stderr
    assert proc.stdout.count("val mIoU") == 1, proc.stdout  # only rank 0 reports
    run = out / "ddp"
    assert sorted(p.name for p in out.iterdir()) == ["ddp"]  # rank 1 created no folder of its own

    (w0, w1), (i0, i1) = _ranks(dump)
    assert {i0["rank"], i1["rank"]} == {0, 1} and i0["world_size"] == 2
    assert w0.keys() == w1.keys() and w0
    differ = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert not differ, differ[:5]  # parameters and BatchNorm buffers alike

    # the confusion matrix is summed over ranks (3 + 2 images), not averaged, no image repeated
    total = _labelled_pixels(data)
    assert total == N_VAL * 64 * 64
    for info in (i0, i1):
        assert info["metrics"]["num_pixels"] == total
    assert i0["metrics"]["miou"] == i1["metrics"]["miou"]

    # rank 0 saved the same weights (one validation, so best = last) and its logged val mIoU
    # is the single-process evaluation of those weights on the whole val set
    saved = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(saved[k], w0[k]) for k in w0)
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert len(rows) == 1 and int(rows[0]["step"]) == 3
    logged = float(rows[0]["val_miou"])
    assert logged == pytest.approx(i0["metrics"]["miou"], abs=1e-12)
    single = segtune.evaluate(run, data, batch_size=1, progress=False, out=tmp_path / "eval")
    assert single["num_pixels"] == total
    assert single["miou"] == pytest.approx(logged, abs=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["metrics"]["num_pixels"] == total and metrics["summary"]["processes"] == 2


def test_ddp_gradual_unfreezing_stays_in_sync(tmp_path: Path) -> None:
    from segtune.models import create_model

    data = make_squares_dataset(tmp_path / "sq", n_train=4, n_val=2)
    out, dump = tmp_path / "runs", tmp_path / "dump"
    # 1 step per epoch; epoch 0 head only, then the deepest stage, then the next one
    _train_ddp(data, out, dump, "--epochs", "3", "--strategy", "gradual", "--name", "grad",
               "--set", "strategy.head_epochs=1")
    (w0, w1), _ = _ranks(dump)
    differ = [k for k in w0 if not torch.equal(w0[k], w1[k])]
    assert not differ, differ[:5]
    ref = create_model("unet", "tf_efficientnet_lite0", num_classes=2, weights="imagenet")
    init = ref.state_dict()
    changed = []
    for names in ref.stage_module_names():
        keys = [k for k in init if any(k.startswith(n + ".") for n in names)]
        changed.append(sum(not torch.equal(init[k], w0[k]) for k in keys))
    s = len(changed)
    assert changed[: s - 2] == [0] * (s - 2), changed  # still frozen: bit-identical, BN stats too
    assert all(changed[s - 2 :]), changed  # unfrozen in epochs 1 and 2: trained on both ranks


def test_ddp_started_like_srun_shares_one_run_folder(tmp_path: Path) -> None:
    """Two processes started at once with Slurm's variables, as `srun` does (no Slurm needed)."""
    data = make_squares_dataset(tmp_path / "sq", n_train=8, n_val=2)
    out, dump = tmp_path / "runs", tmp_path / "dump"
    procs = []
    for r in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", SLURM_NTASKS="2",
                   SLURM_NTASKS_PER_NODE="2", SLURM_PROCID=str(r), SLURM_LOCALID=str(r), SLURM_NODEID="0",
                   SLURM_NNODES="1", SLURM_NODELIST="localhost", SLURM_JOB_ID=str(20000 + os.getpid() % 9000),
                   SLURM_JOB_NAME="segtune")
        for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_PORT", RUN_DIR_ENV):
            env.pop(k, None)
        cmd = [sys.executable, str(Path(__file__).with_name("_seams.py")), "--dump-ranks", str(dump), "train",
               str(data), "--accelerator", "cpu", "--devices", "2", "--max-steps", "2", "--batch-size", "2", "--crop-size", "64", "--out", str(out), "--name", "sl",
               "--no-progress", "--set", "train.num_overlays=0", "--set", "train.early_stopping=0"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=180) for p in procs]
    for p, (so, se) in zip(procs, results, strict=True):
        assert p.returncode == 0, so[-2000:] + se[-4000:]
    assert "val mIoU" in results[0][0] and results[1][0] == ""  # rank 1 prints nothing
    assert sorted(q.name for q in out.iterdir()) == ["sl"] and (out / "sl" / "model.safetensors").is_file()
    (w0, w1), _ = _ranks(dump)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)


# ------------------------------------------------------------------ helpers, no processes
def test_launch_rank_from_launcher_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "WORLD_SIZE",
              "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_PROCID", "SLURM_JOB_NAME", "LSB_JOBID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert launch_rank(4) == 0
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning-launched child on the second machine
    monkeypatch.setenv("NODE_RANK", "1")
    assert launch_rank(4) == 5
    monkeypatch.setenv("SLURM_NTASKS", "8")  # srun-started task
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_PROCID", "6")
    monkeypatch.setenv("SLURM_JOB_NAME", "seg")
    assert launch_rank(4) == 6


def test_lr_scaling_rule_and_summary_line() -> None:
    assert lr_factor("none", 8) == 1 and lr_factor("linear", 8) == 8 and lr_factor("sqrt", 4) == 2
    line = ddp_summary(4, 8, 1e-3, "none")
    assert line.startswith("DDP: 4 processes x batch 8 = global batch 32; LR scaling rule: none")
    assert "linear -> 0.004" in line and "sqrt -> 0.002" in line
    assert "= 0.002" in ddp_summary(4, 8, 1e-3, "sqrt")
    with pytest.raises(ConfigError, match="lr_scaling"):
        Config.from_dict({"optim": {"lr_scaling": "cubic"}}).validate()
    with pytest.raises(ConfigError, match="num_nodes"):
        Config.from_dict({"train": {"num_nodes": 0}}).validate()


def test_sync_bn_refused_on_cpu_and_timm_conversion_round_trips() -> None:
    from timm.layers.norm_act import BatchNormAct2d, SyncBatchNormAct

    from segtune.models import create_model

    cfg = Config.from_dict({"train": {"devices": 2, "accelerator": "cpu", "sync_batchnorm": True}})
    with pytest.raises(ConfigError, match="SyncBatchNorm needs GPUs"):
        check_distributed_config(cfg)

    torch.manual_seed(0)
    model = create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights="none").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    n_act = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    plugin = TimmSyncBatchNorm()
    synced = plugin.apply(model)
    assert sum(isinstance(m, SyncBatchNormAct) for m in synced.modules()) == n_act > 0
    assert not any(type(m) is torch.nn.BatchNorm2d for m in synced.modules())
    with torch.no_grad():  # the activation of BatchNormAct2d survived the conversion
        assert torch.allclose(synced(x), ref, atol=1e-6)
    back = plugin.revert(synced)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in back.modules())
    assert sum(isinstance(m, BatchNormAct2d) for m in back.modules()) == n_act
    with torch.no_grad():
        assert torch.allclose(back(x), ref, atol=1e-6)
    fresh = create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights="none")
    assert fresh.state_dict().keys() == back.state_dict().keys()
