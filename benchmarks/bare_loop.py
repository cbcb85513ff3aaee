"""The hand-written alternative to segtune: a bare PyTorch training loop (no Lightning).

What a user writes after reading the SMP README: the same network and ImageNet weights as
segtune's default (SMP Unet + EfficientNet-Lite0 from ``segtune.models.create_model``), AdamW
(torch defaults: weight decay 0.01) with a one-cycle learning-rate schedule, random crop + random
horizontal flip as the only augmentation, everything trainable, BatchNorm in train mode, and one
of two losses:

* ``ce``: ``nn.CrossEntropyLoss(ignore_index=...)``;
* ``wce+dice``: cross-entropy weighted by median-frequency balancing (``w_c = median(f) / f_c``
  from the training masks' pixel frequencies, 0 for classes without pixels) + SMP's
  ``DiceLoss("multiclass", ignore_index=...)``.

A second configuration reproduces segtune's own recipe by hand, so that "bare loop vs segtune"
can compare the library alone (same strategy, same loss definition, same optimiser details):

* ``strategy="head"``: the encoder frozen (``requires_grad=False``, its BatchNorm layers kept in
  eval mode so their running statistics never move); only the decoder and segmentation head are
  given to the optimiser (``strategy="full"``, the default: everything trains);
  ``encoder_lr_factor`` < 1 gives the encoder a smaller learning rate (full fine-tuning with a
  discriminative LR, e.g. 0.1);
* ``loss="ce+dice"``: segtune's default loss written out here (not imported): cross-entropy with
  optional class weights (weighted mean over labelled pixels, as ``F.cross_entropy``) plus an
  *unweighted* soft "batch" Dice, 1 - mean Dice over the classes present in the batch's target
  (absent classes excluded from the mean, ignored pixels removed from probabilities and
  one-hot, no smoothing). ``class_weights="median"``: median-frequency weights ``median(f) / f_c``
  over classes with pixels, 0 for absent classes, clamped to [0, 50] (as segtune's); ``"none"``:
  unweighted CE. (``wce+dice`` differs: SMP's ``DiceLoss`` averages over *all* classes with
  absent ones counted as 0, and its weights are not clamped.)
* ``schedule="warmup-cosine"``: segtune's optimiser details written out: AdamW with weight decay
  ``weight_decay`` (segtune's 1e-4) on weights with 2+ dimensions and 0 on biases and norm
  parameters (separate groups), a linear warm-up from lr/``warmup_steps`` to lr over
  ``warmup_steps`` steps (20) then cosine to 0 at the last step (``LambdaLR``, stepped per
  optimiser step), and the global gradient norm clipped to ``grad_clip`` (1.0).
  ``schedule="one-cycle"`` (the default) is the loop above: AdamW with torch's defaults (weight
  decay 0.01 on every parameter), ``OneCycleLR(max_lr=lr)``, no clipping.

Only the list of training/validation files comes from segtune (``SegDataModule``, so the bare
loop sees exactly the seeded subset a segtune run of the same size sees); decoding, augmentation,
batching, the loss, the optimiser and the loop are written here with plain PIL/NumPy/torch.
Evaluation: full validation images, padded bottom/right to a multiple of 32 (mask padded with
``ignore_index``), scored with segtune's confusion matrix (macro mIoU over present classes), the
same rule every segtune run is scored with.

Used by ``benchmarks/transfer_curve.py`` and ``benchmarks/fair_compare.py``; runnable alone for a quick look::

    python benchmarks/bare_loop.py DATA_DIR --loss ce --steps 20 --max-train 23
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["LOSSES", "STRATEGIES", "SCHEDULES", "train_bare", "median_frequency_weights", "present_class_dice"]

LOSSES = ("ce", "wce+dice", "ce+dice")
STRATEGIES = ("full", "head")
SCHEDULES = ("one-cycle", "warmup-cosine")
CLASS_WEIGHTS = ("median", "none")
MAX_CLASS_WEIGHT = 50.0  # the clamp of the ce+dice recipe's median-frequency weights


def _read_pair(img: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    image = np.array(Image.open(img).convert("RGB"), dtype=np.uint8)
    m = np.array(Image.open(mask), dtype=np.int64)
    if m.ndim == 3:  # an index mask saved as RGB: take one channel
        m = m[..., 0]
    return image, m


class PairDataset(Dataset):
    """Decoded pairs kept in memory; ``train=True`` gives random crop + flip samples.

    Training samples: pad to at least ``crop`` on each side (image with 0 after normalisation,
    mask with ``ignore_index``), take a random ``crop x crop`` window, flip left-right with p=0.5.
    Evaluation samples: the full image, padded bottom/right to a multiple of 32.
    """

    def __init__(self, pairs: list[tuple[Path, Path]], mean: tuple[float, ...], std: tuple[float, ...],
                 ignore_index: int, crop: int | None) -> None:
        self.data = [_read_pair(Path(i), Path(m)) for i, m in pairs]
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.ignore_index = int(ignore_index)
        self.crop = crop

    def __len__(self) -> int:
        return len(self.data)

    def _pad(self, x: torch.Tensor, y: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
        ph, pw = h - x.shape[1], w - x.shape[2]
        if ph > 0 or pw > 0:
            x = F.pad(x, (0, max(pw, 0), 0, max(ph, 0)), value=0.0)
            y = F.pad(y, (0, max(pw, 0), 0, max(ph, 0)), value=self.ignore_index)
        return x, y

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.data[i]
        x = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)
        x = (x - self.mean) / self.std
        y = torch.from_numpy(mask.copy())
        if self.crop is None:
            h, w = x.shape[1:]
            return self._pad(x, y, math.ceil(h / 32) * 32, math.ceil(w / 32) * 32)
        c = self.crop
        x, y = self._pad(x, y, max(c, x.shape[1]), max(c, x.shape[2]))
        top = int(torch.randint(0, x.shape[1] - c + 1, ()))
        left = int(torch.randint(0, x.shape[2] - c + 1, ()))
        x, y = x[:, top:top + c, left:left + c], y[top:top + c, left:left + c]
        if torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


def median_frequency_weights(masks: list[np.ndarray], num_classes: int) -> torch.Tensor:
    """``w_c = median(f) / f_c`` over classes with pixels (f = pixel frequency); 0 for absent classes."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for m in masks:
        v = m[(m >= 0) & (m < num_classes)]
        counts += np.bincount(v.ravel(), minlength=num_classes)[:num_classes]
    freq = counts / max(counts.sum(), 1.0)
    present = freq > 0
    w = np.zeros(num_classes)
    w[present] = np.median(freq[present]) / freq[present]
    return torch.tensor(w, dtype=torch.float32)


