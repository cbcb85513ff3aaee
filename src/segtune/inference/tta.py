"""Test-time augmentation: average the softmax probabilities of flipped and rescaled views.

A spec is a comma-separated text: ``flip`` (also the horizontally mirrored image) and/or
``scales=0.75,1,1.25`` (the image resized by each factor), e.g. ``flip,scales=0.75,1,1.25``
(6 views). Every view's prediction is mapped back to the input's pixel grid (un-flipped,
resized to ``H x W`` bilinearly) before its softmax probabilities are averaged, so the result
has the input's size and is a proper probability map.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["TTA", "parse_tta", "tta_probabilities", "tta_views"]

#: ``(N, 3, h, w)`` normalised images (any h, w) -> ``(N, C, h, w)`` float logits.
Forward = Callable[[torch.Tensor], torch.Tensor]

_EXAMPLE = "e.g. --tta flip, --tta scales=0.75,1,1.25 or --tta flip,scales=0.75,1,1.25"


@dataclass(frozen=True)
class TTA:
    """Which views to average: the image at each of ``scales``, and mirrored too if ``flip``."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def views(self) -> list[tuple[float, bool]]:
        """``(scale, flipped)`` of every view, the plain image (1.0, False) first when present."""
        out = [(s, f) for s in self.scales for f in ((False, True) if self.flip else (False,))]
        return sorted(out, key=lambda v: v != (1.0, False))

    @property
    def is_plain(self) -> bool:
        """True when the only view is the image itself (no augmentation)."""
        return self.views() == [(1.0, False)]

    def __str__(self) -> str:
        parts = ["flip"] if self.flip else []
        if self.scales != (1.0,):
            parts.append("scales=" + ",".join(f"{s:g}" for s in self.scales))
        return ",".join(parts) or "none"


def parse_tta(text: str | TTA | None) -> TTA | None:
    """``"flip"``, ``"scales=0.75,1,1.25"``, ``"flip,scales=..."`` (or ``"none"``/None) -> :class:`TTA`.

    Raises:
        ConfigError: an unknown word or a scale that is not a positive number, with an example.
    """
    if text is None or isinstance(text, TTA):
        return text
    raw = str(text).strip().lower()
    if raw in ("", "none", "off"):
        return None
    flip, scales = False, (1.0,)
    head, sep, tail = raw.partition("scales=")
    words = [w for w in head.replace(" ", "").split(",") if w]
    for word in words:
        if word != "flip":
            raise ConfigError(f"--tta {text}: unknown augmentation '{word}' (known: flip, scales=...; {_EXAMPLE})")
        flip = True
    if sep:
        items = [s for s in tail.replace(" ", "").split(",") if s]
        flip = flip or "flip" in items  # "scales=1,1.25,flip" as well as "flip,scales=1,1.25"
        try:
            scales = tuple(float(s) for s in items if s != "flip")
        except ValueError:
            scales = ()
        if not scales or any(not 0.1 <= s <= 4 for s in scales):
            raise ConfigError(f"--tta {text}: scales must be numbers between 0.1 and 4 ({_EXAMPLE})")
        scales = tuple(dict.fromkeys(scales))  # drop repeats, keep order
    return TTA(flip=flip, scales=scales)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def tta_views(forward: Forward, x: torch.Tensor, tta: TTA) -> Iterator[tuple[tuple[float, bool], torch.Tensor]]:
    """Each view's softmax probabilities, mapped back onto the input's grid.

    Args:
        forward: the model on normalised images of any size (pads itself if it must).
        x: ``(N, 3, H, W)`` normalised images.
        tta: which views.

    Yields:
        ``((scale, flipped), probs)`` with ``probs`` ``(N, C, H, W)`` float32 on ``forward``'s device.
    """
    h, w = x.shape[-2:]
    for scale, flipped in tta.views():
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        xv = _resize(x, size)
        if flipped:
            xv = xv.flip(-1)
        logits = forward(xv).float()
        if flipped:
            logits = logits.flip(-1)
        yield (scale, flipped), _resize(logits.softmax(1), (h, w))


@torch.inference_mode()
def tta_probabilities(forward: Forward, x: torch.Tensor, tta: TTA) -> torch.Tensor:
    """Mean softmax probabilities ``(N, C, H, W)`` float32 over the views of ``tta`` (see :func:`tta_views`)."""
    total: torch.Tensor | None = None
    n = 0
    for _view, p in tta_views(forward, x, tta):
        total = p if total is None else total.add_(p)
        n += 1
    assert total is not None
    return total / n
