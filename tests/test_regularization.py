"""L1 (``optim.l1``) and L2 (``optim.weight_decay``) regularisation, named as such."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from segtune.config import Config, OptimConfig
from segtune.engine.module import SegTuneModule
from segtune.errors import ConfigError


def _module(l1: float, frozen_first: bool = False) -> SegTuneModule:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    if frozen_first:
        net[0].requires_grad_(False)
    return SegTuneModule(net, None, nn.CrossEntropyLoss(), OptimConfig(lr=1e-3, l1=l1), 2, 255)


def _grads(l1: float, frozen_first: bool = False) -> tuple[SegTuneModule, dict[str, torch.Tensor]]:
    m = _module(l1, frozen_first)
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(2, 3, 8, 8, generator=g), "mask": torch.randint(0, 2, (2, 8, 8), generator=g)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # self.log without a trainer
        m.training_step(batch, 0).backward()
    return m, {n: p.grad.clone() for n, p in m.model.named_parameters() if p.grad is not None}


def test_l1_adds_l1_times_sign_of_each_trainable_weight() -> None:
    _, plain = _grads(0.0)
    m, reg = _grads(0.05)
    for name, p in m.model.named_parameters():
        extra = reg[name] - plain[name]
        if p.ndim > 1:  # conv weights: + l1 * sign(w)
            torch.testing.assert_close(extra, 0.05 * torch.sign(p.detach()), rtol=0, atol=1e-6)
        else:  # biases and norm parameters: untouched, as with weight decay
            assert torch.equal(extra, torch.zeros_like(extra)), name


def test_l1_skips_frozen_weights_and_is_off_by_default() -> None:
    m, reg = _grads(0.05, frozen_first=True)
    assert "0.weight" not in reg  # frozen: no gradient at all
    expected = 0.05 * m.model[2].weight.detach().abs().sum()
    torch.testing.assert_close(m.l1_penalty(), expected)
    assert _module(0.0).l1_penalty() is None
    assert Config().optim.l1 == 0.0


def test_l1_must_be_non_negative() -> None:
    cfg = Config.from_dict({"optim": {"l1": -1e-4}})
    with pytest.raises(ConfigError, match="optim.l1=-0.0001 must be >= 0"):
        cfg.validate()
