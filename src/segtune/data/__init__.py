"""Data: dataset description, decoding, pairing, checks, transforms, datasets and loaders.

Names are imported lazily (on first attribute access), so ``import segtune.data`` is cheap
and e.g. ``segtune.data.spec`` does not pull in torch or Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_getattr

__all__ = [
    # spec.py
    "DatasetSpec",
    "Split",
    "load_dataset_spec",
    # decode.py
    "read_image",
    "read_mask",
    "image_size",
    # pairing.py
    "find_pairs",
    "split_pairs",
    # check.py
    "check_data",
    "DataReport",
    "Problem",
    # transforms.py
    "train_transforms",
    "eval_transforms",
    "flip_only_transforms",
    "pad_to_multiple",
    # dataset.py
    "SegDataset",
    "pad_collate",
    "estimate_cache_bytes",
    # datamodule.py
    "SegDataModule",
    # synthetic.py
    "make_synthetic_dataset",
]

_WHERE = {
    "DatasetSpec": "spec",
    "Split": "spec",
    "load_dataset_spec": "spec",
    "read_image": "decode",
    "read_mask": "decode",
    "image_size": "decode",
    "find_pairs": "pairing",
    "split_pairs": "pairing",
    "check_data": "check",
    "DataReport": "check",
    "Problem": "check",
    "train_transforms": "transforms",
    "eval_transforms": "transforms",
    "flip_only_transforms": "transforms",
    "pad_to_multiple": "transforms",
    "SegDataset": "dataset",
    "pad_collate": "dataset",
    "estimate_cache_bytes": "dataset",
    "SegDataModule": "datamodule",
    "make_synthetic_dataset": "synthetic",
}

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .check import DataReport, Problem, check_data
    from .datamodule import SegDataModule
    from .dataset import SegDataset, estimate_cache_bytes, pad_collate
    from .decode import image_size, read_image, read_mask
    from .pairing import find_pairs, split_pairs
    from .spec import DatasetSpec, Split, load_dataset_spec
    from .synthetic import make_synthetic_dataset
    from .transforms import eval_transforms, flip_only_transforms, pad_to_multiple, train_transforms


__getattr__ = lazy_getattr(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
