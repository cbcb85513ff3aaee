"""What ``auto`` looks at before choosing: a cheap probe of the training data.

:class:`DataProbe` holds the three facts :mod:`segtune.strategies.auto` decides from: the number
of labelled training images, their sizes (from the file headers, nothing decoded), and a measured
signal of domain shift, :func:`bn_shift`: how far the statistics of the data's features inside the
pretrained encoder lie from the statistics its BatchNorm layers recorded on the pretraining data
(ImageNet). A frozen encoder normalises every layer with those recorded statistics, so when the
data's own statistics are far from them, the frozen features are off-distribution and updating
the encoder pays (measured on CamVid and ISBI 2012 EM, ``benchmarks/auto.py``).

The shift is one forward pass of the encoder in eval mode over a few training images (seeded
choice, each downscaled to at most ``max_side`` pixels): about a second on a CPU.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["DataProbe", "bn_shift", "image_sizes", "probe_data", "shift_of_images"]


@dataclass(frozen=True)
class DataProbe:
    """The facts ``auto`` decides from.

    Attributes:
        num_images: labelled training images.
        sizes: ``(W, H)`` in pixels of the training images (all, or a seeded sample).
        shift: :func:`bn_shift` of the pretrained encoder on a few training images (nats, mean
            median over BatchNorm layers of the mean over channels), or None when not measured (the encoder has no
            BatchNorm layer, or the strategy was set by the user).
    """

    num_images: int
    sizes: tuple[tuple[int, int], ...] = field(default_factory=tuple)
    shift: float | None = None


def _gauss_kl(m1: torch.Tensor, v1: torch.Tensor, m0: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
    """Per-channel KL( N(m1, v1) || N(m0, v0) ) in nats."""
    return 0.5 * (torch.log(v0 / v1) + (v1 + (m1 - m0) ** 2) / v0 - 1.0)


@torch.inference_mode()
def bn_shift(encoder: nn.Module, images: Sequence[torch.Tensor], eps: float = 1e-3) -> float | None:
    """Mean KL divergence between the data's per-channel feature statistics at every BatchNorm
    input and the running statistics stored in that layer.

    For each BatchNorm layer and channel, the data's mean and variance over all pixels of all
    ``images`` are compared with the layer's ``running_mean`` / ``running_var`` as two Gaussians:
    ``KL(data || stored)``; the result is the mean over channels, then the median over layers
    (robust to the few deepest layers, whose statistics vary most with image size). 0 means the
    data looks like the pretraining data to every layer; measured with EfficientNet-Lite0: about
    0.07-0.10 on CamVid road scenes, 0.33-0.37 on ISBI 2012 EM slices (``benchmarks/auto.json``).

    Args:
        encoder: a pretrained module with BatchNorm layers (run in eval mode, restored after).
        images: normalised ``(3, H, W)`` float tensors (sizes may differ).
        eps: added to both variances (guards channels with ~0 variance).

    Returns:
        The shift in nats, or None when ``encoder`` has no BatchNorm layer with running stats.
    """
    bns = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and m.running_mean is not None and m.running_var is not None]
    if not bns or not images:
        return None
    acc: dict[int, list[torch.Tensor]] = {}

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...]) -> None:
        x = inp[0].detach().double().transpose(0, 1).flatten(1)  # (C, N*H*W)
        s = acc.setdefault(id(mod), [torch.zeros(x.shape[0], dtype=torch.float64)] * 2 + [torch.zeros(())])
        acc[id(mod)] = [s[0] + x.sum(1), s[1] + (x * x).sum(1), s[2] + x.shape[1]]

    handles = [m.register_forward_pre_hook(hook) for m in bns]
    was_training = encoder.training
    encoder.eval()
    try:
        for img in images:
            encoder(img.unsqueeze(0).float())
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    kls = []
    for m in bns:
        if id(m) not in acc:
            continue
        s, ss, n = acc[id(m)]
        mean = s / n
        var = (ss / n - mean * mean).clamp_min(0.0)
        kl = _gauss_kl(mean, var + eps, m.running_mean.double(), m.running_var.double() + eps)
        kls.append(float(kl.mean()))
    return float(np.median(kls)) if kls else None


def _load_normalised(path: Path, mean: Sequence[float], std: Sequence[float], max_side: int) -> torch.Tensor:
    """``(3, H, W)`` float image, downscaled so that its longer side is at most ``max_side`` and
    both sides are multiples of 32 (at least 32)."""
    import torch.nn.functional as F

    from ..data.decode import read_image

    x = torch.from_numpy(read_image(path).copy()).permute(2, 0, 1).float().div(255.0)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    h, w = x.shape[1:]
    s = min(1.0, max_side / max(h, w))
    size = (max(32, round(h * s / 32) * 32), max(32, round(w * s / 32) * 32))
    if size != (h, w):
        x = F.interpolate(x.unsqueeze(0), size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return x


def shift_of_images(model: nn.Module, paths: Sequence[Path], max_side: int = 384) -> float | None:
    """:func:`bn_shift` of ``model.encoder`` (or ``model`` itself) on the images at ``paths``,
    normalised with ``model.mean`` / ``model.std`` (ImageNet's when absent)."""
    mean = getattr(model, "mean", (0.485, 0.456, 0.406))
    std = getattr(model, "std", (0.229, 0.224, 0.225))
    try:
        encoder = model.encoder  # type: ignore[union-attr]
    except (AttributeError, NotImplementedError):
        encoder = model
    return bn_shift(encoder, [_load_normalised(Path(p), mean, std, max_side) for p in paths])


def image_sizes(paths: Sequence[Path], limit: int = 200, seed: int = 0) -> tuple[tuple[int, int], ...]:
    """``(W, H)`` from the headers of at most ``limit`` images (a seeded sample beyond that)."""
    from ..data.decode import image_size

    paths = list(paths)
    if len(paths) > limit:
        paths = random.Random(seed).sample(paths, limit)
    return tuple(image_size(p) for p in paths)


def probe_data(
    image_paths: Sequence[Path],
    model: nn.Module | None = None,
    num_shift_images: int = 8,
    seed: int = 0,
) -> DataProbe:
    """Probe the training images: their count and sizes, and the shift when ``model`` is given.

    Args:
        image_paths: the training images (the split's, after the train/val split).
        model: the pretrained model ``auto`` would fine-tune (None: shift not measured).
        num_shift_images: images used for :func:`bn_shift` (evenly spaced in a seeded shuffle).
        seed: the sampling seed.

    Returns:
        A :class:`DataProbe`.
    """
    paths = [Path(p) for p in image_paths]
    shift = None
    if model is not None and paths:
        pick = sorted(paths)
        random.Random(seed).shuffle(pick)
        step = max(1, math.ceil(len(pick) / num_shift_images))
        shift = shift_of_images(model, pick[::step][:num_shift_images])
    return DataProbe(num_images=len(paths), sizes=image_sizes(paths, seed=seed), shift=shift)
