"""Joint image/mask transforms (torchvision ``transforms.v2``) for training and evaluation.

Every preset takes and returns a dict sample::

    {"image": tv_tensors.Image (3, H, W) uint8, "mask": tv_tensors.Mask (H, W) integer}
    -> {"image": tv_tensors.Image (3, H', W') float32 normalised,
        "mask": tv_tensors.Mask (H', W') int64}

Geometric steps (rescale, pad, crop, flip) see the image and the mask together, so they stay
aligned; photometric steps (colour jitter, normalisation) touch the image only. Images stay
``uint8`` until the last two steps (``ToDtype`` + ``Normalize``), which is much faster on CPU.

Padding conventions (used everywhere in segtune):

* masks are padded with ``ignore_index``, so padded pixels never count in loss or metrics;
* images are padded so that the padded pixels are ``0`` *after* normalisation, i.e. with the
  mean colour while still ``uint8`` (training) or with ``0.0`` once normalised (evaluation,
  :func:`~segtune.data.dataset.pad_collate`). Padded regions therefore look the same in
  training, evaluation and inference.
* evaluation pads at the bottom/right only, so ``output[..., :H, :W]`` is the original image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .._tensor import round_up

__all__ = [
    "train_transforms",
    "eval_transforms",
    "flip_only_transforms",
    "pad_to_multiple",
    "pad_to_size",
    "RandomRescale",
    "PadIfSmaller",
    "PadToMultiple",
]

Fill = float | int | Sequence[float]


# --------------------------------------------------------------------------- helpers
def pad_to_size(x: torch.Tensor, height: int, width: int, fill: Fill = 0) -> torch.Tensor:
    """Pad ``x`` at the bottom/right to ``(height, width)``; the original sits at the top-left.

    Args:
        x: tensor ``(..., H, W)`` of any dtype (image ``(C, H, W)``, mask ``(H, W)``, batches).
        height, width: target size; must be ``>= H`` and ``>= W``.
        fill: scalar, or one value per channel (dim ``-3``) for images.

    Returns:
        A new tensor ``(..., height, width)`` with ``x``'s dtype (``x`` itself if no padding
        is needed). A plain tensor; tv_tensor wrapping is the caller's job.
    """
    h, w = x.shape[-2:]
    if height < h or width < w:
        raise ValueError(f"pad_to_size: target {height}x{width} is smaller than input {h}x{w}")
    if (h, w) == (height, width):
        return x
    out = x.new_empty((*x.shape[:-2], height, width))
    if isinstance(fill, (list, tuple)):
        if x.ndim < 3 or x.shape[-3] != len(fill):
            raise ValueError(f"pad_to_size: {len(fill)} fill values for input of shape {tuple(x.shape)}")
        out.copy_(torch.as_tensor(fill, dtype=x.dtype).view(-1, 1, 1).expand_as(out))
    else:
        out.fill_(fill)
    out[..., :h, :w] = x
    return out


def pad_to_multiple(x: torch.Tensor, multiple: int = 32, fill: Fill = 0) -> torch.Tensor:
    """Pad ``x`` at the bottom/right so that H and W are multiples of ``multiple``.

    Args:
        x: tensor ``(..., H, W)`` of any dtype.
        multiple: the size granularity (32 fits every encoder's output stride).
        fill: scalar, or per-channel values (dim ``-3``); use ``ignore_index`` for masks.

    Returns:
        Tensor ``(..., ceil(H/m)*m, ceil(W/m)*m)``, same dtype; ``x[..., :H, :W]`` is unchanged.
    """
    h, w = x.shape[-2:]
    return pad_to_size(x, round_up(h, multiple), round_up(w, multiple), fill)


def _fill_for(fill: dict[Any, Fill], inpt: Any) -> Fill:
    for typ, value in fill.items():
        if typ != "others" and isinstance(inpt, typ):
            return value
    return fill.get("others", 0)


def _resize_mask_nearest(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest-neighbour resize with pixel-centre sampling (``nearest-exact``), any int dtype.

    Uses the same half-pixel convention as bilinear image resizing, so label edges stay on
    the image edges (torch's legacy ``nearest`` is off by half a pixel).
    """
    h, w = mask.shape[-2:]
    rows = ((torch.arange(height, dtype=torch.float64) + 0.5) * (h / height)).floor().long()
    cols = ((torch.arange(width, dtype=torch.float64) + 0.5) * (w / width)).floor().long()
    rows.clamp_(0, h - 1)
    cols.clamp_(0, w - 1)
    return mask[..., rows[:, None], cols[None, :]]


class _Transform(v2.Transform):
    """v2 transform base that works with both the old (<0.21) and new method names."""

    def _get_params(self, flat_inputs: list[Any]) -> dict[str, Any]:  # torchvision < 0.21
        return self.make_params(flat_inputs)

    def _transform(self, inpt: Any, params: dict[str, Any]) -> Any:  # torchvision < 0.21
        return self.transform(inpt, params)


# --------------------------------------------------------------------------- transforms
class RandomRescale(_Transform):
    """Rescale image and mask by one random factor drawn uniformly from ``scale``.

    Images use bilinear interpolation with antialiasing; masks use nearest-neighbour
    (pixel-centre) sampling, so they keep exactly their label values. The factor is relative
    to the input size (aspect ratio kept).

    Args:
        scale: ``(min, max)`` factor range, e.g. ``(0.5, 2.0)``.
    """

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        lo, hi = float(scale[0]), float(scale[1])
        if not 0 < lo <= hi:
            raise ValueError(f"RandomRescale: need 0 < min <= max, got {scale}")
        self.scale = (lo, hi)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        lo, hi = self.scale
        s = lo + (hi - lo) * float(torch.rand(()))
        return {"size": (max(1, round(h * s)), max(1, round(w * s)))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size = params["size"]
        if isinstance(inpt, tv_tensors.Mask):
            if tuple(inpt.shape[-2:]) == size:
                return inpt
            return tv_tensors.wrap(_resize_mask_nearest(inpt.as_subclass(torch.Tensor), *size), like=inpt)
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Video)):
            return self._call_kernel(
                F.resize, inpt, size=list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True
            )
        return inpt


