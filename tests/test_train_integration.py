"""End-to-end: train, evaluate, predict, reload, resume; learning and freezing behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segtune
from segtune.cli import main
from segtune.config import Config


def _cfg(data: Path, out: Path, **kw) -> Config:
    cfg = Config()
    cfg.data.root = str(data)
    cfg.data.crop_size = 64
    cfg.data.batch_size = 4
    cfg.data.scale_min, cfg.data.scale_max = 0.9, 1.1
    cfg.train.out = str(out)
    cfg.train.progress = False
    cfg.train.num_overlays = 1
    cfg.train.early_stopping = 0
    cfg.optim.warmup_steps = 2
    for k, v in kw.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    return cfg


def test_full_strategy_learns_two_class_task(squares: Path, tmp_path: Path) -> None:
    cfg = _cfg(squares, tmp_path / "runs", strategy__name="full", train__epochs=8, optim__lr=3e-3, train__name="learn")
    run = segtune.train(cfg)
    fg = run.metrics["per_class"][1]
    assert fg["iou"] > 0.8, run.metrics
    assert run.metrics["miou"] > 0.85
    for f in ("model.safetensors", "model.yaml", "config.yaml", "metrics.json", "history.csv", "curves.png", "per_class_iou.png",
              "confusion_matrix.png"):
        assert (run.dir / f).is_file(), f
    assert list((run.dir / "val_overlays").glob("*.png"))
    # history has one row per epoch, no duplicates
    rows = (run.dir / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 8


def test_head_strategy_keeps_encoder_and_bn_stats_bit_identical(squares: Path, tmp_path: Path) -> None:
    from segtune.models import create_model

    torch.manual_seed(0)
    before = create_model("unet", "tf_efficientnet_lite0", num_classes=2, weights="imagenet")
    cfg = _cfg(squares, tmp_path / "runs", strategy__name="head", train__epochs=2, train__name="head")
    run = segtune.train(cfg)
    after, _ = segtune.engine.run.load_model(run.dir)
    enc_before = before.encoder.state_dict()
    enc_after = after.encoder.state_dict()
    assert enc_before.keys() == enc_after.keys() and enc_before
    changed = [k for k in enc_before if not torch.equal(enc_before[k], enc_after[k])]
    assert changed == [], changed[:5]  # weights AND running_mean/var/num_batches_tracked
    enc_keys = {k for k in before.state_dict() if k.endswith(tuple(enc_before))}
    head_changed = [k for k, v in before.state_dict().items() if k not in enc_keys and not torch.equal(v, after.state_dict()[k])]
    assert head_changed


def test_cpu_run_repeats_exactly_with_seed(squares: Path, tmp_path: Path) -> None:
    a = segtune.train(_cfg(squares, tmp_path / "runs", train__max_steps=4, train__name="a"))
    b = segtune.train(_cfg(squares, tmp_path / "runs", train__max_steps=4, train__name="b"))
    from safetensors.torch import load_file

    sa, sb = load_file(str(a.dir / "model.safetensors")), load_file(str(b.dir / "model.safetensors"))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_refuses_to_overwrite_run(squares: Path, tmp_path: Path) -> None:
    segtune.train(_cfg(squares, tmp_path / "runs", train__max_steps=1, train__name="x"))
    with pytest.raises(segtune.RunError, match="already exists"):
        segtune.train(_cfg(squares, tmp_path / "runs", train__max_steps=1, train__name="x"))


@pytest.mark.realdata
def test_camvid_cli_train_evaluate_predict_reload_resume(camvid_small: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    args = ["train", str(camvid_small), "--out", str(out), "--name", "cv", "--max-steps", "2", "--epochs", "3",
            "--batch-size", "2", "--crop-size", "128", "--no-progress", "--set", "train.num_overlays=1"]
    assert main(args) == 0
    run = out / "cv"
    meta = (run / "model.yaml").read_text()
    assert "Bicyclist" in meta and "sha256" in meta
    m = json.loads((run / "metrics.json").read_text())["metrics"]
    assert 0.0 <= m["miou"] <= 1.0 and len(m["per_class"]) == 11

    assert main(["evaluate", str(run), str(camvid_small)]) == 0
    assert (run / "eval-val" / "metrics.json").is_file()
    assert "Road" in capsys.readouterr().out

    pred_out = tmp_path / "pred"
    assert main(["predict", str(run), str(camvid_small / "val"), "--out", str(pred_out), "--overlay"]) == 0
    masks = sorted(pred_out.glob("*.png"))
    assert len(masks) == 2
    src = sorted((camvid_small / "val").iterdir())[0]
    with Image.open(masks[0]) as im:
        assert im.mode == "P" and im.size == Image.open(src).size
    # refuses to overwrite, resumes with --skip-existing
    assert main(["predict", str(run), str(camvid_small / "val"), "--out", str(pred_out)]) == 2
    assert main(["predict", str(run), str(camvid_small / "val"), "--out", str(pred_out), "--skip-existing"]) == 0

    model = segtune.load(run)
    mask = model.predict(np.asarray(Image.open(src).convert("RGB")))
    assert mask.shape == (360, 480) and mask.max() < 11

    # resume: an interrupted run (no model.yaml yet) continues from last.ckpt to the configured end
    assert (run / "checkpoints" / "last.ckpt").is_file()
    (run / "model.yaml").unlink()
    (run / "metrics.json").unlink()
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("max_steps: 2", "max_steps: 4"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    m2 = json.loads((run / "metrics.json").read_text())
    assert m2["summary"]["steps"] == 4


def test_cli_bad_input_exit_2_no_traceback(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "nope"), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert main(["train", str(tmp_path), "--strategy", "frozen"]) == 2
    assert "choose one of" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "norun"), str(tmp_path)]) == 2


def test_refused_run_leaves_no_folder(squares: Path, tmp_path: Path) -> None:
    (squares / "train" / "masks" / "000.png").write_bytes(b"")  # unreadable mask -> refusal
    cfg = _cfg(squares, tmp_path / "runs", train__max_steps=1, train__name="refused")
    with pytest.raises(segtune.DataError, match="000.png"):
        segtune.train(cfg)
    assert not (tmp_path / "runs" / "refused").exists()


def test_failed_fit_restores_torch_fill_uninitialized_memory(squares: Path, tmp_path: Path, monkeypatch) -> None:
    """segtune turns the flag off during fit; a fit that raises must still give it back."""
    from segtune.engine.module import SegTuneModule

    det = torch.utils.deterministic
    assert det.fill_uninitialized_memory is True  # torch's default

    def boom(self, batch, batch_idx):
        assert det.fill_uninitialized_memory is False  # off while fitting
        raise RuntimeError("boom in training_step")

    monkeypatch.setattr(SegTuneModule, "training_step", boom)
    cfg = _cfg(squares, tmp_path / "runs", strategy__name="head", train__epochs=1, train__name="boom", optim__lr=1e-3)
    with pytest.raises(RuntimeError, match="boom in training_step"):
        segtune.train(cfg)
    assert det.fill_uninitialized_memory is True


def test_max_steps_inside_the_first_epoch_still_records_history_and_curves(squares: Path, tmp_path: Path,
                                                                            capsys) -> None:
    run = segtune.train(_cfg(squares, tmp_path / "runs", train__max_steps=1, train__name="short"))
    assert run.summary["epochs"] == 0 and run.summary["steps"] == 1
    assert len(run.history) == 1 and run.history[0]["val_miou"] == pytest.approx(run.metrics["miou"])
    assert len((run.dir / "history.csv").read_text().strip().splitlines()) == 2
    assert (run.dir / "curves.png").is_file()
    assert "after less than one epoch (1 steps)" in capsys.readouterr().err
