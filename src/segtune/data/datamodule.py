"""Lightning data module: pairs, splits, subsets, caching policy and data loaders."""

from __future__ import annotations

import functools
import math
import random
import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .. import _log
from .._tensor import round_up
from ..errors import DataError
from .dataset import Pair, SegDataset, estimate_cache_bytes, mask_storage_dtype, pad_collate
from .split import STREAM_TRAIN_ORDER, split_train_val
from .transforms import eval_transforms, flip_only_transforms, train_transforms

if TYPE_CHECKING:
    from ..config import DataConfig
    from .spec import DatasetSpec

__all__ = ["SegDataModule", "ResumableSampler", "seed_worker"]

def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` from the worker's torch seed.

    torch already gives each worker ``base_seed + worker_id`` (``base_seed`` drawn from the
    loader's generator), so a seeded loader yields the same augmentations on every run.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    # Ctrl-C in a terminal reaches the whole process group: the main process turns it into a
    # checkpoint at the next step boundary, so workers must keep serving batches meanwhile
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class ResumableSampler(DistributedSampler):
    """Seeded training order that can stop and resume anywhere inside an epoch.

    Epoch ``e``'s order is a permutation drawn from ``(seed, e)`` alone (no RNG state to
    save), and every draw is yielded as an ``(index, sample_seed)`` key: :class:`SegDataset`
    seeds the random transform of that sample with ``sample_seed`` (also derived from
    ``(seed, e, index)``), so augmentations do not depend on worker processes or global RNG
    state either. Resuming therefore only needs the position: :meth:`state_dict` /
    :meth:`load_state_dict` hold ``{"epoch", "start"}`` where ``start`` is the number of
    samples (of this rank) already consumed in that epoch; the next iteration skips them.

    It is a :class:`~torch.utils.data.distributed.DistributedSampler` (so Lightning does not
    wrap it): with ``num_replicas > 1`` each rank takes every ``num_replicas``-th sample of
    the permutation, padded by repetition to equal length like the torch sampler.

    Args:
        num_samples: data set length.
        seed: run seed.
        num_replicas, rank: data-parallel world size and this process's rank.
    """

    def __init__(self, num_samples: int, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(range(int(num_samples)), num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=int(seed), drop_last=False)
        self.n = int(num_samples)
        self._start = 0
        self._start_epoch: int | None = None

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(order, sample_seeds)`` of ``epoch``: this rank's indices, and one seed per index."""
        rng = np.random.default_rng([self.seed, STREAM_TRAIN_ORDER, int(epoch)])
        perm = rng.permutation(self.n)
        seeds = rng.integers(0, 2**62, size=self.n, dtype=np.int64)
        total = self.num_samples * self.num_replicas
        if total > self.n:
            perm = np.concatenate([perm] * math.ceil(total / self.n))[:total]
        return perm[self.rank : total : self.num_replicas], seeds

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        epoch = self.epoch
        order, seeds = self.epoch_order(epoch)
        start = self._start if self._start_epoch == epoch else 0
        self._start, self._start_epoch = 0, None
        for i in order[start:].tolist():
            yield i, int(seeds[i])

    def __len__(self) -> int:
        return self.num_samples  # a full epoch, also when resuming (Lightning counts batches)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "start": int(self._start) if self._start_epoch == self.epoch else 0}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at sample ``state["start"]`` of epoch ``state["epoch"]`` (the next iteration only)."""
        self.set_epoch(int(state["epoch"]))
        self._start_epoch = int(state["epoch"])
        self._start = max(0, min(int(state.get("start", 0)), self.num_samples))


class SegDataModule(L.LightningDataModule):
    """Train/val data for one data set: pairing, splitting, subsetting, caching, loaders.

    Args:
        spec: the data set description (``splits['train']`` is required; ``splits['val']``
            optional: without it ``data_cfg.val_fraction`` of the training pairs, at least
            one, are held out with a seeded shuffle).
        data_cfg: loader/augmentation/caching options (:class:`segtune.config.DataConfig`).
        mean, std: per-channel normalisation (the encoder's pretrained statistics).
        seed: seeds the val split, the ``max_*_images`` subsets and the training shuffle.
        skip: image or mask paths to leave out (e.g. the bad pairs found by check-data when
            ``data.skip_bad`` is set).

    Raises:
        DataError: (from :meth:`setup`) no train split, or a split without any pair.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        data_cfg: DataConfig,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int,
        skip: Iterable[Path] = frozenset(),
    ) -> None:
        super().__init__()
        self.spec = spec
        self.cfg = data_cfg
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = int(seed)
        self.skip = frozenset(_norm(p) for p in skip)
        self.ignore_index = int(spec.ignore_index)
        self.num_classes = int(spec.num_classes)
        self._train_pairs: list[Pair] | None = None
        self._val_pairs: list[Pair] | None = None
        self._train_ds: SegDataset | None = None
        self._val_ds: SegDataset | None = None
        self._use_cache: bool = False
        self._class_counts: np.ndarray | None = None
        self._train_position: dict[str, int] | None = None
        self._pad_size: tuple[int, int] | None = None
        self._feature_ds: Any = None  # CachedFeatureDataset when training from cached features

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Find the pairs, split and subset them, pick the cache policy, build the datasets.

        Idempotent: later calls (Lightning calls it once per stage) do nothing.
        """
        if self._train_ds is not None:
            return
        train, val = self._build_pairs()
        self._use_cache = self._decide_cache(train + val)
        self._train_pairs, self._val_pairs = train, val
        mp = getattr(self.cfg, "max_pixels", None)
        self._train_ds = SegDataset(train, self.spec, self.train_transform(), self._use_cache, mp)
        self._val_ds = SegDataset(val, self.spec, self.eval_transform(), self._use_cache, mp)

    def _build_pairs(self) -> tuple[list[Pair], list[Pair]]:
        splits = self.spec.splits
        if "train" not in splits:
            raise DataError(
                f"{self.spec_source}: no 'train' split (add splits: {{train: {{images: DIR, masks: DIR}}}} "
                "to dataset.yaml, or use a folder with images/ and masks/)"
            )
        train = self._split_pairs("train")
        has_val = "val" in splits and splits["val"].masks is not None
        split = split_train_val(
            train, self._split_pairs("val") if has_val else None, val_fraction=self.cfg.val_fraction,
            seed=self.seed, max_train_images=self.cfg.max_train_images,
            max_val_images=self.cfg.max_val_images, source=str(splits["train"].images),
        )
        if split.held_out:
            n = len(train)
            _log.info(
                f"no val split: holding out {split.held_out} of {n} training pairs for "
                f"validation (val_fraction={self.cfg.val_fraction}, seed={self.seed}); "
                f"{n - split.held_out} left for training"
            )
        return split.train, split.val

    def _split_pairs(self, name: str) -> list[Pair]:
        from .pairing import split_pairs

        split = self.spec.splits[name]
        if split.masks is None:
            raise DataError(
                f"{self.spec_source}: split '{name}' has no masks folder (add masks: DIR under splits.{name})"
            )
        pairs, problems = split_pairs(split)
        pairs = sorted((Path(i), Path(m)) for i, m in pairs)
        n_all = len(pairs)
        if self.skip:
            pairs = [p for p in pairs if _norm(p[0]) not in self.skip and _norm(p[1]) not in self.skip]
        if not pairs:
            why = f"{n_all} found, all skipped as bad; " if n_all else ""
            if problems:
                why += f"first problem: {problems[0]}; "
            raise DataError(
                f"{split.images}: no image/mask pairs for split '{name}' ({why}put images there and "
                f"masks with the same file names in {split.masks}; `segtune check-data` explains why)"
            )
        if problems:
            _log.warn(
                f"split '{name}': {len(problems)} pairing problem(s), e.g. {problems[0]}; unpaired or "
                "ambiguous files are left out (run `segtune check-data` to list them all)"
            )
        return pairs

    def _decide_cache(self, pairs: list[Pair]) -> bool:
        mode = self.cfg.cache
        if mode == "ram":
            return True
        if mode == "none":
            return False
        itemsize = mask_storage_dtype(self.num_classes, self.ignore_index).itemsize
        need = estimate_cache_bytes(pairs, mask_itemsize=itemsize)
        budget = float(self.cfg.cache_max_gb) * 2**30
        if need <= budget:
            return True
        _log.info(
            f"decoded images need ~{need / 2**30:.1f} GiB > data.cache_max_gb={self.cfg.cache_max_gb}: "
            "reading images from disk every epoch (raise data.cache_max_gb or set data.cache=ram to cache)"
        )
        return False

    # ------------------------------------------------------------------ accessors
    @property
    def spec_source(self) -> str:
        """Where the spec came from (dataset.yaml or root folder), for messages."""
        return str(getattr(self.spec, "source", None) or self.spec.root)

    @property
    def train_pairs(self) -> list[Pair]:
        """Training ``(image, mask)`` pairs after split, skip and subset (runs :meth:`setup`)."""
        self.setup()
        assert self._train_pairs is not None
        return list(self._train_pairs)

    @property
    def val_pairs(self) -> list[Pair]:
        """Validation ``(image, mask)`` pairs after split, skip and subset (runs :meth:`setup`)."""
        self.setup()
        assert self._val_pairs is not None
        return list(self._val_pairs)

    @property
    def train_dataset(self) -> SegDataset:
        """Training dataset (train transforms)."""
        self.setup()
        assert self._train_ds is not None
        return self._train_ds

    @property
    def val_dataset(self) -> SegDataset:
        """Validation dataset (eval transforms)."""
        self.setup()
        assert self._val_ds is not None
        return self._val_ds

    @property
    def uses_cache(self) -> bool:
        """Whether decoded images are kept in RAM (resolved from ``data.cache``)."""
        self.setup()
        return self._use_cache

    def train_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """The training transform built from the config.

        ``data.augment: flip``: whole images, flipped at random (``data.hflip``), normalised and
        padded to :meth:`train_pad_size`; otherwise rescale / crop / flip / jitter.
        """
        c = self.cfg
        if getattr(c, "augment", "full") == "flip":
            return flip_only_transforms(self.mean, self.std, self.ignore_index,
                                        p=0.5 if c.hflip else 0.0, size=self.train_pad_size())
        # crop_size None: a DataConfig that auto did not resolve (used directly): the former default
        return train_transforms(
            c.crop_size or 384, self.mean, self.std, self.ignore_index,
            scale=(c.scale_min, c.scale_max), hflip=c.hflip, color_jitter=c.color_jitter,
        )

    def eval_transform(self) -> Callable[[dict[str, Any]], dict[str, Any]]:
        """The evaluation transform (normalise + pad to a multiple of 32)."""
        return eval_transforms(self.mean, self.std, self.ignore_index)

    def train_pad_size(self) -> tuple[int, int]:
        """``(H, W)``: the largest training image (from headers), rounded up to a multiple of 32.

        ``data.augment: flip`` pads every training image to it, so whole images stack into
        batches and a cached feature map equals the live encoder's on the padded image.
        """
        if self._pad_size is None:
            from .decode import image_size

            assert self._train_pairs is not None, "setup() first"
            sizes = [image_size(i) for i, _ in self._train_pairs]
            self._pad_size = (round_up(max(h for _, h in sizes)), round_up(max(w for w, _ in sizes)))
        return self._pad_size

    def train_from_features(
        self, model: torch.nn.Module, disk_dir: Path, channels_last: bool = False, progress: bool = True
    ) -> None:
        """Run the frozen encoder once over every training image (and its mirror) and train
        from the stored features from now on (:mod:`segtune.data.feature_cache`).

        The decoded training images are dropped afterwards; :meth:`train_from_images` frees the
        features (RAM and ``disk_dir``) again.

        Args:
            model: the :class:`~segtune.models.SegModel`, on the device to compute on.
            disk_dir: folder for the on-disk fallback above ``data.cache_max_gb``.
            channels_last: compute as the training step does on a CPU (NHWC).
            progress: progress bar on stderr.
        """
        from .feature_cache import CachedFeatureDataset, build_feature_cache

        size = self.train_pad_size()
        store = build_feature_cache(
            model, self.train_dataset, size, self.mean, self.std, hflip=self.cfg.hflip,
            budget_bytes=float(self.cfg.cache_max_gb) * 2**30, disk_dir=disk_dir,
            batch_size=int(self.cfg.batch_size), channels_last=channels_last, progress=progress,
        )
        self._feature_ds = CachedFeatureDataset(self.train_dataset, store, size, 0.5 if self.cfg.hflip else 0.0)
        self.train_dataset.clear_cache()  # decoded training images are not needed any more

    def train_from_images(self) -> None:
        """Stop training from cached features (if any) and free them."""
        if self._feature_ds is not None:
            self._feature_ds.store.release()
            self._feature_ds = None

    @property
    def feature_dataset(self) -> Any:
        """The cached-feature training dataset in use, or ``None``."""
        return self._feature_ds

    def dataset(self, split: str, transform: Callable[[dict[str, Any]], dict[str, Any]] | None) -> SegDataset:
        """The ``train`` or ``val`` pairs with another transform, sharing the RAM cache.

        E.g. ``dm.dataset("train", flip_only_transforms(dm.mean, dm.std, dm.ignore_index, p=0))``.
        """
        if split == "train":
            return self.train_dataset.with_transform(transform)
        if split == "val":
            return self.val_dataset.with_transform(transform)
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")

    def collate_fn(self) -> Callable[[Sequence[dict[str, Any]]], dict[str, Any]]:
        """``pad_collate`` bound to this data set's ignore_index (picklable)."""
        return functools.partial(pad_collate, ignore_index=self.ignore_index)

    def preload(self, progress: bool = True) -> None:
        """Decode train and val into the RAM cache now (no-op when caching is off)."""
        self.train_dataset.preload(progress=progress)
        self.val_dataset.preload(progress=progress)

    # ------------------------------------------------------------------ statistics
    def class_pixel_counts(self) -> np.ndarray:
        """Labelled pixels per class over the training masks (ignore excluded; memoised).

        Uses cached masks when loaded; otherwise reads masks only (fills nothing).

        Returns:
            ``(C,)`` int64 counts.
        """
        if self._class_counts is None:
            ds = self.train_dataset
            counts = np.zeros(self.num_classes, dtype=np.int64)
            for i in range(len(ds)):
                m = ds.load_mask(i).ravel()
                m = m[(m >= 0) & (m < self.num_classes)]
                counts += np.bincount(m.astype(np.intp, copy=False), minlength=self.num_classes)[
                    : self.num_classes
                ]
            self._class_counts = counts
        return self._class_counts.copy()

    # ------------------------------------------------------------------ loaders
    def _loader_kwargs(self) -> dict[str, Any]:
        nw = int(self.cfg.num_workers)
        kw: dict[str, Any] = {
            "num_workers": nw,
            "collate_fn": self.collate_fn(),
            "pin_memory": torch.cuda.is_available(),
        }
        if nw > 0:
            kw["persistent_workers"] = True
            kw["worker_init_fn"] = seed_worker
        return kw

    def set_train_position(self, epoch: int, start: int) -> None:
        """Make the next :meth:`train_dataloader` begin at sample ``start`` of ``epoch`` (resume)."""
        self._train_position = {"epoch": int(epoch), "start": int(start)}

    def train_dataloader(self) -> DataLoader:
        """Shuffled, random-crop batches in a seeded, resumable order (:class:`ResumableSampler`).

        Drops the last partial batch only when there is more than one batch. Under
        data-parallel training each rank gets its share (the sampler is the distributed one).
        """
        ds = self._feature_ds if self._feature_ds is not None else self.train_dataset
        bs = int(self.cfg.batch_size)
        world, rank = 1, 0
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            world, rank = int(trainer.world_size), int(trainer.global_rank)
        sampler = ResumableSampler(len(ds), self.seed, num_replicas=world, rank=rank)
        if self._train_position is not None:
            sampler.load_state_dict(self._train_position)
            self._train_position = None
        gen = torch.Generator()  # for the workers' base seed only: keeps the global RNG untouched
        gen.manual_seed(self.seed)
        kw = self._loader_kwargs()
        if self._feature_ds is not None:
            from .feature_cache import feature_collate

            kw["collate_fn"] = feature_collate
        return DataLoader(
            ds, batch_size=bs, sampler=sampler, generator=gen, drop_last=len(sampler) > bs, **kw,
        )

    def val_dataloader(self, whole: bool = False) -> DataLoader:
        """Full-size validation batches in file order (padded to a multiple of 32).

        Under data-parallel training (``torch.distributed`` running with more than one process)
        each rank gets its share, every image scored by exactly one rank (no padding repeats:
        Lightning's default sampler would score some twice); ``whole=True`` gives every image.
        """
        import torch.distributed as dist

        gen = torch.Generator()  # own generator: validating never advances the global RNG
        gen.manual_seed(self.seed)
        kw = self._loader_kwargs()
        bs = int(self.cfg.val_batch_size)
        if not whole and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(self.val_dataset, shuffle=False)
            return DataLoader(self.val_dataset, batch_size=bs, sampler=sampler, generator=gen, **kw)
        return DataLoader(self.val_dataset, batch_size=bs, shuffle=False, generator=gen, **kw)


def _norm(p: Path | str) -> Path:
    p = Path(p)
    try:
        return p.resolve()
    except OSError:  # pragma: no cover
        return p.absolute()
