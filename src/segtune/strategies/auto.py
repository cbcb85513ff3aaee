"""Defaults chosen from measurements: the strategy, LR and epochs a user gets when passing nothing.

The table below comes from ``benchmarks/transfer_curve.py`` on CamVid (Unet + ImageNet
EfficientNet-Lite0; see ``benchmarks/RESULTS.md`` for the numbers and the exact command). Each row
covers data sets up to ``max_images`` training images. A value the user set explicitly (strategy
name other than ``auto``, ``optim.lr``, ``train.epochs``) is never replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config

__all__ = ["AutoChoice", "AUTO_TABLE", "choose_defaults", "default_epochs", "resolve_auto"]


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


AUTO_TABLE: tuple[AutoChoice, ...] = (
    AutoChoice(
        float("inf"), "head", 3e-3, 0,
        "on CamVid (benchmarks/RESULTS.md) the frozen encoder was within 0.01 mIoU of the best "
        "strategy at 23, 92 and 367 images and clearly best at full resolution with a short budget "
        "(0.425 vs full 0.344 vs scratch 0.264 after 180 steps), and it is the cheapest to train",
    ),
)


def default_epochs(num_train_images: int, batch_size: int = 8, target_steps: int = 1000) -> int:
    """Epochs giving about ``target_steps`` optimiser steps, clamped to [30, 200].

    Not a measured optimum: the benchmarks used fixed step budgets; early stopping on val mIoU
    (``train.early_stopping``) ends a run sooner when it stops improving.
    """
    steps_per_epoch = max(1, -(-num_train_images // batch_size))
    return int(min(200, max(30, -(-target_steps // steps_per_epoch))))


def choose_defaults(num_train_images: int) -> AutoChoice:
    """The measured row for a data set of ``num_train_images`` training images."""
    for row in AUTO_TABLE:
        if num_train_images <= row.max_images:
            return row
    return AUTO_TABLE[-1]


def resolve_auto(cfg: Config, num_train_images: int) -> list[str]:
    """Fill ``strategy.name == "auto"``, ``optim.lr is None`` and ``train.epochs is None`` in place.

    Returns:
        Lines explaining what was chosen and why (empty when the user set everything).
    """
    row = choose_defaults(num_train_images)
    notes: list[str] = []
    if cfg.strategy.name == "auto":
        cfg.strategy.name = row.strategy
        notes.append(
            f"strategy auto -> {row.strategy} for {num_train_images} training images: {row.why}"
        )
    if cfg.optim.lr is None:
        same = cfg.strategy.name == row.strategy
        cfg.optim.lr = row.lr if same else _DEFAULT_LR.get(cfg.strategy.name, 1e-3)
        notes.append(f"optim.lr -> {cfg.optim.lr:g} (measured default for {cfg.strategy.name}; set --lr to change)")
    if cfg.train.epochs is None:
        cfg.train.epochs = row.epochs or default_epochs(num_train_images, cfg.data.batch_size)
        notes.append(
            f"train.epochs -> {cfg.train.epochs} (about 1000 steps for {num_train_images} training images "
            f"at batch {cfg.data.batch_size}, early stopping after {cfg.train.early_stopping} validations "
            "without gain; set --epochs to change)"
        )
    return notes


# head-only training tolerates (and needs) a larger LR than updating the pretrained encoder
_DEFAULT_LR = {
    "head": 3e-3,
    "partial": 1e-3,
    "full": 1e-3,
    "discriminative": 1e-3,
    "gradual": 1e-3,
    "scratch": 1e-3,
}
