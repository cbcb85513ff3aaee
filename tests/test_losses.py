"""Losses: agreement with torch, ignore handling, all-ignore batches, class weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from segtune.config import LossConfig
from segtune.errors import ConfigError, DataError
from segtune.losses import build_loss, class_weights_from_counts

C = 3


def _batch(seed: int = 0, ignore_frac: float = 0.25):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, C, 6, 5, generator=g)
    target = torch.randint(0, C, (2, 6, 5), generator=g)
    ignore = torch.rand(2, 6, 5, generator=g) < ignore_frac
    target[ignore] = 255
    return logits, target, ignore


@pytest.mark.parametrize("weights", [None, torch.tensor([0.5, 2.0, 1.0])])
def test_ce_equals_torch_cross_entropy(weights):
    logits, target, _ = _batch()
    loss = build_loss(LossConfig(name="ce"), C, 255, weights)
    ref = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert loss(logits, target).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("name", ["ce", "dice", "focal", "ce+dice"])
def test_ignored_pixels_affect_neither_loss_nor_gradient(name):
    logits, target, ignore = _batch(1)
    loss_fn = build_loss(LossConfig(name=name), C, 255, torch.tensor([1.0, 2.0, 0.5]))
    a = logits.clone().requires_grad_(True)
    la = loss_fn(a, target)
    la.backward()
    # change the logits only at ignored pixels
    changed = logits.clone()
    changed[ignore.unsqueeze(1).expand_as(changed)] += 100.0
    b = changed.requires_grad_(True)
    lb = loss_fn(b, target)
    lb.backward()
    assert la.item() == pytest.approx(lb.item(), rel=1e-6, abs=1e-7)
    mask = ignore.unsqueeze(1).expand_as(logits)
    assert torch.all(a.grad[mask] == 0) and torch.all(b.grad[mask] == 0)
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("name", ["ce", "dice", "focal", "ce+dice"])
def test_all_ignore_batch_gives_zero_with_grad(name):
    logits = torch.randn(2, C, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255, dtype=torch.long)
    loss = build_loss(LossConfig(name=name), C, 255, None)(logits, target)
    assert math.isfinite(loss.item()) and loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_dice_perfect_prediction_near_zero_and_wrong_near_one():
    target = torch.tensor([[[0, 1, 1], [2, 2, 255]]])
    onehot = F.one_hot(target.clamp(max=C - 1), C).permute(0, 3, 1, 2).float()
    dice = build_loss(LossConfig(name="dice"), C, 255, None)
    assert dice(onehot * 50.0, target).item() < 1e-6
    wrong = F.one_hot((target.clamp(max=C - 1) + 1) % C, C).permute(0, 3, 1, 2).float()
    assert dice(wrong * 50.0, target).item() > 0.99


def test_dice_excludes_classes_absent_from_target():
    # only class 0 in the target, predicted perfectly: absent classes 1, 2 add nothing
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    logits = torch.zeros(1, C, 2, 2)
    logits[:, 0] = 50.0
    assert build_loss(LossConfig(name="dice"), C, 255, None)(logits, target).item() < 1e-6


@pytest.mark.parametrize("weights", [None, torch.tensor([0.2, 1.0, 3.0])])
def test_focal_gamma_zero_equals_ce(weights):
    logits, target, _ = _batch(2)
    focal = build_loss(LossConfig(name="focal", focal_gamma=0.0), C, 255, weights)
    ref = F.cross_entropy(logits, target, weight=weights, ignore_index=255)
    assert focal(logits, target).item() == pytest.approx(ref.item(), rel=1e-5)


def test_focal_gamma_down_weights_easy_pixels():
    logits, target, _ = _batch(3)
    ce = build_loss(LossConfig(name="ce"), C, 255, None)(logits, target)
    focal = build_loss(LossConfig(name="focal", focal_gamma=2.0), C, 255, None)(logits, target)
    assert 0 < focal.item() < ce.item()


def test_ce_plus_dice_is_the_sum():
    logits, target, _ = _batch(4)
    cfg = LossConfig(name="ce+dice", dice_weight=0.5)
    total = build_loss(cfg, C, 255, None)(logits, target)
    ce = build_loss(LossConfig(name="ce"), C, 255, None)(logits, target)
    dice = build_loss(LossConfig(name="dice"), C, 255, None)(logits, target)
    assert total.item() == pytest.approx(ce.item() + 0.5 * dice.item(), rel=1e-6)


def test_ce_plus_dice_weights_only_the_ce_term():
    logits, target, _ = _batch(5)
    w = torch.tensor([0.5, 1.0, 3.0] + [1.0] * (C - 3))
    cfg = LossConfig(name="ce+dice", dice_weight=1.0)
    total = build_loss(cfg, C, 255, w)(logits, target)
    wce = build_loss(LossConfig(name="ce"), C, 255, w)(logits, target)
    plain_dice = build_loss(LossConfig(name="dice"), C, 255, None)(logits, target)
    weighted_dice = build_loss(LossConfig(name="dice"), C, 255, w)(logits, target)
    assert total.item() == pytest.approx(wce.item() + plain_dice.item(), rel=1e-6)
    assert weighted_dice.item() != pytest.approx(plain_dice.item(), rel=1e-3)


def test_unknown_loss_is_config_error():
    with pytest.raises(ConfigError):
        build_loss(LossConfig(name="hinge"), C, 255, None)


def test_class_weights_by_hand():
    counts = [600, 300, 100, 0]
    assert class_weights_from_counts(counts, "none") is None
    # freq = 0.6, 0.3, 0.1; 1/freq = 5/3, 10/3, 10 (mean 5) -> 1/3, 2/3, 2; absent -> 0
    inv = class_weights_from_counts(counts, "inverse")
    torch.testing.assert_close(inv, torch.tensor([1 / 3, 2 / 3, 2.0, 0.0]))
    assert inv.dtype == torch.float32
    # median freq over present classes = 0.3 -> 0.5, 1, 3; absent -> 0
    med = class_weights_from_counts(torch.tensor(counts), "median")
    torch.testing.assert_close(med, torch.tensor([0.5, 1.0, 3.0, 0.0]))


def test_class_weights_clamped_and_errors():
    w = class_weights_from_counts([1_000_000, 1, 1_000_000], "median")
    assert float(w.max()) == 50.0
    with pytest.raises(ConfigError):
        class_weights_from_counts([1, 2], "sqrt")
    with pytest.raises(DataError):
        class_weights_from_counts([0, 0], "inverse")
