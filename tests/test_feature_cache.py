"""Frozen-encoder feature cache: exact encoder/decoder split, cached = live decoder inputs, runs, auto mode."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from _seams import SignalAtStep
from PIL import Image
from safetensors.torch import load_file

import segtune
from segtune.cli import main
from segtune.config import Config
from segtune.data import SegDataModule, load_dataset_spec
from segtune.data.dataset import seeded_rng
from segtune.data.feature_cache import (
    FEATURE_CACHE_DIR,
    CachedFeatureDataset,
    build_feature_cache,
    cache_decision,
    decoder_levels,
    feature_collate,
    flip_coin,
)
from segtune.data.transforms import flip_only_transforms
from segtune.errors import ConfigError
from segtune.models import create_model
from segtune.strategies import build_strategy


def _mixed_sizes_dataset(root: Path) -> Path:
    """Two classes, training images of different sizes (so padding to the largest matters)."""
    rng = np.random.default_rng(1)
    sizes = {"train": [(64, 64), (50, 70), (40, 96), (61, 33)], "val": [(64, 64), (48, 80)]}
    for split, shapes in sizes.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i, (h, w) in enumerate(shapes):
            img = rng.integers(0, 90, (h, w, 3), dtype=np.uint8)
            mask = np.zeros((h, w), np.uint8)
            mask[h // 4 : h // 2, w // 8 : w // 3] = 1  # left of centre: flips are visible
            img[mask == 1] = rng.integers(150, 255, (int(mask.sum()), 3), dtype=np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:03d}.png")
    (root / "dataset.yaml").write_text(
        "name: mixed\nclasses: [background, blob]\nignore_index: 255\nsplits:\n"
        "  train: {images: train/images, masks: train/masks}\n  val: {images: val/images, masks: val/masks}\n"
    )
    return root


def _cfg(data: Path, out: Path, name: str, **kw) -> Config:
    cfg = Config()
    cfg.data.root = str(data)
    cfg.data.batch_size = 2
    cfg.data.augment = "flip"
    cfg.strategy.name = "head"
    cfg.optim.lr = 3e-3
    cfg.optim.warmup_steps = 1
    cfg.train.out = str(out)
    cfg.train.name = name
    cfg.train.progress = False
    cfg.train.num_overlays = 0
    cfg.train.early_stopping = 0
    cfg.train.epochs = 2
    for k, v in kw.items():
        section, key = k.split("__")
        setattr(getattr(cfg, section), key, v)
    return cfg


@pytest.mark.parametrize("arch", ["unet", "fpn", "deeplabv3plus"])
def test_decode_of_encode_is_forward_exactly(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, weights="none").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = model.encode(x)
        assert torch.equal(model.decode(feats), model(x))
        # levels the probe calls unread can be left empty without changing a bit of the logits
        used = decoder_levels(model)
        assert used[0] is False and used[-1] is True
        slim = [f if u else f.new_empty((f.shape[0], 0, *f.shape[2:])) for f, u in zip(feats, used, strict=True)]
        assert torch.equal(model.decode(slim), model(x))
    if arch == "deeplabv3plus":
        assert used == [False, False, True, False, False, True]
    if arch == "unet":
        assert used == [False, True, True, True, True, True]


def test_flip_coin_is_the_live_transforms_draw() -> None:
    t = flip_only_transforms((0.5,) * 3, (0.25,) * 3, 255, p=0.5)
    from torchvision import tv_tensors

    img = tv_tensors.Image(torch.arange(2, dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2).clone())
    mask = tv_tensors.Mask(torch.tensor([[0, 1]], dtype=torch.uint8))
    coins = []
    for seed in range(64):
        with seeded_rng(seed):
            out = t({"image": img, "mask": mask})
        flipped = int(out["mask"][0, 0]) == 1
        assert flipped == flip_coin(seed, 0.5)
        coins.append(flipped)
    assert 10 < sum(coins) < 54
    assert not flip_coin(3, 0.0)


def test_cached_features_equal_live_encoder(tmp_path: Path) -> None:
    data = _mixed_sizes_dataset(tmp_path / "mixed")
    cfg = Config()
    cfg.data.augment = "flip"
    model = create_model("unet", num_classes=2, weights="imagenet")
    strategy = build_strategy(model, cfg.strategy.__class__(name="head"), 1e-3)
    dm = SegDataModule(load_dataset_spec(data), cfg.data, model.mean, model.std, seed=0)
    dm.setup()
    size = dm.train_pad_size()
    assert size == (64, 96)
    ram = build_feature_cache(model, dm.train_dataset, size, model.mean, model.std, hflip=True,
                              budget_bytes=2**30, disk_dir=tmp_path / "fc_ram", progress=False)
    disk = build_feature_cache(model, dm.train_dataset, size, model.mean, model.std, hflip=True,
                               budget_bytes=0, disk_dir=tmp_path / "fc", progress=False)
    assert ram.on_disk is None and disk.on_disk == tmp_path / "fc" and any((tmp_path / "fc").glob("*.npy"))
    cached = CachedFeatureDataset(dm.train_dataset, ram, size, 0.5)
    on_disk = CachedFeatureDataset(dm.train_dataset, disk, size, 0.5)

    strategy.apply(model, 0)  # as in training: encoder frozen, its BatchNorm in eval mode
    model.train()
    views = set()
    for i in range(len(cached)):
        for seed in (11, 12, 13, 14):
            live = dm.train_dataset[(i, seed)]  # the live flip-only transform, padded to `size`
            with torch.no_grad():
                live_feats = model.encode(live["image"][None])
            got = cached[(i, seed)]
            assert torch.equal(got["mask"], live["mask"])  # same flip, same padding
            views.add(flip_coin(seed, 0.5))
            disk_feats = on_disk[(i, seed)]["features"]
            for k, (c, d, f) in enumerate(zip(got["features"], disk_feats, live_feats, strict=True)):
                assert c.dtype == torch.float16 and torch.equal(c, d)
                if ram.levels[k].stored:
                    torch.testing.assert_close(c.float(), f[0], rtol=1e-3, atol=2e-3)
                else:
                    assert c.shape == (0, *f.shape[2:])
    assert views == {False, True}

    batch = feature_collate([cached[(0, 11)], cached[(1, 12)]])
    live_batch = torch.stack([dm.train_dataset[(0, 11)]["image"], dm.train_dataset[(1, 12)]["image"]])
    with torch.no_grad():
        a = model.decode([f.float() for f in batch["features"]])
        b = model(live_batch)
    torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
    disk.release()
    assert not (tmp_path / "fc").exists()


class _Float16EncoderFeatures(L.Callback):
    """Round the live encoder's features to float16 in training steps (not in validation),
    as the feature cache stores them: emulates the cache's only numerical difference."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def hook(mod: torch.nn.Module, inp: object, out: list[torch.Tensor]) -> list[torch.Tensor] | None:
            return [f.half().float() for f in out] if mod.training else None

        self.handle = pl_module.model.net.encoder.register_forward_hook(hook)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.handle.remove()


