"""Frozen-encoder feature cache: with the ``head`` strategy the decoder trains from stored features.

With the ``head`` strategy the encoder's weights and BatchNorm statistics never change, so with
``data.augment: flip`` (whole images padded to one size, random horizontal flip only) the
encoder input of a training sample is one of two fixed tensors: the image or its mirror. Its
features are then computed once per (image, flip) and the decoder trains from them, skipping
the encoder forward pass in every later step. A flipped image's features are not the flipped
features of the image (convolutions are not mirror-symmetric), so both views are cached.

* :func:`cache_decision` says whether the cache applies (``train.cache_features`` auto / on /
  off) and why, one line for the run log; ``on`` where it does not apply is a ConfigError.
* :func:`build_feature_cache` runs the encoder (eval mode, ``torch.inference_mode``) over every
  training image in both views, and stores each feature level as float16 in a
  :class:`FeatureStore`: in RAM when the estimate fits ``data.cache_max_gb``, else in
  memory-mapped ``.npy`` files under ``<run>/feature_cache/`` (deleted at the end of the run).
  Levels the decoder never reads (SMP's level 0 is the input image itself, used only for its
  shape; DeepLabV3+ reads two levels of six) are found by a probe and kept as empty
  ``(0, H, W)`` tensors, as SMP itself does for missing levels.
* :class:`CachedFeatureDataset` serves ``{"features", "mask", "id"}`` samples keyed like
  :class:`~segtune.data.dataset.SegDataset` (``(index, sample_seed)`` from the
  :class:`~segtune.data.datamodule.ResumableSampler`): the flip coin is the one the live flip
  transform draws under the same seed, so a cached run sees the same flips in the same order
  as an uncached one, and resume stays exact.
"""

from __future__ import annotations

import copy
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .. import _log
from .._progress import progress as progress_bar
from ..errors import ConfigError, RunError

if TYPE_CHECKING:
    from ..config import Config
    from ..strategies import Strategy
    from .dataset import SegDataset

__all__ = [
    "FEATURE_CACHE_DIR",
    "cache_decision",
    "encoder_is_fixed",
    "decoder_levels",
    "FeatureStore",
    "build_feature_cache",
    "CachedFeatureDataset",
    "feature_collate",
    "flip_coin",
]

#: Sub-folder of the run folder for the on-disk fallback.
FEATURE_CACHE_DIR = "feature_cache"

ON_LINE = (
    "feature cache: on (head strategy + flip-only augmentation: the frozen encoder runs once per "
    "image and flip)"
)


# ----------------------------------------------------------------------------- decision
def cache_decision(cfg: Config, model: nn.Module, strategy: Strategy, world: int = 1) -> tuple[bool, str]:
    """Whether the run trains from cached encoder features, and a log line saying why.

    The one place this is decided. Valid when the strategy keeps the whole encoder frozen
    (``strategy.encoder_frozen``, e.g. ``head``), ``data.augment`` is ``flip``, the model splits
    into encoder -> decoder (SMP architectures), training runs in one process, and the encoder is
    a fixed function in training mode (no dropout / drop-path; checked by :func:`encoder_is_fixed`).

    Args:
        cfg: the resolved config.
        model: the :class:`~segtune.models.SegModel`.
        strategy: the built strategy (applied to a copy of the model for the stochasticity probe).
        world: number of training processes.

    Returns:
        ``(on, line)``.

    Raises:
        ConfigError: ``train.cache_features == "on"`` but the cache is not valid for this run.
    """
    mode = cfg.train.cache_features
    if mode == "off":
        return False, "feature cache: off (train.cache_features=off)"
    why = ""
    if not strategy.encoder_frozen:
        why = f"strategy {strategy.name} trains the encoder, so its features change every step"
    elif cfg.data.augment != "flip":
        d = cfg.data
        parts = ["crops"]
        if (d.scale_min, d.scale_max) != (1.0, 1.0):
            parts.insert(0, "rescales")
        if d.color_jitter:
            parts.append("colour jitter")
        listed = " and ".join(parts) if len(parts) < 3 else f"{parts[0]}, {parts[1]} and {parts[2]}"
        why = (
            f"data.augment=full: random {listed} change the encoder's input every epoch; "
            "--augment flip (whole images, flips only) enables it"
        )
    elif not getattr(model, "splits_encoder_decoder", False):
        why = f"{getattr(model, 'arch', 'this model')} does not split into encoder -> decoder (SMP architectures do)"
    elif world > 1:
        why = f"{world} training processes (DDP); the cache works in a single process"
    elif not encoder_is_fixed(model, strategy):
        why = "the encoder is random in training mode (dropout or drop-path), so its features are not fixed"
    if why:
        if mode == "on":
            raise ConfigError(f"train.cache_features=on: {why} (use --cache-features auto or off)")
        return False, f"feature cache: off ({why})"
    return True, ON_LINE


