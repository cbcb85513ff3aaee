"""Inference quality: TTA (flip, scales), Gaussian tile blending, probability maps, area CSV,
and evaluate's extras (TTA gain, confusion-matrix plot, single-split folders)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import save_random_run
from PIL import Image

from segtune.cli import main
from segtune.errors import ConfigError, DataError
from segtune.inference import Predictor
from segtune.inference.tiling import blend_tiles, blended_bands, gaussian_weights, tile_grid
from segtune.inference.tta import TTA, parse_tta, tta_probabilities


class Lopsided(torch.nn.Module):
    """3 -> 3 channels with a horizontal ramp added: not flip-equivariant, any input size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)  # every instance the same
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)
        torch.nn.init.normal_(self.conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(-2, 2, x.shape[-1]).view(1, 1, 1, -1)
        return self.conv(x) + ramp * torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)


class Identity3(torch.nn.Module):
    """Logits = the normalised input itself (3 classes); a dummy parameter for ``.to``."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.p


META3 = {"classes": ["a", "b", "c"], "colors": [[0, 0, 0], [255, 0, 0], [0, 255, 0]], "ignore_index": 255,
         "normalization": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}}


# ------------------------------------------------------------------ TTA
def test_parse_tta_specs_and_errors() -> None:
    assert parse_tta("flip") == TTA(flip=True)
    assert parse_tta("scales=0.75,1,1.25") == TTA(scales=(0.75, 1.0, 1.25))
    both = parse_tta("flip,scales=0.5,1")
    assert both == TTA(flip=True, scales=(0.5, 1.0)) and len(both.views()) == 4
    assert both.views()[0] == (1.0, False) and str(both) == "flip,scales=0.5,1"
    assert parse_tta("scales=0.5,1,flip") == both  # flip may follow the scales too
    assert parse_tta(None) is None and parse_tta("none") is None
    for bad in ("mirror", "scales=", "scales=a,1", "scales=0,1", "flip,scales=9", "scales=flip"):
        with pytest.raises(ConfigError, match="--tta"):
            parse_tta(bad)


def test_flip_tta_is_the_exact_average_of_both_passes() -> None:
    model = Lopsided().eval()
    x = torch.randn(2, 3, 37, 53)
    with torch.no_grad():
        plain = model(x).softmax(1)
        mirrored = model(x.flip(-1)).softmax(1).flip(-1)
        got = tta_probabilities(model, x, TTA(flip=True))
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # the model really is not flip-equivariant
    torch.testing.assert_close(got, (plain + mirrored) / 2, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 37, 53))


def test_scales_tta_maps_every_view_back_to_the_input_grid() -> None:
    model = Lopsided().eval()
    x = torch.randn(1, 3, 41, 30)
    got = tta_probabilities(model, x, TTA(scales=(0.5, 1.0)))
    assert got.shape == (1, 3, 41, 30)
    with torch.no_grad():
        small = F.interpolate(x, size=(20, 15), mode="bilinear", align_corners=False)  # round(41*.5)=20
        back = F.interpolate(model(small).softmax(1), size=(41, 30), mode="bilinear", align_corners=False)
        want = (model(x).softmax(1) + back) / 2
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_predictor_tta_average_and_mask_agree() -> None:
    image = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    plain = Predictor(Lopsided(), META3, device="cpu")
    tta = Predictor(Lopsided(), META3, device="cpu", tta="flip")
    p = plain.predict_proba(image)
    p_flip = plain.predict_proba(np.ascontiguousarray(image[:, ::-1])).flip(-1)
    torch.testing.assert_close(tta.predict_proba(image), (p + p_flip) / 2, rtol=0, atol=1e-6)
    assert np.array_equal(tta.predict(image), tta.predict_proba(image).argmax(0).numpy())
    assert not np.array_equal(tta.predict(image), plain.predict(image))


# ------------------------------------------------------------------ tiling
@pytest.mark.parametrize("blend", ["gaussian", "uniform"])
@pytest.mark.parametrize("shape", [(150, 230), (64, 300), (97, 64), (40, 40)])
def test_blending_reassembles_the_input_exactly(blend: str, shape: tuple[int, int]) -> None:
    target = torch.rand(3, *shape)
    out = blend_tiles(lambda y0, y1, x0, x1: target[:, y0:y1, x0:x1], *shape, tile=64, blend=blend)
    torch.testing.assert_close(out, target, rtol=1e-6, atol=1e-6)


def test_gaussian_weights_peak_in_the_centre_and_never_vanish() -> None:
    g = gaussian_weights(64, 32)
    assert g.shape == (1, 64, 32) and float(g.min()) > 0
    assert float(g[0, 31:33, 15:17].min()) > float(g[0, 0, 0]) * 1000


def test_blended_bands_stream_with_bounded_memory() -> None:
    h, w, tile = 700, 90, 64
    target = torch.rand(2, h, w)
    calls: list[int] = []

    def tile_fn(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        calls.append(y0)
        return target[:, y0:y1, x0:x1]

    ys, xs = tile_grid(h, w, tile)
    bands = []
    for row0, band in blended_bands(tile_fn, h, w, tile):
        # a band is handed out as soon as its tile row is done, never more than a tile tall
        assert band.shape[1] <= tile and len(calls) == len(xs) * (len(bands) + 1)
        bands.append((row0, band.shape[1]))
    assert len(bands) == len(ys) and bands[0][0] == 0
    assert all(a + n == b for (a, n), (b, _) in zip(bands, bands[1:], strict=False))
    assert bands[-1][0] + bands[-1][1] == h


def test_predictor_tiles_reassemble_an_identity_model() -> None:
    image = np.random.default_rng(2).integers(0, 255, (150, 230, 3), dtype=np.uint8)
    whole = Predictor(Identity3(), META3, device="cpu").predict_proba(image)
    tiled_pred = Predictor(Identity3(), META3, device="cpu", tile_size=64, tile_pixels=1000)
    tiled = tiled_pred.predict_proba(image)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)
    assert np.array_equal(tiled_pred.predict(image), tiled.argmax(0).numpy())
    with pytest.raises(ConfigError, match="blend"):
        Predictor(Identity3(), META3, device="cpu", blend="smooth")


# ------------------------------------------------------------------ predict outputs
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_run(tmp_path_factory.mktemp("run"))


def test_probability_maps_and_areas_match_the_masks(tiny_run: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for i, size in enumerate([(40, 56), (33, 70)]):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"im{i}.png")
    out, csv_path = tmp_path / "out", tmp_path / "areas.csv"
    assert main(["predict", str(tiny_run), str(tmp_path / "imgs"), "--out", str(out), "--device", "cpu",
                 "--probabilities", "--areas", str(csv_path), "--tta", "flip"]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["class"] for r in rows] == ["background", "square"] * 2
    for i in range(2):
        mask = np.asarray(Image.open(out / f"im{i}.png"))
        maps = np.stack([np.asarray(Image.open(out / "probabilities" / f"im{i}" / f"{k:02d}_{c}.png"))
                         for k, c in enumerate(["background", "square"])])
        assert maps.dtype == np.uint8 and maps.shape == (2, *mask.shape)
        # the mask's class has the largest probability at every pixel; two classes sum to ~255
        assert np.array_equal(np.take_along_axis(maps, mask[None].astype(np.int64), 0)[0], maps.max(0))
        assert np.abs(maps.astype(int).sum(0) - 255).max() <= 1
        mine = [r for r in rows if r["image"] == f"im{i}.png"]
        counts = np.bincount(mask.ravel(), minlength=2)
        assert [int(r["pixels"]) for r in mine] == counts.tolist()
        assert sum(float(r["fraction"]) for r in mine) == pytest.approx(1.0, abs=1e-5)
    # an existing CSV is not replaced without being asked; --skip-existing recounts from the masks
    assert main(["predict", str(tiny_run), str(tmp_path / "imgs"), "--out", str(tmp_path / "o2"),
                 "--areas", str(csv_path)]) == 2
    csv_path.unlink()
    assert main(["predict", str(tiny_run), str(tmp_path / "imgs"), "--out", str(out), "--skip-existing",
                 "--areas", str(csv_path)]) == 0
    assert list(csv.DictReader(csv_path.open())) == rows


# ------------------------------------------------------------------ evaluate
def _single_split_folder(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros((64, 64), np.uint8)
        mask[10:40, 20:50] = 1
        img = rng.integers(0, 90, (64, 64, 3), dtype=np.uint8)
        img[mask == 1] = 200
        Image.fromarray(img).save(root / "images" / f"t{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"t{i}.png")
    return root


def test_evaluate_single_split_folder_tta_gain_and_confusion_plot(tiny_run: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import segtune

    data = _single_split_folder(tmp_path / "held_out")
    out = tmp_path / "eval"
    m = segtune.evaluate(tiny_run, data, out=out, tta="flip", progress=False, device="cpu")
    assert m["split"] == "train"  # the only split, used without --split
    assert "single split" in capsys.readouterr().err
    t = m["tta"]
    assert t["views"] == 2 and t["miou"] == m["miou"] and t["miou_plain"] == m["plain"]["miou"]
    assert t["gain_miou"] == pytest.approx(t["miou"] - t["miou_plain"])
    plain = segtune.evaluate(tiny_run, data, out=tmp_path / "plain", progress=False, device="cpu")
    assert plain["miou"] == pytest.approx(t["miou_plain"], abs=1e-9) and "tta" not in plain
    png = out / "confusion_matrix.png"
    assert png.is_file() and Image.open(png).size[0] > 300
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["summary"]["split"] == "train" and saved["summary"]["tta"] == "flip"
    default = segtune.evaluate(tiny_run, data, progress=False, device="cpu")  # named after the folder
    assert Path(default["files"][0]) == tiny_run / "eval-held_out" / "metrics.json"
    with pytest.raises(DataError, match="no 'val' split"):
        segtune.evaluate(tiny_run, data, split="val", out=tmp_path / "x", progress=False)


def test_cli_evaluate_prints_tta_gain(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _single_split_folder(tmp_path / "d", n=2)
    assert main(["evaluate", str(tiny_run), str(data), "--out", str(tmp_path / "e"), "--device", "cpu",
                 "--tta", "flip,scales=0.5,1"]) == 0
    text = capsys.readouterr().out
    assert "TTA flip,scales=0.5,1 (4 views): mIoU" in text and "points)" in text
    assert "confusion_matrix.png" in text
    assert main(["evaluate", str(tiny_run), str(data), "--tta", "rotate"]) == 2
    assert capsys.readouterr().err.startswith("error: --tta rotate")


def test_choose_split_rule(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from segtune.engine.evaluate import choose_split

    def spec(*names: str) -> SimpleNamespace:
        return SimpleNamespace(splits={n: SimpleNamespace(images=tmp_path / n) for n in names})

    assert choose_split(spec("train", "val", "test"), None, "d") == "val"
    assert choose_split(spec("train"), None, "d") == "train"  # single split: scored whole
    assert choose_split(spec("train", "test"), None, "d") == "test"
    assert choose_split(spec("train", "val"), "train", "d") == "train"  # asked: always honoured
    with pytest.raises(DataError, match="available: train, val"):
        choose_split(spec("train", "val"), "test", "d")


def test_evaluate_folder_without_yaml_uses_the_runs_classes(tmp_path: Path) -> None:
    """A held-out images/ + masks/ folder with no dataset.yaml is read with the model's classes and
    ignore value, even when some class (or the ignore value) makes mask scanning guess other classes."""
    import segtune
    from segtune.engine.run import save_model
    from segtune.models import create_model

    run = tmp_path / "run3"
    model = create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights="none")
    meta = {"classes": ["sky", "road", "car"], "colors": None, "ignore_index": 3,
            "normalization": {"mean": list(model.mean), "std": list(model.std)}}
    save_model(run, model, meta)
    data = _single_split_folder(tmp_path / "held_out", n=2)
    for m in (data / "masks").iterdir():  # values 0, 1 and the ignore value 3; class 2 absent
        a = np.asarray(Image.open(m)).copy()
        a[:5] = 3
        Image.fromarray(a).save(m)
    res = segtune.evaluate(run, data, out=tmp_path / "e", progress=False, device="cpu")
    assert [r["name"] for r in res["per_class"]] == ["sky", "road", "car"]
    assert res["split"] == "train"


def test_predict_areas_naming_a_folder_is_one_line_and_writes_nothing(tiny_run: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    out = tmp_path / "out"
    for areas in (out, tmp_path / "imgs"):  # the --out folder itself, or any existing folder
        assert main(["predict", str(tiny_run), str(tmp_path / "imgs"), "--out", str(out),
                     "--areas", str(areas), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {areas}: is a folder") and err.count("\n") == 1
        assert not out.exists() and sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["a.png"]


@pytest.mark.parametrize("size", ["0", "10", "100"])
def test_predict_tile_size_not_a_multiple_of_32_is_one_line(size: str, tiny_run: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "imgs" / "a.png")
    out = tmp_path / "out"
    assert main(["predict", str(tiny_run), str(tmp_path / "imgs"), "--out", str(out), "--tile-size", size]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --tile-size {size}: must be a positive multiple of 32 (e.g. 512 or 1024)\n"
    assert not out.exists()