def test_head_run_with_cache_trains_like_without(tmp_path: Path, capsys) -> None:
    data = _mixed_sizes_dataset(tmp_path / "mixed")
    out = tmp_path / "runs"
    # disk fallback (budget 0): the folder exists during the run and is gone afterwards
    on = segtune.train(_cfg(data, out, "on", train__cache_features="auto", data__cache_max_gb=0.0))
    err = capsys.readouterr().err
    assert "feature cache: on (head strategy + flip-only augmentation" in err
    assert "feature_cache" in err and not (on.dir / FEATURE_CACHE_DIR).exists()
    assert (on.dir / "model.safetensors").is_file() and on.summary["feature_cache"] is True
    off = segtune.train(_cfg(data, out, "off", train__cache_features="off"))
    assert "feature cache: off (train.cache_features=off)" in capsys.readouterr().err
    assert off.summary["feature_cache"] is False
    # Same training up to float16 rounding of the decoder's inputs (relative error <= 2**-11).
    # The first epoch's loss shows it directly. Later AdamW steps amplify the rounding (for
    # small gradients an update is about lr x sign(grad)): on this run the final val mIoU of
    # `on` and `off` differ by up to ~7e-3 (seeds 0-2), so no tolerance on that difference is
    # justified by float16 alone. Instead, a live run whose encoder features are rounded to
    # float16 exactly as the cache stores them must reproduce the cached run bit for bit:
    # the cache changes nothing else (images, flips, padding, order, BatchNorm modes).
    assert on.history[0]["train_loss"] == pytest.approx(off.history[0]["train_loss"], rel=1e-3)
    emulated = segtune.train(_cfg(data, out, "fp16", train__cache_features="off"),
                             callbacks=[_Float16EncoderFeatures()])
    assert emulated.summary["feature_cache"] is False
    se, son = load_file(str(emulated.dir / "model.safetensors")), load_file(str(on.dir / "model.safetensors"))
    assert se.keys() == son.keys() and [k for k in se if not torch.equal(se[k], son[k])] == []
    assert [r["train_loss"] for r in emulated.history] == [r["train_loss"] for r in on.history]
    assert emulated.metrics["miou"] == on.metrics["miou"]
    assert emulated.metrics["per_class"] == on.metrics["per_class"]
    # the encoder (weights and BatchNorm statistics) is untouched
    sa, sb = load_file(str(on.dir / "model.safetensors")), load_file(str(off.dir / "model.safetensors"))
    enc = [k for k in sa if k.startswith("net.encoder.")]
    assert enc and all(torch.equal(sa[k], sb[k]) for k in enc)


