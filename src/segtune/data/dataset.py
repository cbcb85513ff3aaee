"""Image/mask pairs as a torch Dataset, with an in-RAM cache of decoded arrays.

Decoding a PNG/JPEG costs far more than augmenting it, so :class:`SegDataset` keeps every
decoded image (``(H, W, 3) uint8``) and mask (``(H, W)``, ``uint8`` when the labels and
``ignore_index`` fit, else ``int16``/``int32``) in RAM after the first access.

Caching and DataLoader workers: with ``num_workers=0`` (segtune's default) the cache lives
in the main process and fills during the first epoch. With ``num_workers > 0`` every worker
process holds its *own* copy that it fills itself (memory x workers, and each worker decodes
its share again once). Call :meth:`SegDataset.preload` before creating the loaders to decode
everything once in the main process: forked workers then share the arrays copy-on-write.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .._progress import progress as progress_bar
from ..errors import DataError

if TYPE_CHECKING:
    from .spec import DatasetSpec

__all__ = [
    "SegDataset",
    "pad_collate",
    "estimate_cache_bytes",
    "mask_storage_dtype",
    "seeded_rng",
    "Pair",
]

Pair = tuple[Path, Path]
Sample = dict[str, Any]


def mask_storage_dtype(num_classes: int, ignore_index: int) -> np.dtype:
    """Smallest integer dtype holding labels ``0..num_classes-1`` and ``ignore_index``.

    Returns:
        ``uint8`` when everything lies in 0..255, else ``int16`` or ``int32``.
    """
    lo = min(0, int(ignore_index))
    hi = max(int(num_classes) - 1, int(ignore_index))
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def estimate_cache_bytes(pairs: Sequence[Pair], mask_itemsize: int = 1, max_probe: int = 2000) -> int:
    """RAM needed to cache the decoded pairs, from image headers (nothing is decoded).

    Counts ``W * H * 3`` bytes per image plus ``W * H * mask_itemsize`` per mask. Above
    ``max_probe`` pairs an evenly spaced sample of headers is read and extrapolated.

    Args:
        pairs: ``(image_path, mask_path)`` pairs.
        mask_itemsize: bytes per cached mask pixel (1 for ``uint8`` masks).
        max_probe: at most this many headers are read.

    Returns:
        Estimated bytes (int).
    """
    from . import decode

    n = len(pairs)
    if n == 0:
        return 0
    idx = range(n) if n <= max_probe else np.linspace(0, n - 1, max_probe).round().astype(int)
    total = 0
    for i in idx:
        w, h = decode.image_size(pairs[int(i)][0])
        total += int(w) * int(h) * (3 + mask_itemsize)
    return int(round(total * n / len(idx)))


class SegDataset(Dataset):
    """Image/mask pairs -> transformed samples, decoded arrays cached in RAM.

    Each item is ``{"image": (3, H, W) float32, "mask": (H, W) int64, "id": str}`` (plain
    tensors) where ``id`` is the image file stem and the tensors are what ``transform``
    returns. ``transform`` receives ``{"image": tv_tensors.Image (3,H,W) uint8,
    "mask": tv_tensors.Mask (H,W) uint8/int16/int32}`` (see :mod:`segtune.data.transforms`);
    with ``transform=None`` the image is only scaled to float32 [0, 1] (not normalised).

    Args:
        pairs: ``(image_path, mask_path)`` pairs, in dataset order.
        spec: the data set description (``num_classes``, ``ignore_index``, colours, format).
        transform: joint transform for the dict sample, or ``None``.
        cache: keep decoded arrays in RAM after the first access (per process; see the
            module docstring about DataLoader workers and :meth:`preload`).
        max_pixels: refuse images above this many pixels (``DataConfig.max_pixels``);
            ``None`` keeps the reader's default.

    Raises:
        DataError: (on access) image and mask sizes differ, or a mask holds a label outside
            ``0..num_classes-1`` that is not ``ignore_index``.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        spec: DatasetSpec,
        transform: Callable[[Sample], Sample] | None = None,
        cache: bool = True,
        max_pixels: int | None = None,
    ) -> None:
        self.pairs: list[Pair] = [(Path(i), Path(m)) for i, m in pairs]
        self.spec = spec
        self.transform = transform
        self.cache = bool(cache)
        self.max_pixels = max_pixels
        self.num_classes = int(spec.num_classes)
        self.ignore_index = int(spec.ignore_index)
        self.mask_dtype = mask_storage_dtype(self.num_classes, self.ignore_index)
        self.ids: list[str] = [p[0].stem for p in self.pairs]
        self._cache: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(self.pairs)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int | tuple[int, int]) -> Sample:
        """Sample ``index``; with an ``(index, seed)`` key the random transform is seeded by ``seed``.

        A seeded key (what :class:`segtune.data.datamodule.ResumableSampler` yields) makes the
        augmentation a pure function of the key: it does not depend on the process, the
        data-loader worker or any global RNG state (which is left untouched), so a resumed
        run and any ``num_workers`` see exactly the same crops, flips and colours.
        """
        seed: int | None = None
        if isinstance(index, tuple):
            index, seed = int(index[0]), int(index[1])
        image, mask = self.load(index)
        img_t = torch.from_numpy(image).permute(2, 0, 1)
        mask_t = torch.from_numpy(mask)
        sample: Sample = {"image": tv_tensors.Image(img_t), "mask": tv_tensors.Mask(mask_t)}
        if self.transform is not None:
            if seed is None:
                sample = self.transform(sample)
            else:
                with seeded_rng(seed):
                    sample = self.transform(sample)
            out_img = sample["image"].as_subclass(torch.Tensor)
            out_mask = sample["mask"].as_subclass(torch.Tensor)
        else:
            out_img = img_t.to(torch.float32).div_(255.0)
            out_mask = mask_t
        if out_img.dtype != torch.float32:
            out_img = out_img.to(torch.float32)
        # never hand out memory that aliases the cache
        if out_mask.dtype != torch.int64:
            out_mask = out_mask.to(torch.int64)
        elif _shares_memory(out_mask, mask_t):
            out_mask = out_mask.clone()
        if _shares_memory(out_img, img_t):
            out_img = out_img.clone()
        return {"image": out_img.contiguous(), "mask": out_mask.contiguous(), "id": self.ids[index]}

    def with_transform(self, transform: Callable[[Sample], Sample] | None) -> SegDataset:
        """A view of the same pairs with another transform, sharing this dataset's RAM cache.

        E.g. ``ds.with_transform(flip_only_transforms(mean, std, ignore))`` for feature caching.
        """
        other = copy.copy(self)
        other.transform = transform
        return other  # ``_cache`` is the same list object: fills are shared

    # ------------------------------------------------------------------ decoding
    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded, untransformed arrays of pair ``index`` (from the cache when present).

        Returns:
            ``(image (H, W, 3) uint8, mask (H, W) self.mask_dtype)``. Treat as read-only.
        """
        hit = self._cache[index]
        if hit is not None:
            return hit
        arrays = self._decode(index)
        if self.cache:
            self._cache[index] = arrays
        return arrays

    def load_mask(self, index: int) -> np.ndarray:
        """Mask ``(H, W)`` of pair ``index``: from the cache if present, else decoded (not cached)."""
        hit = self._cache[index]
        if hit is not None:
            return hit[1]
        from . import decode

        return self._check_mask(decode.read_mask(self.pairs[index][1], self.spec, **self._limits()), index)

    def _limits(self) -> dict[str, int]:
        return {} if self.max_pixels is None else {"max_pixels": int(self.max_pixels)}

    def _decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from . import decode

        img_path, mask_path = self.pairs[index]
        # writable + C-contiguous: torch.from_numpy warns about read-only arrays (Pillow's are)
        image = np.require(decode.read_image(img_path, **self._limits()), np.uint8, ["C", "W"])
        mask = self._check_mask(decode.read_mask(mask_path, self.spec, **self._limits()), index)
        if image.shape[:2] != mask.shape[:2]:
            raise DataError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {img_path.name} is "
                f"{image.shape[1]}x{image.shape[0]} (masks must have the image's size; "
                "run `segtune check-data`)"
            )
        return image, mask

    def _check_mask(self, mask: np.ndarray, index: int) -> np.ndarray:
        mask = np.asarray(mask)
        if mask.size:
            bad = (mask != self.ignore_index) & ((mask < 0) | (mask >= self.num_classes))
            if bad.any():
                values = np.unique(mask[bad])[:5].tolist()
                raise DataError(
                    f"{self.pairs[index][1]}: label values {values} outside 0..{self.num_classes - 1} "
                    f"and not ignore_index={self.ignore_index} (fix the mask or the classes in "
                    "dataset.yaml; `segtune check-data` lists all such files)"
                )
        return np.require(mask, self.mask_dtype, ["C", "W"])

    # ------------------------------------------------------------------ cache
    @property
    def cached_count(self) -> int:
        """Number of pairs currently held in the RAM cache."""
        return sum(c is not None for c in self._cache)

    @property
    def cache_bytes(self) -> int:
        """Bytes currently held by the RAM cache."""
        return sum(c[0].nbytes + c[1].nbytes for c in self._cache if c is not None)

    def clear_cache(self) -> None:
        """Drop all cached arrays."""
        self._cache[:] = [None] * len(self._cache)

    def preload(self, progress: bool = True, threads: int | None = None) -> None:
        """Decode every pair into the cache now (threads; rich progress bar on stderr).

        Do this before creating DataLoaders with ``num_workers > 0`` so forked workers share
        the cache copy-on-write instead of each decoding and holding their own copy.
        Does nothing when ``cache=False``.

        Args:
            progress: show a progress bar (hidden in quiet mode).
            threads: decoding threads (default: up to 8, at most the CPU count).
        """
        if not self.cache:
            return
        todo = [i for i, c in enumerate(self._cache) if c is None]
        if not todo:
            return
        threads = threads or max(1, min(8, os.cpu_count() or 1))
        with progress_bar(None if progress else False, "decoding images", len(todo)) as advance:
            if threads == 1:
                for i in todo:
                    self.load(i)
                    advance()
            else:
                with ThreadPoolExecutor(threads) as pool:
                    for _ in pool.map(self.load, todo):
                        advance()


# ---------------------------------------------------------------------- collate
def pad_collate(batch: Sequence[Sample], ignore_index: int, multiple: int = 32) -> dict[str, Any]:
    """Stack samples of different sizes, padding bottom/right to a common size.

    The common size is the largest H and W in the batch rounded up to ``multiple``. Images
    are padded with 0 (the mean colour once normalised), masks with ``ignore_index``. Use
    ``functools.partial(pad_collate, ignore_index=spec.ignore_index)`` as ``collate_fn``.

    Args:
        batch: samples ``{"image": (3, H, W) float, "mask": (H, W) int, "id": str}``.
        ignore_index: fill value for padded mask pixels.
        multiple: size granularity.

    Returns:
        ``{"image": (N, 3, H, W) float32, "mask": (N, H, W) int64, "id": list[str]}``.
    """
    if not batch:
        raise ValueError("pad_collate: empty batch")
    hs = [int(s["image"].shape[-2]) for s in batch]
    ws = [int(s["image"].shape[-1]) for s in batch]
    h = int(math.ceil(max(hs) / multiple) * multiple)
    w = int(math.ceil(max(ws) / multiple) * multiple)
    c = int(batch[0]["image"].shape[0])
    images = torch.zeros((len(batch), c, h, w), dtype=torch.float32)
    masks = torch.full((len(batch), h, w), int(ignore_index), dtype=torch.int64)
    for k, s in enumerate(batch):
        img, m = s["image"], s["mask"]
        if tuple(m.shape[-2:]) != tuple(img.shape[-2:]):
            raise ValueError(f"pad_collate: sample {s.get('id', k)}: image {tuple(img.shape)} "
                             f"and mask {tuple(m.shape)} sizes differ")
        images[k, :, : hs[k], : ws[k]] = img
        masks[k, : hs[k], : ws[k]] = m
    out: dict[str, Any] = {"image": images, "mask": masks, "id": [str(s.get("id", "")) for s in batch]}
    return out


# ---------------------------------------------------------------------- helpers
@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with torch (CPU), NumPy and ``random`` seeded by ``seed``; restore them after.

    Only the CPU torch generator is touched (never CUDA's), so training-time randomness
    outside the block (dropout, ...) continues exactly as if the block had not run.
    """
    seed = int(seed) % 2**63
    py_state = random.getstate()
    np_state = np.random.get_state()
    cpu_state = torch.get_rng_state()
    try:
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
    finally:
        torch.set_rng_state(cpu_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except RuntimeError:  # pragma: no cover - exotic tensors
        return False


