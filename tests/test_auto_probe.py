"""auto decides from the data: its decision changes when the number of images, their size or the
domain shift changes (generated data and tiny models, fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segtune.config import Config
from segtune.strategies import auto
from segtune.strategies.auto import (
    CROP,
    SHIFT_THRESHOLD,
    choose_defaults,
    choose_shape,
    resolve_auto,
)
from segtune.strategies.probe import DataProbe, bn_shift, probe_data


def _calibrated_net(seed: int = 0) -> nn.Module:
    """conv -> BN -> ReLU -> conv -> BN whose running statistics are those of N(0, 1) inputs."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: the exact statistics of what it saw
    net.train()
    with torch.no_grad():
        for _ in range(20):
            net(torch.randn(4, 3, 32, 32))
    return net.eval()


def test_bn_shift_grows_with_the_distance_from_the_stored_statistics() -> None:
    net = _calibrated_net()
    g = torch.Generator().manual_seed(1)
    same = [torch.randn(3, 32, 32, generator=g) for _ in range(4)]
    gray = [torch.randn(1, 32, 32, generator=g).expand(3, 32, 32) * 0.3 + 1.5 for _ in range(4)]
    s_same, s_far = bn_shift(net, same), bn_shift(net, gray)
    assert s_same is not None and s_far is not None
    assert 0 <= s_same < 0.05 < s_far and s_far > 10 * s_same
    assert not net.training  # mode restored
    assert bn_shift(nn.Conv2d(3, 3, 1), same) is None  # no BatchNorm: not measured


def test_shape_follows_the_image_sizes() -> None:
    small = choose_shape([(256, 192)] * 5)  # the case: a 384 crop would pad to ~3x the area
    assert (small.augment, small.crop_size) == ("flip", None) and "3.0x" in small.why
    big = choose_shape([(1024, 768)] * 5)
    assert (big.augment, big.crop_size) == ("full", CROP)
    narrow = choose_shape([(2000, 100)] * 5)  # too large for whole images, short side 100: crop 96
    assert (narrow.augment, narrow.crop_size) == ("full", 96)
    mixed = choose_shape([(96, 96)] * 9 + [(384, 384)])  # one large image would pad every batch
    assert mixed.augment == "full" and mixed.crop_size == 96
    assert choose_shape([]).crop_size == CROP


def test_decision_follows_size_and_shift(monkeypatch: pytest.MonkeyPatch) -> None:
    near = [choose_defaults(n, 0.05) for n in (10, 50, 100, 200, 1000)]
    assert len({r.why for r in near}) == len(near)  # every size band has its own measured row
    far_row = auto.AutoChoice(float("inf"), "discriminative", 1e-3, 0, "far")
    monkeypatch.setattr(auto, "SHIFTED_TABLE", auto.SHIFTED_TABLE or (far_row,))
    far, close = choose_defaults(92, SHIFT_THRESHOLD * 2), choose_defaults(92, SHIFT_THRESHOLD / 2)
    assert close == choose_defaults(92) and far != close and far.strategy != close.strategy
    cfg_far, cfg_near = Config(), Config()
    notes = resolve_auto(cfg_far, 92, DataProbe(92, ((200, 150),), SHIFT_THRESHOLD * 2))
    resolve_auto(cfg_near, 92, DataProbe(92, ((200, 150),), SHIFT_THRESHOLD / 2))
    assert cfg_far.strategy.name == far.strategy and cfg_near.strategy.name == close.strategy
    assert "above" in notes[0] and f"{SHIFT_THRESHOLD * 2:.2f}" in notes[0]