def test_interrupted_cached_run_resumes_bitwise(tmp_path: Path, monkeypatch, capsys) -> None:
    data = _mixed_sizes_dataset(tmp_path / "mixed")
    out = tmp_path / "runs"
    kw = {"train__epochs": 2, "train__checkpoint_every": 1, "data__batch_size": 1}
    ref = segtune.train(_cfg(data, out, "ref", **kw))
    with pytest.raises(segtune.RunError, match="stopped by SIGINT"):  # SIGINT at step 3 of 8 (epoch 1)
        segtune.train(_cfg(data, out, "int", **kw), callbacks=[SignalAtStep(3, signal.SIGINT)])
    run = segtune.train(resume=out / "int")
    assert "feature cache: on" in capsys.readouterr().err
    sa, sb = load_file(str(ref.dir / "model.safetensors")), load_file(str(run.dir / "model.safetensors"))
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    ma = json.loads((ref.dir / "metrics.json").read_text())["metrics"]
    mb = json.loads((run.dir / "metrics.json").read_text())["metrics"]
    assert ma["miou"] == mb["miou"]


class _NotSMP(torch.nn.Module):
    arch = "fcn_resnet50"
    splits_encoder_decoder = False


def test_auto_mode_and_refusals(tmp_path: Path, capsys) -> None:
    model = create_model("unet", num_classes=2, weights="none")

    def decide(world: int = 1, m: torch.nn.Module = model, **kw) -> tuple[bool, str]:
        cfg = _cfg(tmp_path, tmp_path, "x", **kw)
        # the decision asks the strategy object (encoder_frozen), not its name
        strategy = build_strategy(model, cfg.strategy, 1e-3)
        return cache_decision(cfg, m, strategy, world)

    assert decide() == (True, decide()[1]) and "on (head strategy" in decide()[1]
    on, why = decide(data__augment="full")
    assert not on and "data.augment=full" in why and why.startswith("feature cache: off (")
    on, why = decide(strategy__name="discriminative")
    assert not on and "trains the encoder" in why
    on, why = decide(strategy__name="gradual")  # frozen at first, but its encoder trains later
    assert not on and "trains the encoder" in why
    on, why = decide(strategy__name="partial", strategy__freeze_stages=5)  # every stage frozen
    assert on, why
    on, why = decide(m=_NotSMP())
    assert not on and "fcn_resnet50" in why
    on, why = decide(world=2)
    assert not on and "DDP" in why
    assert decide(train__cache_features="off") == (False, "feature cache: off (train.cache_features=off)")
    # `on` where it cannot work: a one-line ConfigError saying why
    with pytest.raises(ConfigError, match="trains the encoder"):
        decide(strategy__name="full", train__cache_features="on")
    with pytest.raises(ConfigError, match="does not split"):
        decide(m=_NotSMP(), train__cache_features="on")
    with pytest.raises(ConfigError, match="data.augment=full"):
        decide(data__augment="full", train__cache_features="on")
    with pytest.raises(ConfigError, match="choose one of"):
        _cfg(tmp_path, tmp_path, "x", train__cache_features="yes").validate()
    # YAML reads a bare `on` / `off` as a boolean: still the option's words
    from segtune.config import apply_overrides

    assert apply_overrides(Config(), ["train.cache_features=on"]).train.cache_features == "on"
    assert Config.from_dict({"train": {"cache_features": False}}).train.cache_features == "off"
    # the CLI: exit 2, one line, no run folder (refused once the strategy is built)
    data = _mixed_sizes_dataset(tmp_path / "data")
    args = ["train", str(data), "--out", str(tmp_path / "runs"), "--strategy", "full",
            "--augment", "flip", "--cache-features", "on", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert errors == [err.splitlines()[-1]] and "Traceback" not in err
    assert "strategy full trains the encoder" in errors[0]
    assert not (tmp_path / "runs").exists()