def present_class_dice(logits: torch.Tensor, target: torch.Tensor, num_classes: int,
                       ignore_index: int) -> torch.Tensor:
    """1 - mean soft Dice over the classes present in the batch (pooled over all its pixels).

    Ignored pixels are removed from the probabilities and the one-hot target; classes without a
    target pixel in the batch are left out of the mean; no smoothing.
    """
    probs = logits.float().softmax(1)
    valid = (target != ignore_index).unsqueeze(1)
    onehot = F.one_hot(torch.where(valid.squeeze(1), target, 0), num_classes).permute(0, 3, 1, 2)
    onehot = onehot.to(probs.dtype) * valid
    probs = probs * valid
    inter = (probs * onehot).sum((0, 2, 3))
    card = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    present = onehot.sum((0, 2, 3)) > 0
    if not bool(present.any()):
        return logits.float().sum() * 0.0
    dice = 2 * inter[present] / card[present].clamp_min(1e-7)
    return (1 - dice).mean()


def _build_loss(name: str, num_classes: int, ignore_index: int, masks: list[np.ndarray],
                class_weights: str = "median") -> nn.Module:
    if name == "ce+dice":
        w = None
        if class_weights == "median":
            w = median_frequency_weights(masks, num_classes).clamp(0, MAX_CLASS_WEIGHT)
        elif class_weights != "none":
            raise ValueError(f"class_weights must be one of {CLASS_WEIGHTS}, got {class_weights!r}")
        ce = nn.CrossEntropyLoss(weight=w, ignore_index=ignore_index)

        class _CEDice(nn.Module):
            def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return ce(logits.float(), target) + present_class_dice(logits, target, num_classes, ignore_index)

        return _CEDice()
    if name == "ce":
        return nn.CrossEntropyLoss(ignore_index=ignore_index)
    if name == "wce+dice":
        import segmentation_models_pytorch as smp

        ce = nn.CrossEntropyLoss(weight=median_frequency_weights(masks, num_classes), ignore_index=ignore_index)
        dice = smp.losses.DiceLoss("multiclass", ignore_index=ignore_index)

        class _Sum(nn.Module):
            def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return ce(logits, target) + dice(logits, target)

        return _Sum()
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")


