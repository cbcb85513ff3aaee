"""Safe loading: tampered model files are detected; pickles that would run code are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import segtune
from segtune.cli import main


def _tiny_run(squares: Path, out: Path) -> Path:
    args = ["train", str(squares), "--out", str(out), "--name", "r", "--max-steps", "1", "--crop-size", "64",
            "--batch-size", "2", "--strategy", "head", "--no-progress", "--set", "train.num_overlays=0"]
    assert main(args) == 0
    return out / "r"


def test_flipped_byte_in_model_file_is_detected(squares: Path, tmp_path: Path, capsys) -> None:
    run = _tiny_run(squares, tmp_path / "runs")
    segtune.load(run)  # intact: loads
    weights = run / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte inside the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(segtune.WeightsError, match="SHA-256"):
        segtune.load(run)
    capsys.readouterr()
    assert main(["predict", str(run), str(squares / "val" / "images"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.safetensors" in err and "Traceback" not in err
    assert not (tmp_path / "p").exists()


class _Evil:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):  # runs on unpickling
        return (Path.touch, (self.sentinel,))


def test_pickle_that_runs_code_is_refused_by_train(squares: Path, tmp_path: Path, capsys) -> None:
    sentinel = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Evil(sentinel)}, evil)
    assert not sentinel.exists()
    rc = main(["train", str(squares), "--weights", str(evil), "--out", str(tmp_path / "runs"), "--max-steps", "1",
               "--crop-size", "64", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "evil.pt" in err and "Traceback" not in err
    assert not sentinel.exists()