class PadIfSmaller(_Transform):
    """Pad at the bottom/right so that both sides are at least ``size``.

    Args:
        size: minimum side length in pixels.
        fill: per-type fill, e.g. ``{tv_tensors.Mask: 255, "others": 0}``; a value may be a
            per-channel sequence for images.
    """

    def __init__(self, size: int, fill: dict[Any, Fill]) -> None:
        super().__init__()
        self.size = int(size)
        self.fill = dict(fill)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"height": max(h, self.size), "width": max(w, self.size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, tv_tensors.Video)):
            return inpt
        out = pad_to_size(inpt.as_subclass(torch.Tensor), params["height"], params["width"],
                          _fill_for(self.fill, inpt))
        return tv_tensors.wrap(out, like=inpt)


class PadToMultiple(_Transform):
    """Pad at the bottom/right so that H and W are multiples of ``multiple``.

    Args:
        multiple: size granularity (default 32).
        fill: per-type fill, e.g. ``{tv_tensors.Mask: 255, "others": 0}``.
        size: optional ``(height, width)`` to pad to at least (e.g. a data set's largest
            padded size, so whole images of different sizes stack into one batch).
    """

    def __init__(
        self, multiple: int = 32, fill: dict[Any, Fill] | None = None, size: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        self.multiple = int(multiple)
        self.fill = dict(fill or {"others": 0})
        self.size = (int(size[0]), int(size[1])) if size is not None else (0, 0)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = v2.query_size(flat_inputs)
        return {"height": max(round_up(h, self.multiple), self.size[0]),
                "width": max(round_up(w, self.multiple), self.size[1])}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, tv_tensors.Video)):
            return inpt
        out = pad_to_size(inpt.as_subclass(torch.Tensor), params["height"], params["width"],
                          _fill_for(self.fill, inpt))
        return tv_tensors.wrap(out, like=inpt)


def _to_float_and_normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None},
                   scale=True),
        v2.Normalize(mean=[float(m) for m in mean], std=[float(s) for s in std]),
    ]


def _mean_fill_uint8(mean: Sequence[float]) -> tuple[int, ...]:
    """The uint8 colour that normalises to (about) 0: ``round(mean * 255)``."""
    return tuple(int(round(float(m) * 255)) for m in mean)


