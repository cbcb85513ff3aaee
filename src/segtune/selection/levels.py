"""Which encoder features the scores see (``--levels``); a registry, light to import.

* ``multi`` (default): the encoder levels at strides 4, 8, 16 and 32 brought to stride 8 (the
  stride-4 map average-pooled 2x2, the deeper maps bilinearly upsampled) and concatenated; what a
  Unet/FPN decoder reads. D = 24 + 40 + 112 + 320 = 496 for EfficientNet-Lite0.
* ``deepest``: the stride-32 map only (D = 320 for EfficientNet-Lite0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._registry import Registry

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["LEVELS", "Level"]


@dataclass(frozen=True)
class Level:
    """A choice of encoder features: ``combine(feature list) -> (N, D, H/stride, W/stride)``."""

    stride: int
    combine: Callable[[list[Tensor]], Tensor]


#: Registered feature levels (name -> :class:`Level`).
LEVELS: Registry[Level] = Registry("feature level", "--levels")


def _by_stride(feats: list[Tensor], size: tuple[int, int]) -> dict[int, Tensor]:
    """SMP's feature list (input first) keyed by output stride."""
    return {size[0] // f.shape[-2]: f for f in feats[1:] if f.shape[1] > 0}


def _multi(feats: list[Tensor]) -> Tensor:
    import torch
    import torch.nn.functional as F

    h, w = feats[0].shape[-2:]
    maps = _by_stride(feats, (h, w))
    out_size = (h // 8, w // 8)
    parts = []
    for stride in (4, 8, 16, 32):
        f = maps[stride]
        if stride == 4:
            f = F.avg_pool2d(f, 2)
        elif stride > 8:
            f = F.interpolate(f, size=out_size, mode="bilinear", align_corners=False)
        parts.append(f)
    return torch.cat(parts, dim=1)


def _deepest(feats: list[Tensor]) -> Tensor:
    return feats[-1]


LEVELS.register("multi")(Level(8, _multi))
LEVELS.register("deepest")(Level(32, _deepest))
