"""Shared fixtures: tiny generated data sets and a few CamVid images (skipped without ../shared).

Real-data tests carry the ``realdata`` marker (tests using the ``camvid_small`` fixture get it
automatically). Without ``../shared/data/camvid`` they skip; when the data is there, a skipped
``realdata`` test is reported as a failure, so CI cannot pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"]


BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (not a package) as module ``_bench_<name>``, with
    ``benchmarks/`` on ``sys.path`` for its ``_common`` import."""
    import importlib.util
    import sys

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def save_random_run(run: Path, classes: tuple[str, ...] = ("background", "square"), seed: int = 0,
                    normalization: dict | None = None) -> Path:
    """A run folder holding a random-weight Unet + Lite0 with ``len(classes)`` classes (model files
    only, no config.yaml): a fast stand-in for a trained run in inference and export tests."""
    from segtune.models import create_model
    from segtune.models.modelfile import save_model

    torch.manual_seed(seed)
    model = create_model("unet", "tf_efficientnet_lite0", num_classes=len(classes), weights="none")
    colors = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]][: len(classes)]
    meta = {"classes": list(classes), "colors": colors, "ignore_index": 255,
            "normalization": normalization or {"mean": list(model.mean), "std": list(model.std)}}
    save_model(run, model, meta)
    return run


def make_squares_dataset(root: Path, n_train: int = 12, n_val: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Two classes: bright textured squares (1) on dark noise (0); writes dataset.yaml."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            mask = np.zeros((size, size), np.uint8)
            for _ in range(2):
                s = int(rng.integers(size // 6, size // 3))
                y, x = rng.integers(0, size - s, 2)
                mask[y : y + s, x : x + s] = 1
            img[mask == 1] = rng.integers(150, 255, (int(mask.sum()), 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    (root / "dataset.yaml").write_text(
        "name: squares\nclasses: [background, square]\ncolors: [[0, 0, 0], [255, 0, 0]]\n"
        "ignore_index: 255\nsplits:\n  train: {images: train/images, masks: train/masks}\n"
        "  val: {images: val/images, masks: val/masks}\n"
    )
    return root


# ------------------------------------------------------------------ real-data guard
REALDATA_FIXTURES = ("camvid_small",)


def _realdata_skip_is_failure(camvid_exists: bool, skipped: bool, realdata: bool) -> bool:
    """A test marked ``realdata`` that skipped although the real data is present must fail."""
    return camvid_exists and skipped and realdata


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a real-data fixture ``realdata`` (besides the explicit marks)."""
    for item in items:
        if any(f in getattr(item, "fixturenames", ()) for f in REALDATA_FIXTURES):
            item.add_marker(pytest.mark.realdata)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Turn the skip of a ``realdata`` test into a failure when ../shared/data/camvid exists.

    Covers skips in setup (``skipif`` marks, a fixture calling ``pytest.skip``; pytest lists
    these as errors) and in the test body (listed as failures); either way the session fails.
    An expected failure (``xfail``) is not a skip.
    """
    outcome = yield
    rep = outcome.get_result()
    skipped = rep.skipped and not hasattr(rep, "wasxfail")
    realdata = item.get_closest_marker("realdata") is not None
    if _realdata_skip_is_failure(CAMVID.is_dir(), skipped, realdata):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = str(reason).removeprefix("Skipped: ")
        rep.outcome = "failed"
        rep.longrepr = (
            f"realdata test skipped although {CAMVID} exists ({reason}); real-data tests must "
            "run when the data is present: fix the test or the data, do not skip"
        )


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never touch the network: weights not in a cache fail at once with segtune's offline
    error instead of trying huggingface.co (subprocesses started by a test inherit it)."""
    monkeypatch.setenv("SEGTUNE_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _log_not_quiet():
    """Every test starts with info lines shown (benchmark mains called by tests set quiet mode)."""
    from segtune import _log

    _log.set_quiet(False)
    yield
    _log.set_quiet(False)


@pytest.fixture
def squares(tmp_path: Path) -> Path:
    return make_squares_dataset(tmp_path / "squares")


@pytest.fixture
def camvid_small(tmp_path: Path) -> Path:
    """4 train + 2 val CamVid images (symlinked) with a dataset.yaml."""
    if not CAMVID.is_dir():
        pytest.skip("../shared/data/camvid not present")
    root = tmp_path / "camvid_small"
    for split, ann, n in (("train", "trainannot", 4), ("val", "valannot", 2)):
        names = sorted(os.listdir(CAMVID / split))[:n]
        for folder in (split, ann):
            (root / folder).mkdir(parents=True)
            for name in names:
                (root / folder / name).symlink_to(CAMVID / folder / name)
    colors = "[[128,128,128],[128,0,0],[192,192,128],[128,64,128],[60,40,222],[128,128,0],[192,128,128],[64,64,128],[64,0,128],[64,64,0],[0,128,192]]"
    (root / "dataset.yaml").write_text(
        f"name: camvid-small\nclasses: [{', '.join(CAMVID_CLASSES)}]\ncolors: {colors}\nignore_index: 11\n"
        "mask_format: index\nsplits:\n  train: {images: train, masks: trainannot}\n  val: {images: val, masks: valannot}\n"
    )
    return root
