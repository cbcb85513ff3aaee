"""Defaults chosen from measurements and from the data: what a user gets when passing nothing.

``auto`` decides the strategy, LR, epochs, crop and augmentation from a probe of the training data
(:class:`segtune.strategies.probe.DataProbe`): the number of labelled images, their sizes and a
measured domain-shift signal (:func:`segtune.strategies.probe.bn_shift`).

* **Crop and augmentation** (:func:`choose_shape`), from the image sizes: whole images with random
  flips (``data.augment: flip``) when the largest training image, rounded up to a multiple of 32,
  is no larger than a 384 x 384 crop; otherwise random crops of 384 pixels, never larger than the
  median image's short side (so small images are never padded far beyond their size).
* **Strategy and LR** (:func:`choose_defaults`), from the number of images and the shift: rows of
  :data:`AUTO_TABLE` for data close to the pretraining domain, :data:`SHIFTED_TABLE` above
  :data:`SHIFT_THRESHOLD`.

The strategy per size comes from ``benchmarks/transfer_curve.py`` on CamVid (Unet + ImageNet
EfficientNet-Lite0; chosen and scored on CamVid val, as RESULTS.md says); the head LR and class
weights were re-selected without CamVid val by ``benchmarks/fair_compare.py`` (a held-out part of
CamVid train) and agree; the reasons quote its val scores (``benchmarks/fair_compare.json``). Each
row covers data sets up to ``max_images`` training images. A value the user set explicitly (strategy
name other than ``auto``, ``optim.lr``, ``train.epochs``, ``data.augment`` other than ``auto``,
``data.crop_size``) is never replaced.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from .probe import DataProbe

#: ``strategy.name`` value that asks for the measured choice (not a registered strategy).
AUTO = "auto"

__all__ = ["AUTO", "AUTO_AUGMENT", "AutoChoice", "AUTO_TABLE", "CROP", "SHIFT_THRESHOLD", "SHIFTED_TABLE",
           "ShapeChoice", "choose_defaults", "choose_shape", "default_epochs", "resolve_auto", "steps_per_epoch"]

#: ``data.augment`` value that asks ``auto`` to choose between crops and whole images.
AUTO_AUGMENT = "auto"
#: the crop side (pixels) used for images larger than it; whole images at or below its area.
CROP = 384


@dataclass(frozen=True)
class AutoChoice:
    """One row of the measured defaults table.

    Attributes:
        max_images: the row applies to data sets with at most this many training images.
        strategy: strategy name.
        lr: head/decoder learning rate (AdamW).
        epochs: fixed epoch count, or 0 to derive it from the data size (:func:`default_epochs`).
        why: the measurement behind the choice, printed to the user.
    """

    max_images: float
    strategy: str
    lr: float
    epochs: int
    why: str


# One row per measured size (CamVid, 200 optimiser steps, val mIoU %; rows switch at the geometric
# midpoints between the measured sizes). _WHY: benchmarks/transfer_curve.json (one seed; segtune's
# defaults were tuned on the same val split it reports). _FAIR: benchmarks/fair_compare.json, where
# head's LR and class weights were chosen on a held-out part of CamVid train (CamVid val untouched)
# and scored on val over seeds 0-2 (means; 23 images for the small rows, 367 for the others),
# against the same recipe in a hand-written loop and a usual full-fine-tuning loop.
# tests/test_auto_defaults.py checks both sets of numbers against their JSON.
_WHY = (
    "on CamVid with {n} labelled images (benchmarks/transfer_curve.json, 200 steps for all, one seed, "
    "defaults tuned on that val split) the frozen encoder scored {head} val mIoU, best of the six "
    "strategies (next: {next_name} {next}; from scratch {scratch}), and it trains fastest"
)
_FAIR = (
    "; its LR 3e-3 and median class weights were re-chosen without val (benchmarks/fair_compare.json: "
    "best on a held-out part of CamVid train) and, on {n} images over 3 seeds, scored {seg} val mIoU vs "
    "{bare} for the same recipe in a hand-written loop (no detectable difference: the gain is the recipe, "
    "not the library) and {user} for a usual full-fine-tuning loop"
)
_FAIR_23 = _FAIR.format(n=23, seg=50.0, bare=49.4, user=44.5)
_FAIR_367 = _FAIR.format(n=367, seg=49.4, bare=50.8, user=48.0)
AUTO_TABLE: tuple[AutoChoice, ...] = (
    AutoChoice(32, "head", 3e-3, 0, _WHY.format(n=23, head=53.3, next_name="gradual", next=51.4,
                                                scratch=31.2) + _FAIR_23),
    AutoChoice(65, "head", 3e-3, 0, _WHY.format(n=46, head=52.8, next_name="gradual", next=49.8,
                                                scratch=33.2) + _FAIR_23),
    AutoChoice(130, "head", 3e-3, 0, _WHY.format(n=92, head=51.9, next_name="partial", next=48.6,
                                                 scratch=28.3) + _FAIR_367),
    AutoChoice(260, "head", 3e-3, 0, _WHY.format(n=184, head=51.5, next_name="partial", next=50.4,
                                                 scratch=31.6) + _FAIR_367),
    AutoChoice(float("inf"), "head", 3e-3, 0,
               _WHY.format(n=367, head=51.5, next_name="discriminative", next=47.1, scratch=31.0)
               + _FAIR_367
               + "; not measured above 367 images, where updating the encoder may pay: try "
               "--strategy discriminative"),
)


def steps_per_epoch(num_train_images: int, batch_size: int = 8) -> int:
    """Optimiser steps per epoch of the training loader (it drops the last partial batch when
    there is more than one batch)."""
    return num_train_images // batch_size if num_train_images > batch_size else 1


def default_epochs(num_train_images: int, batch_size: int = 8, target_steps: int = 1000) -> int:
    """Epochs giving about ``target_steps`` optimiser steps, clamped to [30, 200].

    The clamp keeps every image seen at least 30 times on large data sets (more than 1000
    steps above ~270 images at batch 8) and caps tiny ones at 200 epochs (fewer steps below ~45
    images). Not a measured optimum: the benchmarks used fixed step budgets; early stopping on
    val mIoU (``train.early_stopping``) ends a run sooner when it stops improving.
    """
    per_epoch = steps_per_epoch(num_train_images, batch_size)
    return int(min(200, max(30, -(-target_steps // per_epoch))))


#: :func:`~segtune.strategies.probe.bn_shift` above which data counts as far from the pretraining
#: domain (nats; between CamVid's measured 0.07-0.10 and ISBI 2012 EM's 0.33-0.37 at full and
#: benchmark resolution, ``benchmarks/auto.json``; two domains measured, so the boundary is coarse).
SHIFT_THRESHOLD = 0.2

_SHIFTED_WHY = (
    "on ISBI 2012 EM slices (shift {shift:.2f}; benchmarks/auto.json: 18 slices at 192x192, 50 steps at batch 4, "
    "one seed, scored on held-out slices 18-23, the test slices untouched) discriminative (encoder LR x0.1) at "
    "LR 3e-3 scored {disc:.1f} held-out mIoU vs {head:.1f} for head at 3e-3 and {disc1:.1f} for discriminative "
    "at 1e-3; the first two are within noise, so the choice also rests on the frozen ImageNet BatchNorm "
    "statistics not fitting such data (on CamVid, shift {near:.2f}, the two tied as well and head, the measured "
    "near-domain default, stays); not measured at other sizes or budgets"
)

#: Rows for data far from the pretraining domain (shift above :data:`SHIFT_THRESHOLD`); empty:
#: the same rows as near data (:data:`AUTO_TABLE`). tests/test_auto_defaults.py checks the numbers
#: against benchmarks/auto.json.
SHIFTED_TABLE: tuple[AutoChoice, ...] = (
    AutoChoice(float("inf"), "discriminative", 3e-3, 0,
               _SHIFTED_WHY.format(shift=0.33, disc=74.5, head=74.4, disc1=72.3, near=0.10)),
)


def choose_defaults(num_train_images: int, shift: float | None = None) -> AutoChoice:
    """The measured row for ``num_train_images`` training images at domain shift ``shift``
    (None: not measured, treated as near)."""
    table = SHIFTED_TABLE if shift is not None and shift > SHIFT_THRESHOLD and SHIFTED_TABLE else AUTO_TABLE
    for row in table:
        if num_train_images <= row.max_images:
            return row
    return table[-1]


@dataclass(frozen=True)
class ShapeChoice:
    """What the training samples look like.

    Attributes:
        augment: ``flip`` (whole images, padded to the largest one, random flips) or ``full``
            (random crops + flips).
        crop_size: the crop side for ``full`` (None for ``flip``).
        why: the reason, printed to the user.
    """

    augment: str
    crop_size: int | None
    why: str


def _round_up(v: int, m: int = 32) -> int:
    return -(-v // m) * m


def _crop_side(sizes: tuple[tuple[int, int], ...] | list[tuple[int, int]], crop: int = CROP) -> int:
    """``crop``, capped at the median short side rounded to the nearest multiple of 32 (>= 32)."""
    if not sizes:
        return crop
    short = statistics.median(min(w, h) for w, h in sizes)
    return int(max(32, min(crop, round(short / 32) * 32)))


def choose_shape(sizes: tuple[tuple[int, int], ...] | list[tuple[int, int]], crop: int = CROP) -> ShapeChoice:
    """Whole images or crops, from the training images' ``(W, H)`` sizes.

    Whole images (``flip``) when the largest image padded to a multiple of 32 has at most
    ``crop x crop`` pixels and the median image fills at least half of that padded area (a few
    large images among small ones would otherwise pad every batch). Else random crops of
    ``crop``, capped at the median short side rounded to the nearest multiple of 32 (at least 32),
    so a crop never pads an image far beyond its size.
    """
    if not sizes:
        return ShapeChoice("full", crop, f"image sizes unknown: random {crop}-pixel crops + flips")
    H, W = _round_up(max(h for _, h in sizes)), _round_up(max(w for w, _ in sizes))
    med_area = statistics.median(w * h for w, h in sizes)
    if H * W <= crop * crop and med_area >= 0.5 * H * W:
        return ShapeChoice("flip", None, (
            f"whole images padded to {W}x{H} + random flips: the images (largest {max(w for w, _ in sizes)}x"
            f"{max(h for _, h in sizes)}) are no larger than a {crop}x{crop} crop, which would pad them to "
            f"{crop * crop / med_area:.1f}x their area"))
    short = int(statistics.median(min(w, h) for w, h in sizes))
    side = _crop_side(sizes, crop)
    return ShapeChoice("full", side, (
        f"random {side}x{side} crops + flips: the images (median short side {short} px) are larger than "
        f"whole-image batches allow ({W}x{H} padded > {crop}x{crop})" if side == crop else
        f"random {side}x{side} crops + flips: the median short side is {short} px, so a {crop} crop would "
        f"pad most images"))


def _resolve_shape(cfg: Config, probe: DataProbe | None) -> list[str]:
    """Fill ``data.augment == "auto"`` and ``data.crop_size is None`` from the image sizes."""
    d, notes = cfg.data, []
    sizes = probe.sizes if probe is not None else ()
    shape = choose_shape(sizes)
    asked = [k for k, on in (("data.crop_size", d.crop_size is not None),
                             ("data.scale_min/scale_max", (d.scale_min, d.scale_max) != (1.0, 1.0)),
                             ("data.color_jitter", bool(d.color_jitter))) if on]
    if d.augment == AUTO_AUGMENT and asked:  # settings that only random crops use: the user wants crops
        shape = ShapeChoice("full", d.crop_size, f"{' and '.join(asked)} set, which only random crops use")
    if d.augment == AUTO_AUGMENT:
        d.augment = shape.augment
        if shape.crop_size is not None and d.crop_size is None:
            d.crop_size = shape.crop_size
        notes.append(f"data.augment -> {d.augment}" + (f", data.crop_size -> {d.crop_size}" if d.augment == "full" else "")
                     + f" ({shape.why}; set --augment / --crop-size to change)")
    if d.crop_size is None and d.augment != "flip":
        d.crop_size = _crop_side(sizes)
        notes.append(f"data.crop_size -> {d.crop_size} (from the image sizes; set --crop-size to change)")
    return notes


def resolve_auto(cfg: Config, num_train_images: int, probe: DataProbe | None = None) -> list[str]:
    """Fill ``strategy.name == "auto"``, ``optim.lr is None``, ``train.epochs is None``,
    ``data.augment == "auto"`` and ``data.crop_size is None`` in place.

    Args:
        cfg: the config (changed in place; values the user set are kept).
        num_train_images: training images after the train/val split.
        probe: the data probe (image sizes, domain shift); None: sizes and shift unknown (the
            near-domain rows and random crops of :data:`CROP`).

    Returns:
        Lines explaining what was chosen and why (empty when the user set everything).
    """
    shift = probe.shift if probe is not None else None
    row = choose_defaults(num_train_images, shift)
    notes: list[str] = []
    if cfg.strategy.name == AUTO:
        cfg.strategy.name = row.strategy
        notes.append(
            f"strategy auto -> {row.strategy} for {num_train_images} training images{_shift_text(shift)}: {row.why}"
        )
    if cfg.optim.lr is None:
        from .builtin import STRATEGY_REGISTRY

        if cfg.strategy.name == row.strategy:
            cfg.optim.lr, why = row.lr, "measured default"
        else:
            cfg.optim.lr, why = STRATEGY_REGISTRY.get(cfg.strategy.name).default_lr, "default"
        notes.append(f"optim.lr -> {cfg.optim.lr:g} ({why} for {cfg.strategy.name}; set --lr to change)")
    if cfg.train.epochs is None:
        cfg.train.epochs = row.epochs or default_epochs(num_train_images, cfg.data.batch_size)
        steps = cfg.train.epochs * steps_per_epoch(num_train_images, cfg.data.batch_size)
        notes.append(
            f"train.epochs -> {cfg.train.epochs} (up to {steps} steps for {num_train_images} training "
            f"images at batch {cfg.data.batch_size}: about 1000, within 30-200 epochs; early stopping "
            f"after {cfg.train.early_stopping} validations without gain; set --epochs to change)"
        )
    return notes + _resolve_shape(cfg, probe)


def _shift_text(shift: float | None) -> str:
    if shift is None:
        return " (domain shift not measured)"
    side = "above" if shift > SHIFT_THRESHOLD else "at or below"
    return (f", domain shift {shift:.2f} ({side} {SHIFT_THRESHOLD:g}: BatchNorm statistics of the pretrained "
            f"encoder on your images vs its pretraining data)")