@torch.inference_mode()
def evaluate(model: nn.Module, ds: PairDataset, num_classes: int, ignore_index: int,
             class_names: list[str], batch_size: int = 4) -> dict[str, Any]:
    """segtune's metrics (one confusion matrix, macro over present classes) on full images."""
    from segtune.metrics import confusion_matrix, segmentation_metrics

    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    # all images of a batch must share a size: batch images of equal padded size only
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, (img, _) in enumerate(ds.data):
        by_size.setdefault(img.shape[:2], []).append(i)
    for idx in by_size.values():
        for s in range(0, len(idx), batch_size):
            items = [ds[i] for i in idx[s:s + batch_size]]
            x = torch.stack([t[0] for t in items])
            y = torch.stack([t[1] for t in items])
            cm += confusion_matrix(model(x).argmax(1), y, num_classes, ignore_index)
    return segmentation_metrics(cm.numpy(), class_names)


def train_bare(
    data_root: str | Path,
    *,
    loss: str = "ce",
    steps: int = 100,
    batch_size: int = 8,
    crop_size: int = 384,
    lr: float = 1e-3,
    seed: int = 0,
    max_train_images: int | None = None,
    max_val_images: int | None = None,
    strategy: str = "full",
    class_weights: str = "median",
    schedule: str = "one-cycle",
    weight_decay: float = 1e-4,
    warmup_steps: int = 20,
    grad_clip: float = 1.0,
    encoder_lr_factor: float = 1.0,
    arch: str = "unet",
    encoder: str = "tf_efficientnet_lite0",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the default model with a hand-written loop and score it on the validation split.

    Args:
        data_root: a data set segtune can read (folder with dataset.yaml, or the yaml).
        loss: ``ce``, ``wce+dice`` or ``ce+dice`` (see the module docstring).
        steps: optimiser steps (the schedule spans exactly these).
        batch_size, crop_size: training batch and square crop side.
        lr: one-cycle ``max_lr``, or the peak LR of ``warmup-cosine`` (of the decoder + head).
        strategy: ``full`` (everything trains) or ``head`` (frozen encoder, BatchNorm in eval).
        class_weights: ``median`` or ``none`` (``ce+dice`` only; ``wce+dice`` is always median).
        schedule: ``one-cycle`` (AdamW torch defaults, no clipping) or ``warmup-cosine``
            (segtune's details: ``weight_decay`` with no-decay groups, ``warmup_steps``,
            ``grad_clip``; the last three are ignored by ``one-cycle``).
        encoder_lr_factor: ``full`` only: the encoder's LR is ``lr`` x this factor.
        seed: seeds torch (initialisation, crops, flips, order) and picks the same seeded
            subset of training/validation pairs as a segtune run with ``train.seed=seed``.
        max_train_images, max_val_images: seeded subsets (as ``data.max_*_images``).

    Returns:
        ``{"metrics": segmentation_metrics dict, "seconds", "steps", "train_images", "val_images",
        "final_train_loss"}``.
    """
    from segtune.config import DataConfig
    from segtune.data import SegDataModule, load_dataset_spec
    from segtune.models import create_model

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if strategy not in STRATEGIES or schedule not in SCHEDULES or class_weights not in CLASS_WEIGHTS:
        raise ValueError(f"strategy {strategy!r} / schedule {schedule!r} / class_weights {class_weights!r}: "
                         f"use {STRATEGIES} / {SCHEDULES} / {CLASS_WEIGHTS}")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    spec = load_dataset_spec(data_root)
    C, ign = spec.num_classes, spec.ignore_index
    model = create_model(arch, encoder, num_classes=C, weights="imagenet")
    # only the file lists come from segtune: the same seeded subsets as a segtune run
    dm = SegDataModule(spec, DataConfig(max_train_images=max_train_images, max_val_images=max_val_images),
                       model.mean, model.std, seed=seed)
    train_ds = PairDataset(dm.train_pairs, model.mean, model.std, ign, crop_size)
    val_ds = PairDataset(dm.val_pairs, model.mean, model.std, ign, None)
    loss_fn = _build_loss(loss, C, ign, [m for _, m in train_ds.data], class_weights)

    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, generator=gen,
                        drop_last=len(train_ds) > batch_size, num_workers=0)
    enc_ids = {id(p) for p in model.encoder.parameters()}
    enc_params = [p for p in model.parameters() if id(p) in enc_ids]
    head_params = [p for p in model.parameters() if id(p) not in enc_ids]
    enc_bns = [m for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if strategy == "head":  # frozen encoder: no gradients, BatchNorm statistics fixed
        for p in enc_params:
            p.requires_grad_(False)
        groups = [(head_params, lr)]
    elif encoder_lr_factor != 1.0:
        groups = [(head_params, lr), (enc_params, lr * encoder_lr_factor)]
    else:
        groups = [(head_params + enc_params, lr)]

    def train_mode() -> None:
        model.train()
        if strategy == "head":
            for m in enc_bns:
                m.eval()

    if schedule == "one-cycle":
        opt = torch.optim.AdamW([{"params": ps, "lr": g_lr} for ps, g_lr in groups])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g_lr for _, g_lr in groups], total_steps=steps)
        clip = 0.0
        desc = f"AdamW (wd 0.01) + one-cycle max_lr {lr:g}"
    else:
        pg = []
        for ps, g_lr in groups:
            pg.append({"params": [p for p in ps if p.ndim > 1], "lr": g_lr, "weight_decay": weight_decay})
            pg.append({"params": [p for p in ps if p.ndim <= 1], "lr": g_lr, "weight_decay": 0.0})
        opt = torch.optim.AdamW([g for g in pg if g["params"]])
        warm = min(warmup_steps, max(0, steps - 1))

        def factor(i: int) -> float:  # linear warm-up, then cosine to 0 at the last step
            if warm and i < warm:
                return (i + 1) / warm
            t = min(max((i - warm) / max(1, steps - warm), 0.0), 1.0)
            return 0.5 * (1.0 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        clip = float(grad_clip)
        desc = (f"AdamW (wd {weight_decay:g}, none on biases/norms) + {warm} warm-up steps + cosine, "
                f"lr {lr:g}, grad clip {clip:g}")
    if encoder_lr_factor != 1.0 and strategy == "full":
        desc += f", encoder lr x{encoder_lr_factor:g}"
    trainable = [p for p in model.parameters() if p.requires_grad]
    log(f"bare loop ({strategy}, {loss}{'' if loss != 'ce+dice' else ', class weights ' + class_weights}): "
        f"{len(train_ds)} train / {len(val_ds)} val images, {steps} steps, batch {batch_size}, crop {crop_size}, "
        f"{desc}; {sum(p.numel() for p in trainable)} trainable parameters")
    step, last = 0, float("nan")
    train_mode()
    while step < steps:
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            out = loss_fn(model(x), y)
            out.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, clip)
            opt.step()
            sched.step()
            step += 1
            last = float(out.detach())
            if step % 25 == 0 or step == steps:
                log(f"  step {step}/{steps}  loss {last:.4f}")
            if step >= steps:
                break
    metrics = evaluate(model, val_ds, C, ign, list(spec.classes))
    seconds = time.perf_counter() - t0
    log(f"bare loop ({loss}): val mIoU {metrics['miou']:.4f}, {seconds:.0f} s")
    return {
        "metrics": metrics,
        "seconds": round(seconds, 1),
        "steps": step,
        "train_images": len(train_ds),
        "val_images": len(val_ds),
        "final_train_loss": last,
        "trainable_params": sum(p.numel() for p in trainable),
        "settings": {"strategy": strategy, "loss": loss,
                     "class_weights": class_weights if loss == "ce+dice" else ("median" if loss == "wce+dice" else "none"),
                     "schedule": schedule, "lr": lr, "encoder_lr_factor": encoder_lr_factor,
                     **({"weight_decay": weight_decay, "no_decay_groups": True, "warmup_steps": warmup_steps,
                         "grad_clip": grad_clip} if schedule == "warmup-cosine" else
                        {"weight_decay": 0.01, "no_decay_groups": False, "grad_clip": 0.0}),
                     "augmentation": f"random crop {crop_size} + hflip"},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("--loss", choices=LOSSES, default="ce")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop-size", type=int, default=384)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--max-val", type=int, default=None)
    p.add_argument("--strategy", choices=STRATEGIES, default="full")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="median", help="ce+dice only")
    p.add_argument("--schedule", choices=SCHEDULES, default="one-cycle")
    p.add_argument("--encoder-lr-factor", type=float, default=1.0)
    a = p.parse_args(argv)
    r = train_bare(a.data, loss=a.loss, steps=a.steps, batch_size=a.batch_size, crop_size=a.crop_size,
                   lr=a.lr, seed=a.seed, max_train_images=a.max_train, max_val_images=a.max_val,
                   strategy=a.strategy, class_weights=a.class_weights, schedule=a.schedule,
                   encoder_lr_factor=a.encoder_lr_factor)
    for c in r["metrics"]["per_class"]:
        iou = "n/a" if c["iou"] is None else f"{c['iou']:.4f}"
        print(f"{c['name']:>12} {iou}")
    print(f"{'mIoU':>12} {r['metrics']['miou']:.4f}  ({r['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