def encoder_is_fixed(model: nn.Module, strategy: Any, size: int = 64) -> bool:
    """True when the frozen encoder gives the same features in training and in eval mode.

    Applies ``strategy`` for epoch 0 (frozen BatchNorm in eval mode, as in training) to a copy
    of the model and compares two training-mode passes and one eval-mode pass on a small random
    input. Neither the model nor the global RNG is changed.
    """
    model = copy.deepcopy(model)
    strategy.apply(model, 0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn(1, 3, size, size, device=_device(model))
        with torch.no_grad():
            model.train()
            a = model.encode(x)
            b = model.encode(x)
            model.eval()
            c = model.encode(x)
    return all(torch.equal(p, q) and torch.equal(p, r) for p, q, r in zip(a, b, c, strict=True))


def decoder_levels(model: nn.Module, size: int = 64) -> list[bool]:
    """Which encoder feature levels the decoder reads (values, not just the shape).

    Each level in turn is replaced by an empty ``(N, 0, H, W)`` tensor: if the decoder still
    runs and gives the same logits, it never reads that level's values. Runs in eval mode
    without gradients on a random input (global RNG untouched); the model's mode is restored.

    Returns:
        One flag per level of :meth:`SegModel.encode` (True = read; all True if probing fails).
    """
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(0)
            x = torch.randn(1, 3, size, size, device=_device(model))
            feats = model.encode(x)
            ref = model.decode(feats)
            used = []
            for k in range(len(feats)):
                probe = list(feats)
                probe[k] = _empty_like(feats[k])
                try:
                    used.append(not torch.equal(model.decode(probe), ref))
                except Exception:  # noqa: BLE001 - the decoder reads this level
                    used.append(True)
            return used
    except Exception:  # noqa: BLE001 - unknown decoder: cache every level
        with torch.no_grad():
            return [True] * len(model.encode(torch.zeros(1, 3, size, size, device=_device(model))))
    finally:
        model.train(was_training)


def flip_coin(seed: int, p: float) -> bool:
    """The flip decision ``v2.RandomHorizontalFlip(p)`` makes as the first draw under ``seeded_rng(seed)``.

    The live transform draws ``torch.rand(1)`` from the CPU generator seeded with ``seed`` and
    flips when it is below ``p``; a fresh generator with the same seed gives the same number
    (``tests/test_feature_cache.py`` checks this against the transform itself).
    """
    if p <= 0:
        return False
    g = torch.Generator()
    g.manual_seed(int(seed) % 2**63)
    return bool(torch.rand(1, generator=g) < p)


# ----------------------------------------------------------------------------- storage
@dataclass
class _Level:
    shape: tuple[int, int, int]  # (C, H, W) as the encoder gives it
    stored: bool  # False: the decoder never reads it; served as an empty (0, H, W) tensor


class FeatureStore:
    """Float16 encoder features of every training image in each view.

    ``arrays[k]`` has shape ``(N, V, C_k, H_k, W_k)`` for stored levels (a torch tensor in
    RAM, or a read-only ``np.memmap`` of an ``.npy`` file on disk) and is ``None`` for levels
    the decoder does not read.

    Attributes:
        levels: per level, its ``(C, H, W)`` shape and whether it is stored.
        views: 1 (no flips) or 2 (view 1 = horizontally flipped image).
        on_disk: the folder of the ``.npy`` files, or ``None`` in RAM.
    """

    def __init__(self, levels: list[_Level], arrays: list[Any], views: int, on_disk: Path | None) -> None:
        self.levels = levels
        self.arrays = arrays
        self.views = views
        self.on_disk = on_disk

    def __len__(self) -> int:
        return next((len(a) for a in self.arrays if a is not None), 0)

    @staticmethod
    def bytes_per_view(levels: list[_Level]) -> int:
        return sum(2 * math.prod(lv.shape) for lv in levels if lv.stored)

    @property
    def nbytes(self) -> int:
        return len(self) * self.views * self.bytes_per_view(self.levels)

    def get(self, index: int, view: int) -> list[Tensor]:
        """Features of image ``index`` in ``view`` (float16 copies, never views of the store)."""
        out: list[Tensor] = []
        for lv, arr in zip(self.levels, self.arrays, strict=True):
            if arr is None:
                out.append(torch.empty((0, lv.shape[1], lv.shape[2]), dtype=torch.float16))
            elif isinstance(arr, Tensor):
                out.append(arr[index, view].clone())
            else:
                out.append(torch.from_numpy(np.array(arr[index, view])))
        return out

    def release(self) -> None:
        """Drop the arrays and delete the on-disk files (if any)."""
        self.arrays = [None] * len(self.arrays)
        if self.on_disk is not None:
            shutil.rmtree(self.on_disk, ignore_errors=True)
            self.on_disk = None


def _empty_like(t: Tensor) -> Tensor:
    return t.new_empty((t.shape[0], 0, *t.shape[2:]))


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def build_feature_cache(
    model: nn.Module,
    dataset: SegDataset,
    size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    hflip: bool,
    budget_bytes: float,
    disk_dir: Path,
    batch_size: int = 8,
    channels_last: bool = False,
    progress: bool = True,
) -> FeatureStore:
    """Run the frozen encoder once over every training image (and its mirror) and store the features.

    Args:
        model: the :class:`~segtune.models.SegModel`, on the device to compute on; its mode is
            restored afterwards (the encoder runs in eval mode, as a frozen one trains).
        dataset: the training :class:`SegDataset` (only its decoded pairs are used).
        size: ``(H, W)`` every image is padded to (bottom/right, after the flip).
        mean, std: input normalisation.
        hflip: cache the flipped view too.
        budget_bytes: RAM budget; above it the features go to ``disk_dir`` (memory-mapped).
        disk_dir: folder for the on-disk fallback (created only when used).
        batch_size: images per encoder pass.
        channels_last: feed NHWC inputs (as the training step does on the CPU).
        progress: progress bar on stderr.

    Raises:
        RunError: features overflow float16 (use ``--cache-features off``).
    """
    from .transforms import flip_only_transforms

    t0 = time.perf_counter()
    views = 2 if hflip else 1
    ignore = int(dataset.ignore_index)
    view_ds = [
        dataset.with_transform(flip_only_transforms(mean, std, ignore, p=float(v), size=size))
        for v in range(views)
    ]
    device = _device(model)
    used = decoder_levels(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            probe = model.encode(torch.zeros(1, 3, *size, device=device))
        levels = [_Level(tuple(int(s) for s in f.shape[1:]), u) for f, u in zip(probe, used, strict=True)]
        del probe
        n = len(dataset)
        need = n * views * FeatureStore.bytes_per_view(levels)
        on_disk: Path | None = None
        arrays: list[Any] = []
        if need <= budget_bytes:
            for lv in levels:
                arrays.append(torch.empty((n, views, *lv.shape), dtype=torch.float16) if lv.stored else None)
            where = "RAM"
        else:
            on_disk = Path(disk_dir)
            shutil.rmtree(on_disk, ignore_errors=True)  # a killed run's leftovers
            on_disk.mkdir(parents=True)
            for k, lv in enumerate(levels):
                arrays.append(
                    np.lib.format.open_memmap(on_disk / f"level{k}.npy", mode="w+", dtype=np.float16,
                                              shape=(n, views, *lv.shape)) if lv.stored else None
                )
            where = f"{on_disk} (over the RAM budget data.cache_max_gb)"
        stored = [k for k, lv in enumerate(levels) if lv.stored]
        _log.info(
            f"feature cache: {n} images x {views} view(s) at {size[1]}x{size[0]}, levels {stored} of "
            f"{len(levels)} (the others the decoder does not read), {need / 2**20:.0f} MiB float16 in {where}"
        )
        with progress_bar(None if progress else False, "caching encoder features", n * views) as advance:
            for start in range(0, n, batch_size):
                idx = range(start, min(n, start + batch_size))
                for v in range(views):
                    x = torch.stack([view_ds[v][i]["image"] for i in idx]).to(device)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with torch.inference_mode():
                        feats = model.encode(x)
                    for k in stored:
                        f16 = feats[k].to(torch.float16)
                        if not bool(torch.isfinite(f16).all()):
                            raise RunError(
                                f"feature cache: encoder level {k} exceeds the float16 range "
                                "(train with --cache-features off)"
                            )
                        if on_disk is None:
                            arrays[k][start : start + len(idx), v] = f16.cpu()
                        else:
                            arrays[k][start : start + len(idx), v] = f16.cpu().numpy()
                    for _ in idx:
                        advance()
    except BaseException:
        if on_disk is not None:
            shutil.rmtree(on_disk, ignore_errors=True)
        raise
    finally:
        model.train(was_training)
    if on_disk is not None:  # reopen read-only: forked data-loader workers map the same pages
        for k in stored:
            arrays[k].flush()
            arrays[k] = np.load(on_disk / f"level{k}.npy", mmap_mode="r")
    _log.info(f"feature cache: built in {time.perf_counter() - t0:.1f} s")
    return FeatureStore(levels, arrays, views, on_disk)


# ----------------------------------------------------------------------------- dataset
class CachedFeatureDataset(Dataset):
    """Training samples from a :class:`FeatureStore`: ``{"features", "mask", "id"}``.

    ``features`` is the list of float16 feature levels of the sample's view, ``mask`` the
    ``(H, W)`` int64 mask padded to ``size`` with ``ignore_index`` (after the flip, like the
    image). Keys are an index or ``(index, sample_seed)``; with a seed the flip is
    :func:`flip_coin` (the live transform's draw), without one it draws from the global RNG.

    Args:
        base: the training :class:`SegDataset` (masks, ids; masks are copied here once).
        store: the cached features.
        size: padded ``(H, W)``.
        flip_p: flip probability (0.5, or 0 when ``data.hflip`` is off).
    """

    def __init__(self, base: SegDataset, store: FeatureStore, size: tuple[int, int], flip_p: float) -> None:
        self.store = store
        self.size = (int(size[0]), int(size[1]))
        self.flip_p = float(flip_p) if store.views > 1 else 0.0
        self.ignore_index = int(base.ignore_index)
        self.ids = list(base.ids)
        self.masks = [np.array(base.load_mask(i)) for i in range(len(base))]  # (h, w), own copy

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            index, seed = int(key[0]), int(key[1])
            flip = flip_coin(seed, self.flip_p)
        else:
            index = int(key)
            flip = self.flip_p > 0 and bool(torch.rand(1) < self.flip_p)
        m = self.masks[index]
        if flip:
            m = m[:, ::-1]
        mask = torch.full(self.size, self.ignore_index, dtype=torch.int64)
        mask[: m.shape[0], : m.shape[1]] = torch.from_numpy(np.ascontiguousarray(m).astype(np.int64))
        return {"features": self.store.get(index, int(flip)), "mask": mask, "id": self.ids[index]}


def feature_collate(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack :class:`CachedFeatureDataset` samples: ``features`` level by level, masks, ids."""
    levels = len(batch[0]["features"])
    return {
        "features": [torch.stack([s["features"][k] for s in batch]) for k in range(levels)],
        "mask": torch.stack([s["mask"] for s in batch]),
        "id": [str(s["id"]) for s in batch],
    }
