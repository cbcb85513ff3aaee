"""Streaming prediction: sharded folders (``--shard I/N``) and banded tiling of large images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import save_random_run
from PIL import Image

from segtune.cli import main
from segtune.errors import ConfigError
from segtune.inference.predictor import Predictor, parse_shard, shard_files


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_run(tmp_path_factory.mktemp("run"), classes=("bg", "fg"))


def _images(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i in range(n):
        p = folder / ("sub" if i % 3 == 0 else ".") / f"img_{i:02d}.png"
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(p)
        paths.append(p.resolve())
    return paths


def test_parse_shard() -> None:
    assert parse_shard("0/4") == (0, 4) and parse_shard(" 3/4 ") == (3, 4)
    for bad in ("4/4", "-1/4", "1/0", "1", "a/b", "1/2/3"):
        with pytest.raises(ConfigError, match="0-based"):
            parse_shard(bad)


def test_shards_are_disjoint_and_cover_everything() -> None:
    files = [Path(f"/d/{c}.png") for c in "qwertyuiopasd"]
    for n in (1, 2, 3, 5, 20):
        shards = [shard_files(files, (i, n)) for i in range(n)]
        flat = [f for s in shards for f in s]
        assert sorted(flat) == sorted(files) and len(flat) == len(set(flat))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard_files(list(reversed(files)), (0, 3)) == shard_files(files, (0, 3))  # order-free


def test_predict_paths_shards_write_disjoint_masks_that_cover_the_folder(tiny_run: Path, tmp_path: Path) -> None:
    images = _images(tmp_path / "imgs", 7)
    pred = Predictor.from_run(tiny_run, device="cpu")
    out = tmp_path / "masks"
    a = pred.predict_paths(tmp_path / "imgs", out, shard=(0, 2), progress=False)
    b = pred.predict_paths(tmp_path / "imgs", out, shard=(1, 2), progress=False)  # same folder, no clash
    assert len(a) == 4 and len(b) == 3
    assert not {p.name for p in a} & {p.name for p in b}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"{p.stem}.png" for p in images)
    m = np.asarray(Image.open(out / "img_00.png"))
    assert m.shape == (40, 56)


def test_cli_predict_shard(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _images(tmp_path / "imgs", 5)
    out = tmp_path / "masks"
    assert main(["predict", str(tiny_run), str(tmp_path / "imgs"), "--out", str(out), "--device", "cpu",
                 "--shard", "1/2"]) == 0
    assert "wrote 2 mask(s)" in capsys.readouterr().out
    assert main(["predict", str(tiny_run), str(tmp_path / "imgs"), "--out", str(out), "--shard", "2/2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --shard 2/2") and "Traceback" not in err


@pytest.mark.parametrize("shape", [(150, 230), (64, 300), (97, 64)])
def test_banded_tiled_predict_equals_argmax_of_full_probabilities(tiny_run: Path, shape: tuple[int, int]) -> None:
    pred = Predictor.from_run(tiny_run, device="cpu", tile_size=64, tile_pixels=1000)
    img = np.random.default_rng(1).integers(0, 255, (*shape, 3), dtype=np.uint8)
    ys, xs = pred._tile_grid(*shape)
    assert len(ys) * len(xs) > 1  # really tiled, with overlaps
    mask = pred.predict(img)
    assert mask.dtype == np.int64 and mask.shape == shape
    assert len(np.unique(mask)) == 2  # a real decision, not one class everywhere
    assert np.array_equal(mask, pred.predict_proba(img).argmax(0).numpy())
    small = Predictor.from_run(tiny_run, device="cpu")  # untiled path agrees with itself too
    assert np.array_equal(small.predict(img), small.predict_proba(img).argmax(0).numpy())
