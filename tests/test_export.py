"""``segtune export``: ONNX parity with PyTorch, metadata, INT8, torch-free inference, bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_squares_dataset, save_random_run
from PIL import Image

from segtune.cli import main
from segtune.errors import SegtuneError
from segtune.export import export_onnx
from segtune.export.runtime import OnnxSegmenter

README = Path(__file__).resolve().parents[1] / "README.md"
SRC = Path(__file__).resolve().parents[1] / "src"


def _make_run(root: Path, data: Path, seed: int = 0) -> Path:
    """A run folder with a small random-weight Unet (2 classes) and a config.yaml naming ``data``."""
    run = save_random_run(root / "run", seed=seed,
                          normalization={"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"root": str(data)}, "train": {"seed": 0}}))
    return run


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(run, data, model.onnx): exported once for the module."""
    root = tmp_path_factory.mktemp("export")
    data = make_squares_dataset(root / "squares", n_train=4, n_val=3, size=72)
    run = _make_run(root, data)
    report = export_onnx(run, progress=False)
    assert report.path == run / "model.onnx" and report.path.is_file()
    return run, data, report.path


def _images(folder: Path, n: int = 3) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):  # sizes that are not multiples of 32
        Image.fromarray(rng.integers(0, 255, (45 + 7 * i, 70, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_fp32_parity_dynamic_shapes_and_metadata(exported) -> None:
    run, data, onnx_path = exported
    from segtune.models.modelfile import load_model

    model, meta = load_model(run)
    seg = OnnxSegmenter(onnx_path, threads=1)
    # metadata round trip: everything needed to use the file without the run folder
    assert seg.classes == meta["classes"] and seg.colors == meta["colors"]
    assert seg.mean.tolist() == pytest.approx(meta["normalization"]["mean"])
    assert seg.std.tolist() == pytest.approx(meta["normalization"]["std"])
    assert seg.meta["source_sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert seg.meta["precision"] == "fp32" and seg.meta["num_classes"] == 2
    # dynamic batch and spatial size: two shapes other than the export's, same numbers as PyTorch
    rng = np.random.default_rng(0)
    for n, h, w in ((2, 96, 64), (1, 128, 160)):
        x = rng.standard_normal((n, 3, h, w)).astype(np.float32)
        got = seg.session.run(None, {"image": x})[0]
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        assert got.shape == ref.shape == (n, 2, h, w)
        assert np.abs(got - ref).max() < 1e-3
        assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.999


def test_export_report_from_the_python_call(tmp_path: Path) -> None:
    data = make_squares_dataset(tmp_path / "sq", n_train=3, n_val=2, size=64)
    run = _make_run(tmp_path, data, seed=3)
    r = export_onnx(run, out=tmp_path / "m.onnx", check=data, progress=False)
    assert r.images == 2 and r.agreement >= 0.999 and r.max_abs_diff < 1e-3
    assert r.miou_torch is not None and abs(r.miou_change) < 0.1
    assert r.ms_torch > 0 and r.ms_onnx > 0 and any("agreement" in line for line in r.lines())


def test_predict_with_onnx_matches_the_run_folder(exported, tmp_path: Path, capsys) -> None:
    run, _, onnx_path = exported
    imgs = _images(tmp_path / "imgs")
    assert main(["predict", str(run), str(imgs), "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert main(["predict", str(onnx_path), str(imgs), "--out", str(tmp_path / "b"), "--overlay"]) == 0
    for f in sorted(imgs.iterdir()):
        a = np.asarray(Image.open(tmp_path / "a" / f"{f.stem}.png"))
        b = np.asarray(Image.open(tmp_path / "b" / f"{f.stem}.png"))
        assert a.shape == b.shape == np.asarray(Image.open(f)).shape[:2]
        assert (a == b).mean() >= 0.999  # the stated tolerance (fp32 export)
        assert (tmp_path / "b" / "overlays" / f"{f.stem}.png").is_file()
    # outputs are never replaced without being asked
    assert main(["predict", str(onnx_path), str(imgs), "--out", str(tmp_path / "b")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_int8_calibration_on_a_few_images(exported, tmp_path: Path) -> None:
    import onnx

    run, data, _ = exported
    calib = _images(tmp_path / "calib", n=3)
    r = export_onnx(run, out=tmp_path / "q.onnx", int8=True, calibration=calib, check=data,
                    max_miou_drop=None, progress=False)
    assert r.precision == "int8" and r.path.is_file() and r.float_ops == []
    g = onnx.load(str(r.path)).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    seg = OnnxSegmenter(r.path)
    assert seg.meta["precision"] == "int8" and seg.meta["float_ops"] == []
    assert 0.0 <= r.agreement <= 1.0 and r.ms_onnx > 0
    assert r.path.stat().st_size < (run / "model.onnx").stat().st_size / 2.5  # int8 weights


def _snippet() -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"<!-- deploy-snippet -->\n```python\n(.*?)```", text, re.S)
    assert m, "README: deploy snippet not found"
    return m.group(1)


_NO_TORCH = """
import sys
bad = [m for m in sys.modules if m == "torch" or m.startswith(("torch.", "lightning", "segtune.engine",
       "segtune.models", "segtune.inference", "segmentation_models_pytorch", "timm"))]
assert not bad, bad
print("TORCH-FREE")
"""


def test_readme_snippet_runs_without_torch(exported, tmp_path: Path) -> None:
    _, _, onnx_path = exported
    work = _images(tmp_path / "w", n=1)
    (work / "p0.png").rename(work / "street.png")
    (work / "model.onnx").symlink_to(onnx_path)
    res = subprocess.run([sys.executable, "-c", _snippet() + _NO_TORCH], cwd=work, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "TORCH-FREE" in res.stdout
    mask = np.asarray(Image.open(work / "street_mask.png"))
    assert np.array_equal(mask, OnnxSegmenter(onnx_path).predict(work / "street.png"))


def test_runtime_module_is_torch_free(exported, tmp_path: Path) -> None:
    _, _, onnx_path = exported
    imgs = _images(tmp_path / "imgs", n=2)
    code = (f"from segtune.export.runtime import predict_paths\n"
            f"print(len(predict_paths({str(onnx_path)!r}, {str(imgs)!r}, {str(tmp_path / 'out')!r})))\n" + _NO_TORCH)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split()[:2] == ["2", "TORCH-FREE"]


# ----------------------------------------------------------------------------- bad inputs
def test_not_a_run_folder_exits_2(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.yaml" in err and len(err.strip().splitlines()) == 1
    assert list((tmp_path / "empty").iterdir()) == []


def test_missing_onnx_extra_names_the_install(exported, monkeypatch, tmp_path: Path) -> None:
    run, _, _ = exported
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(SegtuneError, match=r"pip install 'segtune\[export\]'"):
        export_onnx(run, out=tmp_path / "x.onnx", progress=False)
    with pytest.raises(SegtuneError, match="onnxruntime is not installed"):
        OnnxSegmenter(run / "model.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_parity_failure_exits_2_and_leaves_nothing(exported, monkeypatch, tmp_path: Path, capsys) -> None:
    run, _, _ = exported
    import segtune.export.onnx as ex

    real = ex._export_fp32

    def broken(model, meta, path, run_dir):  # exports a model whose weights differ from the run's
        import copy

        other = copy.deepcopy(model)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        real(other, meta, path, run_dir)

    monkeypatch.setattr(ex, "_export_fp32", broken)
    before = sorted(p.name for p in run.iterdir())
    out = tmp_path / "bad.onnx"
    assert main(["export", str(run), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not written" in err and "agree on only" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in run.iterdir()) == before


def test_refusals_exit_2(exported, tmp_path: Path, capsys) -> None:
    run, _, onnx_path = exported
    assert main(["export", str(run), "--no-progress"]) == 2  # model.onnx exists already
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--calibration", str(tmp_path), "--out", str(tmp_path / "c.onnx")]) == 2
    assert "--int8" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "tflite", "--out", str(tmp_path / "c.onnx")]) == 2
    assert "onnx" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "c.txt")]) == 2
    assert ".onnx" in capsys.readouterr().err
    # a missing --check / --calibration folder is named with its flag, before any work
    for flag, extra in (("--check", []), ("--calibration", ["--int8"])):
        assert main(["export", str(run), flag, str(tmp_path / "nope"), *extra, "--out", str(tmp_path / "m.onnx")]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {tmp_path / 'nope'}: not found ({flag} takes") and err.count("\n") == 1
        assert not (tmp_path / "m.onnx").exists()
    # a run folder without config.yaml: its val images are unknown
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.safetensors", "model.yaml"):
        (bare / name).write_bytes((run / name).read_bytes())
    assert main(["export", str(bare), "--no-progress"]) == 2
    assert "pass --check DATA" in capsys.readouterr().err and not (bare / "model.onnx").exists()
    # predict: a foreign ONNX file without segtune metadata, and a missing one
    import onnx

    m = onnx.load(str(onnx_path))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "foreign.onnx"))
    imgs = _images(tmp_path / "imgs", n=1)
    assert main(["predict", str(tmp_path / "foreign.onnx"), str(imgs), "--out", str(tmp_path / "o")]) == 2
    assert "segtune metadata" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.onnx"), str(imgs), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert json.loads(json.dumps(OnnxSegmenter(onnx_path).meta))["segtune_format"] == 1
