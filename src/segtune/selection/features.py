"""Frozen encoder features at a class-balanced sample of labelled pixels.

Two phases, so that features are only kept for the sampled pixels:

1. :func:`sample_pixels` (once per data set, whatever the encoder): every training mask is
   padded like the images (bottom/right to a multiple of 32, padding = ignore) and reduced to the
   feature grid of the chosen level (stride ``s``) by **majority vote** over each ``s x s`` block,
   the ignore label voting too; blocks whose majority is ignore are left out. Then at most
   ``per_class`` grid cells per class are drawn without replacement (seeded): classes with fewer
   cells keep all of theirs.
2. :func:`extract_features` (per encoder): each image is normalised with the encoder's mean/std
   (no augmentation), padded, encoded once, and the feature vectors of the sampled cells are read.

Feature levels: :data:`segtune.selection.levels.LEVELS` (``--levels``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._progress import progress_iter
from .levels import LEVELS, Level

__all__ = ["LEVELS", "Level", "PixelSample", "grid_labels", "sample_pixels", "extract_features"]


def grid_labels(mask: Tensor, stride: int, num_classes: int, ignore_index: int) -> Tensor:
    """Majority label of each ``stride x stride`` block; ``-1`` where ignore wins.

    Args:
        mask: (H, W) int64 labels, H and W multiples of ``stride``.
        stride: block side (the feature map's output stride).
        num_classes: C; labels outside ``0..C-1`` count as ignore.
        ignore_index: the excluded label.

    Returns:
        (H / stride, W / stride) int64 labels in ``-1..C-1`` (ties go to the lower label).
    """
    m = mask.long().clone()
    m[(m < 0) | (m >= num_classes) | (m == ignore_index)] = num_classes
    onehot = F.one_hot(m, num_classes + 1).permute(2, 0, 1)[None].float()
    votes = F.avg_pool2d(onehot, stride)[0]
    lab = votes.argmax(dim=0)
    lab[lab == num_classes] = -1
    return lab


@dataclass
class PixelSample:
    """The sampled grid cells.

    Attributes:
        stride: feature stride the cells refer to.
        cells: image index -> flat cell indices (sorted) into that image's padded grid.
        labels: image index -> (k,) int64 labels of those cells.
        counts: class -> cells available before sampling (the class frequency at this stride).
    """

    stride: int
    cells: dict[int, np.ndarray]
    labels: dict[int, np.ndarray]
    counts: dict[int, int]

    @property
    def n(self) -> int:
        """Number of sampled cells N."""
        return int(sum(len(v) for v in self.cells.values()))

    def all_labels(self) -> np.ndarray:
        """(N,) labels in the order :func:`extract_features` returns rows."""
        return np.concatenate([self.labels[i] for i in sorted(self.cells)]) if self.cells else np.zeros(0, np.int64)


def _pad_mask(mask: Tensor, ignore_index: int, multiple: int = 32) -> Tensor:
    from ..data.transforms import pad_to_multiple

    return pad_to_multiple(mask[None], multiple, fill=ignore_index)[0]


def sample_pixels(
    masks: Sequence[Callable[[], Tensor]],
    stride: int,
    num_classes: int,
    ignore_index: int,
    per_class: int,
    seed: int = 0,
) -> PixelSample:
    """Draw a class-balanced sample of grid cells from the training masks.

    Args:
        masks: one loader per image returning its (H, W) int64 mask (unpadded, as decoded).
        stride: feature stride (see :data:`LEVELS`).
        num_classes, ignore_index: from the data set.
        per_class: at most this many cells per class.
        seed: sampling seed.

    Returns:
        A :class:`PixelSample`.
    """
    where: dict[int, list[np.ndarray]] = {c: [] for c in range(num_classes)}
    for i, load in enumerate(masks):
        lab = grid_labels(_pad_mask(load(), ignore_index), stride, num_classes, ignore_index).reshape(-1).numpy()
        for c in np.unique(lab[lab >= 0]):
            idx = np.flatnonzero(lab == c)
            where[int(c)].append(np.stack([np.full(idx.size, i), idx, np.full(idx.size, c)], axis=1))
    rng = np.random.default_rng(seed)
    chosen, counts = [], {}
    for c, parts in where.items():
        if not parts:
            continue
        allc = np.concatenate(parts)
        counts[c] = len(allc)
        keep = rng.choice(len(allc), size=min(per_class, len(allc)), replace=False)
        chosen.append(allc[np.sort(keep)])
    cells: dict[int, np.ndarray] = {}
    labels: dict[int, np.ndarray] = {}
    if chosen:
        table = np.concatenate(chosen)
        table = table[np.lexsort((table[:, 1], table[:, 0]))]
        for i in np.unique(table[:, 0]):
            rows = table[table[:, 0] == i]
            cells[int(i)], labels[int(i)] = rows[:, 1], rows[:, 2]
    return PixelSample(stride, cells, labels, counts)


def _batches(sample: PixelSample, images: Sequence[Callable[[], Tensor]], mean: Tensor, std: Tensor,
             batch_size: int):
    """Yield ``(indices, (B, 3, H, W) padded normalised images)``; one size per batch."""
    from ..data.transforms import pad_to_multiple

    group: list[int] = []
    xs: list[Tensor] = []
    for i in sorted(sample.cells):
        x = pad_to_multiple((images[i]() - mean) / std, 32, fill=0.0)
        if xs and (x.shape != xs[0].shape or len(xs) == batch_size):
            yield group, torch.stack(xs)
            group, xs = [], []
        group.append(i)
        xs.append(x)
    if xs:
        yield group, torch.stack(xs)


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module,
    images: Sequence[Callable[[], Tensor]],
    sample: PixelSample,
    level: Level,
    device: str = "cpu",
    show_progress: bool | None = None,
    description: str = "features",
    batch_size: int = 4,
) -> np.ndarray:
    """Frozen features of ``model``'s encoder at the sampled cells.

    Args:
        model: a :class:`segtune.models.SegModel` of an SMP architecture (eval mode).
        images: one loader per image returning its (3, H, W) float32 image in [0, 1].
        sample: from :func:`sample_pixels` with ``level.stride``.
        level: the feature level.
        device: torch device.
        show_progress: progress bar (None: when stderr is a terminal).
        description: progress-bar text.
        batch_size: images per forward pass (images of one padded size are batched).

    Returns:
        (N, D) float32 features, rows in the order of :meth:`PixelSample.all_labels`.
    """
    layout = torch.channels_last if str(device) == "cpu" else torch.contiguous_format
    model = model.to(device).eval().to(memory_format=layout)
    mean = torch.tensor(model.mean).view(3, 1, 1)
    std = torch.tensor(model.std).view(3, 1, 1)
    rows = []
    n_batches = -(-len(sample.cells) // max(1, batch_size))
    batches = _batches(sample, images, mean, std, max(1, batch_size))
    for group, x in progress_iter(batches, description, total=n_batches, show=show_progress):
        f = level.combine(model.encode(x.to(device).contiguous(memory_format=layout)))  # (B, D, h, w)
        flat = f.reshape(f.shape[0], f.shape[1], -1)
        for b, i in enumerate(group):
            idx = torch.from_numpy(sample.cells[i]).to(device)
            rows.append(flat[b][:, idx].T.float().cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