def train_transforms(
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int,
    scale: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    color_jitter: float = 0.2,
) -> v2.Compose:
    """Training augmentation: rescale, pad-if-smaller, random crop, flip, jitter, normalise.

    Steps: :class:`RandomRescale` (``scale``, relative to the input size; nearest for masks)
    -> :class:`PadIfSmaller` to ``crop_size`` (mask filled with ``ignore_index``, image with
    the mean colour, i.e. 0 after normalisation) -> ``RandomCrop(crop_size)`` ->
    ``RandomHorizontalFlip`` (if ``hflip``) -> ``ColorJitter`` (brightness, contrast,
    saturation = ``color_jitter``; image only; skipped when 0) -> ``ToDtype`` (image float32
    in [0, 1], mask int64) -> ``Normalize(mean, std)``.

    Args:
        crop_size: side of the square output crop in pixels.
        mean, std: per-channel normalisation of [0, 1] RGB (the encoder's pretrained config).
        ignore_index: label written into padded mask pixels.
        scale: ``(min, max)`` random rescale factor range.
        hflip: random horizontal flip (p = 0.5).
        color_jitter: jitter strength; 0 disables it.

    Returns:
        A ``v2.Compose`` mapping ``{"image": Image (3,H,W) uint8, "mask": Mask (H,W) int}`` to
        ``{"image": (3, crop, crop) float32, "mask": (crop, crop) int64}`` (tv_tensors).
    """
    steps: list[v2.Transform] = []
    if tuple(scale) != (1.0, 1.0):
        steps.append(RandomRescale(scale))
    steps += [
        PadIfSmaller(crop_size, {tv_tensors.Mask: int(ignore_index), "others": _mean_fill_uint8(mean)}),
        v2.RandomCrop(crop_size),
    ]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter and color_jitter > 0:
        cj = float(color_jitter)
        steps.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    steps += _to_float_and_normalize(mean, std)
    return v2.Compose(steps)


def eval_transforms(
    mean: Sequence[float], std: Sequence[float], ignore_index: int, multiple: int = 32
) -> v2.Compose:
    """Evaluation preprocessing: normalise, then pad bottom/right to a multiple of 32.

    Args:
        mean, std: per-channel normalisation of [0, 1] RGB.
        ignore_index: label written into padded mask pixels.
        multiple: size granularity of the padded output.

    Returns:
        A ``v2.Compose`` mapping ``{"image": (3,H,W) uint8, "mask": (H,W) int}`` to
        ``{"image": (3,H',W') float32, "mask": (H',W') int64}`` with ``H' = ceil(H/32)*32``
        (likewise W'); padded image pixels are 0, padded mask pixels ``ignore_index``.
        ``out[..., :H, :W]`` is the unpadded sample.
    """
    return v2.Compose(
        [
            *_to_float_and_normalize(mean, std),
            PadToMultiple(multiple, {tv_tensors.Mask: int(ignore_index), "others": 0.0}),
        ]
    )


def flip_only_transforms(
    mean: Sequence[float],
    std: Sequence[float],
    ignore_index: int,
    p: float = 0.5,
    multiple: int = 32,
    size: tuple[int, int] | None = None,
) -> v2.Compose:
    """Crop-free preset for feature caching: horizontal flip with probability ``p`` only.

    Full-size images are flipped (``p=0.5`` random, ``p=1.0`` always, ``p=0.0`` never),
    normalised and padded bottom/right to a multiple of 32 exactly like
    :func:`eval_transforms`. Caching features of the ``p=0`` and ``p=1`` versions gives the
    two deterministic views a flip-augmented cached-feature training can sample from.

    Args:
        mean, std: per-channel normalisation of [0, 1] RGB.
        ignore_index: label written into padded mask pixels.
        p: flip probability.
        multiple: size granularity of the padded output.
        size: pad to at least ``(height, width)`` (``data.augment: flip`` pads every training
            image to the data set's largest padded size); the flip happens before padding.

    Returns:
        A ``v2.Compose`` with the same input/output types as :func:`eval_transforms`.
    """
    steps: list[v2.Transform] = []
    if p > 0:
        steps.append(v2.RandomHorizontalFlip(p=float(p)))
    steps += _to_float_and_normalize(mean, std)
    steps.append(PadToMultiple(multiple, {tv_tensors.Mask: int(ignore_index), "others": 0.0}, size=size))
    return v2.Compose(steps)