def test_resolve_keeps_user_shape_and_explains_choice() -> None:
    cfg = Config()
    notes = resolve_auto(cfg, 20, DataProbe(20, ((1000, 800),) * 3, None))
    assert (cfg.data.augment, cfg.data.crop_size) == ("full", CROP) and "data.augment -> full" in notes[-1]
    cfg = Config()
    resolve_auto(cfg, 20, DataProbe(20, ((120, 90),) * 3, None))
    assert (cfg.data.augment, cfg.data.crop_size) == ("flip", None)
    user = Config()
    user.data.augment, user.data.crop_size = "full", 64
    assert not any("data." in n for n in resolve_auto(user, 20, DataProbe(20, ((120, 90),), None)))
    assert (user.data.augment, user.data.crop_size) == ("full", 64)
    user = Config()
    user.data.crop_size = 64  # a crop (or rescale / jitter) set: crops, not whole images
    resolve_auto(user, 20, DataProbe(20, ((120, 90),), None))
    assert (user.data.augment, user.data.crop_size) == ("full", 64)
    user = Config()
    user.data.scale_min = 0.5
    resolve_auto(user, 20, DataProbe(20, ((120, 90),), None))
    assert (user.data.augment, user.data.crop_size) == ("full", 96)
    user = Config()
    user.data.augment = "full"  # crop left to auto: from the image sizes, not 384
    resolve_auto(user, 20, DataProbe(20, ((256, 192),) * 3, None))
    assert user.data.crop_size == 192
    Config().validate()  # None crop and augment auto are valid until resolved


def test_probe_data_reads_sizes_and_measures_shift(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(40, 30)] * 3 + [(64, 48)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    p = probe_data(paths, _calibrated_net(), num_shift_images=2)
    assert p.num_images == 4 and sorted(p.sizes) == [(40, 30)] * 3 + [(64, 48)]
    assert p.shift is not None and p.shift > 0
    assert probe_data(paths).shift is None


def test_auto_benchmark_report_states_the_goal_from_the_rows() -> None:
    from conftest import load_benchmark

    bench = load_benchmark("auto")

    def doc(gaps: dict[str, list[float]]) -> dict:
        rows = []
        for dom, gs in gaps.items():
            for seed, g in enumerate(gs):
                base = 0.5 + 0.01 * seed
                rows += [{"stage": "eval", "domain": dom, "contender": "bare-frozen", "seed": seed, "miou": base,
                          "lr": 1e-2, "seconds": 1.0, "settings": {}},
                         {"stage": "eval", "domain": dom, "contender": "bare-ft", "seed": seed, "miou": base - 0.1,
                          "lr": 1e-2, "seconds": 1.0, "settings": {}},
                         {"stage": "eval", "domain": dom, "contender": "auto", "seed": seed, "miou": base + g / 100,
                          "lr": None, "seconds": 1.0, "miou_tta_flip": base,
                          "settings": {"strategy": "head", "lr": 3e-3, "augment": "flip", "crop": None}}]
        probes = {"camvid": {"bench": {"num_images": 367, "sizes": [[120, 90]], "shift": 0.1}},
                  "membrane": {"bench": {"num_images": 24, "sizes": [[192, 192]], "shift": 0.33}}}
        return {"profile": {"steps": 50, "batch": 4}, "meta": {"commands": ["python benchmarks/auto.py"]},
                "rows": rows, "probes": probes}

    met = bench.goal_text(doc({"camvid": [3.5, 4.0, 3.2], "membrane": [5.0, 3.1, 4.0]}))
    assert "met." in met and "not met" not in met and "+3.6" in met
    below_once = bench.goal_text(doc({"camvid": [6.0, 6.0, -0.5], "membrane": [5.0, 5.0, 5.0]}))
    assert "not met" in below_once  # mean above 3, but below the better loop on one seed
    assert "not evaluated" in bench.goal_text(doc({"camvid": [1.0]}))
    text = bench.section(doc({"camvid": [1.0, 2.0, 0.0], "membrane": [0.0, 0.5, 1.0]}))
    assert "| membrane | bench | 30 | 192x192 | 0.33 | `discriminative` |" in text  # today's decision
    assert "| camvid | bench | 30 | 120x90 | 0.10 | `head` |" in text and "not met" in text
