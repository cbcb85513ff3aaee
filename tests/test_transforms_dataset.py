"""Joint transforms, SegDataset (cache, collate), SegDataModule (split, subset, counts), synthetic data."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from segtune.config import DataConfig
from segtune.data import decode
from segtune.data import spec as spec_mod
from segtune.data.datamodule import SegDataModule
from segtune.data.dataset import SegDataset, estimate_cache_bytes, mask_storage_dtype, pad_collate
from segtune.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_dataset
from segtune.data.transforms import (
    eval_transforms,
    flip_only_transforms,
    pad_to_multiple,
    train_transforms,
)
from segtune.errors import DataError

CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"
ZERO, ONE = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
PALETTE = np.array([[20, 20, 20], [230, 40, 40], [40, 230, 40], [40, 40, 230]], dtype=np.uint8)


# ------------------------------------------------------------------ helpers
def _blocks(h: int, w: int, block: int, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, classes, (h // block + 1, w // block + 1))
    return np.kron(small, np.ones((block, block), dtype=np.int64))[:h, :w]


def _sample(image: np.ndarray, mask: np.ndarray) -> dict:
    return {
        "image": tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()),
        "mask": tv_tensors.Mask(torch.from_numpy(mask)),
    }


def _labels_from_image(img: torch.Tensor) -> np.ndarray:
    """Nearest palette colour per pixel of a (3, H, W) float image in [0, 1]."""
    rgb = img.permute(1, 2, 0).numpy() * 255.0
    d = ((rgb[:, :, None, :] - PALETTE[None, None].astype(np.float32)) ** 2).sum(-1)
    return d.argmin(-1)


def _write_pairs(folder: Path, n: int, size: tuple[int, int], classes: int, seed: int = 0) -> list:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(n):
        h, w = size
        mask = _blocks(h, w, 8, classes, seed + i).astype(np.uint8)
        mask[0, :5] = 255
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        ip, mp = folder / "images" / f"p{i:02d}.png", folder / "masks" / f"p{i:02d}.png"
        Image.fromarray(img).save(ip)
        Image.fromarray(mask).save(mp)
        pairs.append((ip, mp))
    return pairs


def _spec(root: Path, classes: int, ignore: int = 255):
    return spec_mod.DatasetSpec(
        root=root, classes=[f"c{i}" for i in range(classes)], ignore_index=ignore, mask_format="index",
        splits={},
    )


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", n_train=10, n_val=3,
                                  size=(64, 80), num_classes=3, seed=1)


@pytest.fixture
def synth_no_val(tmp_path: Path) -> Path:
    """Synthetic data set with only a train split (12 pairs)."""
    return make_synthetic_dataset(tmp_path / "nv", n_train=12, n_val=0, size=48, seed=2)


# ------------------------------------------------------------------ transforms
def test_train_transforms_keep_image_and_mask_aligned() -> None:
    h, w, crop = 96, 120, 64
    mask = _blocks(h, w, 12, 4, seed=0)
    image = PALETTE[mask]
    tf = train_transforms(crop, ZERO, ONE, ignore_index=255, scale=(0.5, 2.0), hflip=True, color_jitter=0)
    agree = []
    for s in range(12):
        torch.manual_seed(s)
        out = tf(_sample(image, mask.copy()))
        img, m = out["image"], out["mask"]
        assert img.shape == (3, crop, crop) and img.dtype == torch.float32
        assert m.shape == (crop, crop) and m.dtype == torch.int64
        m = m.numpy()
        valid = m != 255
        derived = _labels_from_image(img)
        agree.append((derived[valid] == m[valid]).mean())
    # only pixels on interpolation borders may differ
    assert min(agree) > 0.93 and float(np.mean(agree)) > 0.97


def test_train_transforms_flip_really_flips_both() -> None:
    h, w = 64, 64
    mask = np.zeros((h, w), np.int64)
    mask[:, :16] = 1  # left stripe
    image = PALETTE[mask]
    tf = train_transforms(64, ZERO, ONE, 255, scale=(1.0, 1.0), hflip=True, color_jitter=0)
    seen_left = seen_right = False
    for s in range(10):
        torch.manual_seed(s)
        out = tf(_sample(image, mask.copy()))
        m = out["mask"].numpy()
        assert (_labels_from_image(out["image"]) == m).all()
        seen_left |= bool(m[:, 0].all())
        seen_right |= bool(m[:, -1].all())
    assert seen_left and seen_right


def test_train_mask_values_padding_and_jitter_only_on_image() -> None:
    mask = _blocks(40, 50, 5, 3, seed=1).astype(np.uint8)
    mask[:3, :3] = 11  # ignore
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    jit = train_transforms(64, mean, std, ignore_index=11, scale=(0.8, 1.2), color_jitter=0.4)
    plain = train_transforms(64, mean, std, ignore_index=11, scale=(0.8, 1.2), color_jitter=0)
    for s in range(5):
        torch.manual_seed(s)
        a = jit(_sample(image, mask.copy()))
        torch.manual_seed(s)
        b = plain(_sample(image, mask.copy()))
        m = a["mask"]
        assert m.dtype == torch.int64 and set(torch.unique(m).tolist()) <= {0, 1, 2, 11}
        assert (m == 11).sum() > 64 * 64 - 60 * 60  # image (<= 60 px) padded up to 64
        assert torch.equal(a["mask"], b["mask"])  # jitter never touches the mask
        assert not torch.allclose(a["image"], b["image"])
        # the bottom row is padding (scaled height <= 48): 0 after normalisation (mean-colour fill)
        assert (b["mask"][-1] == 11).all() and b["image"][:, -1].abs().max() < 0.02
    # source untouched (transforms never write into their input: the dataset cache relies on it)
    assert mask[:3, :3].max() == 11 and mask.dtype == np.uint8


def test_pad_to_multiple_uses_fill_and_keeps_content() -> None:
    x = torch.arange(3 * 33 * 70, dtype=torch.float32).reshape(3, 33, 70)
    y = pad_to_multiple(x, 32, fill=0.0)
    assert y.shape == (3, 64, 96)
    assert torch.equal(y[:, :33, :70], x) and (y[:, 33:] == 0).all() and (y[:, :, 70:] == 0).all()
    m = torch.zeros((33, 70), dtype=torch.int64)
    pm = pad_to_multiple(m, 32, fill=255)
    assert pm.shape == (64, 96) and pm.dtype == torch.int64
    assert (pm[33:] == 255).all() and (pm[:, 70:] == 255).all() and (pm[:33, :70] == 0).all()
    already = torch.zeros((2, 64, 32))
    assert pad_to_multiple(already).shape == (2, 64, 32)
    per_channel = pad_to_multiple(torch.zeros((3, 1, 1), dtype=torch.uint8), 4, fill=(1, 2, 3))
    assert per_channel[:, 3, 3].tolist() == [1, 2, 3]


def test_eval_transforms_normalise_and_pad() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (100, 70, 3), dtype=np.uint8)
    mask = rng.integers(0, 4, (100, 70)).astype(np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    out = eval_transforms(mean, std, ignore_index=7)(_sample(image, mask))
    img, m = out["image"], out["mask"]
    assert img.shape == (3, 128, 96) and img.dtype == torch.float32
    assert m.shape == (128, 96) and m.dtype == torch.int64
    assert torch.equal(m[:100, :70], torch.from_numpy(mask).long())
    assert (m[100:] == 7).all() and (m[:, 70:] == 7).all()
    expect = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(img[:, :100, :70], expect, atol=1e-5)
    assert (img[:, 100:] == 0).all()


def test_flip_only_transforms() -> None:
    mask = _blocks(40, 40, 8, 3, seed=3).astype(np.uint8)
    image = PALETTE[mask]
    never = flip_only_transforms(ZERO, ONE, 255, p=0.0)(_sample(image, mask))
    always = flip_only_transforms(ZERO, ONE, 255, p=1.0)(_sample(image, mask))
    assert never["image"].shape == (3, 64, 64) and never["mask"].shape == (64, 64)
    assert torch.equal(never["mask"][:40, :40], torch.from_numpy(mask).long())
    assert torch.equal(always["mask"][:40, :40], torch.from_numpy(mask[:, ::-1].copy()).long())
    assert (_labels_from_image(always["image"][:, :40, :40]) == mask[:, ::-1]).all()


def test_pad_collate_different_sizes() -> None:
    batch = [
        {"image": torch.ones(3, 40, 50), "mask": torch.zeros(40, 50, dtype=torch.int64), "id": "a"},
        {"image": torch.ones(3, 64, 33), "mask": torch.ones(64, 33, dtype=torch.int64), "id": "b"},
    ]
    out = pad_collate(batch, ignore_index=9)
    assert out["image"].shape == (2, 3, 64, 64) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (2, 64, 64) and out["mask"].dtype == torch.int64
    assert out["id"] == ["a", "b"]
    assert (out["mask"][0, :40, :50] == 0).all() and (out["mask"][0, 40:] == 9).all()
    assert (out["mask"][0, :, 50:] == 9).all() and (out["mask"][1, :, 33:] == 9).all()
    assert out["image"][0, :, :40, :50].eq(1).all() and out["image"][0, :, 40:].eq(0).all()
    assert out["image"][1].sum() == 3 * 64 * 33


# ------------------------------------------------------------------ dataset
def test_dataset_caches_decoded_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = _write_pairs(tmp_path, 3, (40, 56), classes=3)
    spec = _spec(tmp_path, 3)
    calls = {"image": 0, "mask": 0}
    real_img, real_mask = decode.read_image, decode.read_mask

    def count_img(*a, **k):
        calls["image"] += 1
        return real_img(*a, **k)

    def count_mask(*a, **k):
        calls["mask"] += 1
        return real_mask(*a, **k)

    monkeypatch.setattr(decode, "read_image", count_img)
    monkeypatch.setattr(decode, "read_mask", count_mask)
    ds = SegDataset(pairs, spec, eval_transforms(ZERO, ONE, 255), cache=True)
    assert len(ds) == 3 and ds.ids == ["p00", "p01", "p02"]
    first = [ds[i] for i in range(3)]
    second = [ds[i] for i in range(3)]
    assert calls == {"image": 3, "mask": 3}
    assert ds.cached_count == 3 and ds.cache_bytes == 3 * 40 * 56 * 4  # uint8 image + uint8 mask
    s = first[1]
    assert s["id"] == "p01" and s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert s["mask"].shape == (64, 64) and s["mask"].dtype == torch.int64
    assert torch.equal(s["mask"], second[1]["mask"])
    truth = np.array(Image.open(pairs[1][1]))
    assert np.array_equal(s["mask"][:40, :56].numpy(), truth)
    # mutating an output never corrupts the cache
    s["mask"].fill_(0)
    assert torch.equal(ds[1]["mask"][:40, :56], torch.from_numpy(truth).long())
    # a view with another transform shares the cache: no new reads
    view = ds.with_transform(flip_only_transforms(ZERO, ONE, 255, p=1.0))
    assert torch.equal(view[1]["mask"][:40, :56], torch.from_numpy(truth[:, ::-1].copy()).long())
    assert calls == {"image": 3, "mask": 3}

    nocache = SegDataset(pairs, spec, None, cache=False)
    nocache[0], nocache[0]
    assert calls["image"] == 5 and nocache.cached_count == 0
    raw = nocache[0]
    assert raw["image"].max() <= 1.0 and raw["mask"].dtype == torch.int64

    fresh = SegDataset(pairs, spec, None, cache=True)
    fresh.preload(progress=False)
    assert fresh.cached_count == 3 and calls["image"] == 9


def test_dataset_rejects_bad_labels_and_size_mismatch(tmp_path: Path) -> None:
    pairs = _write_pairs(tmp_path, 2, (32, 32), classes=4)
    spec = _spec(tmp_path, 3)  # masks hold label 3: invalid for 3 classes
    bad = [p for p in pairs if (np.asarray(Image.open(p[1])) == 3).any()]
    with pytest.raises(DataError, match="outside 0..2"):
        SegDataset(bad, spec, None)[0]
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(pairs[0][1])
    with pytest.raises(DataError, match="size"):
        SegDataset(pairs[:1], _spec(tmp_path, 4), None)[0]


def test_mask_storage_dtype_and_cache_estimate(tmp_path: Path) -> None:
    assert mask_storage_dtype(11, 11) == np.uint8
    assert mask_storage_dtype(3, 255) == np.uint8
    assert mask_storage_dtype(300, 255) == np.int16
    assert mask_storage_dtype(3, -1) == np.int16
    assert mask_storage_dtype(3, 65535) == np.int32
    pairs = _write_pairs(tmp_path, 2, (30, 50), classes=2) + _write_pairs(tmp_path / "b", 1, (64, 10), 2)
    assert estimate_cache_bytes(pairs) == 2 * 30 * 50 * 4 + 64 * 10 * 4
    assert estimate_cache_bytes([]) == 0


# ------------------------------------------------------------------ datamodule
def _dm(root: Path, seed: int = 0, **cfg):
    spec = spec_mod.load_dataset_spec(root)
    base = {"crop_size": 32, "batch_size": 4, "val_batch_size": 2, "scale_min": 0.75, "scale_max": 1.25}
    return SegDataModule(spec, DataConfig(**{**base, **cfg}), ZERO, ONE, seed=seed)


def test_datamodule_random_val_split_is_seeded_and_disjoint(synth_no_val: Path, capsys) -> None:
    a = _dm(synth_no_val, seed=0, val_fraction=0.25)
    a.setup()
    assert "holding out 3 of 12" in capsys.readouterr().err
    ds = a.train_dataset
    a.setup()  # idempotent
    assert a.train_dataset is ds
    tr, va = a.train_pairs, a.val_pairs
    assert len(va) == 3 and len(tr) == 9
    assert not set(tr) & set(va) and len(set(tr) | set(va)) == 12
    b = _dm(synth_no_val, seed=0, val_fraction=0.25)
    assert b.val_pairs == va and b.train_pairs == tr
    others = {tuple(_dm(synth_no_val, seed=s, val_fraction=0.25).val_pairs) for s in range(1, 5)}
    assert len(others | {tuple(va)}) > 1
    tiny = _dm(synth_no_val, seed=0, val_fraction=0.0)
    assert len(tiny.val_pairs) == 1  # at least one val image


def test_datamodule_subsets_skip_and_errors(synth: Path, tmp_path: Path) -> None:
    full = _dm(synth)
    assert len(full.train_pairs) == 10 and len(full.val_pairs) == 3
    sub = _dm(synth, max_train_images=4, max_val_images=2)
    assert len(sub.train_pairs) == 4 and len(sub.val_pairs) == 2
    assert set(sub.train_pairs) <= set(full.train_pairs) and set(sub.val_pairs) <= set(full.val_pairs)
    assert _dm(synth, max_train_images=4).train_pairs == sub.train_pairs  # seeded
    assert _dm(synth, max_train_images=100).train_pairs == full.train_pairs

    spec = spec_mod.load_dataset_spec(synth)
    skip = {full.train_pairs[0][0], full.train_pairs[1][1]}
    dm = SegDataModule(spec, DataConfig(crop_size=32), ZERO, ONE, seed=0, skip=skip)
    assert len(dm.train_pairs) == 8 and not {p for pr in dm.train_pairs for p in pr} & skip
    every = {p[0] for p in full.val_pairs}
    with pytest.raises(DataError, match="no image/mask pairs"):
        SegDataModule(spec, DataConfig(crop_size=32), ZERO, ONE, seed=0, skip=every).setup()
    empty = spec_mod.DatasetSpec(root=tmp_path, classes=["a", "b"], splits={
        "train": spec_mod.Split(images=tmp_path / "imgs", masks=tmp_path / "msks")})
    (tmp_path / "imgs").mkdir()
    (tmp_path / "msks").mkdir()
    with pytest.raises(DataError, match=r"imgs: no image/mask pairs for split 'train'"):
        SegDataModule(empty, DataConfig(), ZERO, ONE, seed=0).setup()


def test_class_pixel_counts_match_hand_count(synth: Path) -> None:
    dm = _dm(synth)
    hand = np.zeros(3, np.int64)
    for _, m in dm.train_pairs:
        hand += np.bincount(np.asarray(Image.open(m)).ravel(), minlength=3)[:3]
    counts = dm.class_pixel_counts()
    assert counts.dtype == np.int64 and counts.shape == (3,)
    assert np.array_equal(counts, hand) and (counts > 0).all()
    dm.preload(progress=False)
    dm._class_counts = None
    assert np.array_equal(dm.class_pixel_counts(), hand)  # from the cache


def test_dataloaders_shapes_and_determinism(synth: Path) -> None:
    def first_batch(seed: int):
        dm = _dm(synth, seed=seed, batch_size=4, cache="auto")
        torch.manual_seed(123)
        return next(iter(dm.train_dataloader())), dm

    b1, dm = first_batch(0)
    b2, _ = first_batch(0)
    assert dm.uses_cache
    assert b1["image"].shape == (4, 3, 32, 32) and b1["mask"].shape == (4, 32, 32)
    assert b1["id"] == b2["id"] and torch.equal(b1["mask"], b2["mask"])
    assert torch.equal(b1["image"], b2["image"])
    loader = dm.train_dataloader()
    assert loader.drop_last and len(loader) == 2  # 10 pairs, batch 4
    big = _dm(synth, batch_size=16).train_dataloader()
    assert not big.drop_last and len(big) == 1
    val = list(dm.val_dataloader())
    assert [b["id"] for b in val] == [["img_0000", "img_0001"], ["img_0002"]]
    assert val[0]["image"].shape == (2, 3, 64, 96) and val[0]["mask"].dtype == torch.int64
    assert (val[0]["mask"][:, :, 80:] == 255).all()
    none = _dm(synth, cache="none")
    assert not none.uses_cache and not none.train_dataset.cache


# ------------------------------------------------------------------ synthetic data
def test_synthetic_dataset_is_consistent_and_deterministic(tmp_path: Path) -> None:
    t = time.perf_counter()
    a = make_synthetic_dataset(tmp_path / "a", n_train=6, n_val=2, size=(48, 64), num_classes=4, seed=5)
    assert time.perf_counter() - t < 5
    b = make_synthetic_dataset(tmp_path / "b", n_train=6, n_val=2, size=(48, 64), num_classes=4, seed=5)
    c = make_synthetic_dataset(tmp_path / "c", n_train=6, n_val=2, size=(48, 64), num_classes=4, seed=6)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 16
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert any((a / rel).read_bytes() != (c / rel).read_bytes() for rel in files)
    for split, n in (("train", 6), ("val", 2)):
        imgs = sorted((a / split / "images").iterdir())
        masks = sorted((a / split / "masks").iterdir())
        assert [p.name for p in imgs] == [p.name for p in masks] and len(imgs) == n
        for ip, mp in zip(imgs, masks, strict=True):
            im, m = np.asarray(Image.open(ip)), np.asarray(Image.open(mp))
            assert im.shape == (48, 64, 3) and im.dtype == np.uint8
            assert m.shape == (48, 64) and m.dtype == np.uint8
            assert set(np.unique(m).tolist()) <= {0, 1, 2, 3}
            assert (m == 0).any() and (m > 0).any()
            assert im.std() > 10  # a photo, not a flat colour
    import yaml

    meta = yaml.safe_load((a / "dataset.yaml").read_text())
    assert meta["classes"] == list(SYNTHETIC_CLASSES[:4]) and len(meta["colors"]) == 4
    spec = spec_mod.load_dataset_spec(a)
    assert spec.num_classes == 4 and spec.splits["val"].images == a.resolve() / "val" / "images"


def test_synthetic_foreground_differs_from_background(synth: Path) -> None:
    """Objects are textured and tinted, not copies of the background photo."""
    means = {0: [], 1: [], 2: []}
    for ip in sorted((synth / "train" / "images").iterdir()):
        im = np.asarray(Image.open(ip)).astype(np.float32)
        m = np.asarray(Image.open(synth / "train" / "masks" / ip.name))
        for c in means:
            if (m == c).sum() > 20:
                means[c].append(im[m == c].mean(0))
    red = np.mean(means[1], 0)
    blue = np.mean(means[2], 0)
    assert red[0] > red[2] + 20 and blue[2] > blue[0] + 20  # class tints
    assert np.std(means[0], axis=0).max() > 10  # backgrounds vary from image to image


# ------------------------------------------------------------------ CamVid (real data)
@pytest.mark.realdata
@pytest.mark.skipif(not CAMVID.is_dir(), reason="shared/data/camvid not present")
def test_camvid_four_images() -> None:
    spec = spec_mod.load_dataset_spec(CAMVID)
    names = sorted((CAMVID / "train").iterdir())[:4]
    pairs = [(p, CAMVID / "trainannot" / p.name) for p in names]
    ds = SegDataset(pairs, spec, eval_transforms((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 11))
    batch = pad_collate([ds[i] for i in range(4)], ignore_index=11)
    assert batch["image"].shape == (4, 3, 384, 480) and batch["mask"].dtype == torch.int64
    assert batch["id"] == [p.stem for p in names]
    assert set(torch.unique(batch["mask"]).tolist()) <= set(range(12))
    assert (batch["mask"][:, 360:] == 11).all()
    counts = np.bincount(batch["mask"][:, :360].ravel().numpy(), minlength=12)
    assert counts[[0, 1, 3]].sum() > 0.4 * counts.sum()  # sky, building, road dominate
    train = ds.with_transform(train_transforms(128, (0.5,) * 3, (0.25,) * 3, 11))
    torch.manual_seed(0)
    s = train[0]
    assert s["image"].shape == (3, 128, 128) and s["mask"].shape == (128, 128)
    assert set(torch.unique(s["mask"]).tolist()) <= set(range(12))


def test_package_exports_resolve() -> None:
    import segtune.data as data

    for mod in ("spec", "decode", "pairing", "check"):
        importlib.import_module(f"segtune.data.{mod}")  # must import, never skip
    for name in data.__all__:
        assert getattr(data, name) is not None, name
    assert data.SegDataModule.__name__ == "SegDataModule"
    with pytest.raises(AttributeError):
        data.not_a_name  # noqa: B018
