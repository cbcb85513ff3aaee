"""Contract tests over the registries: every architecture x strategy, every loss.

Nothing here lists names by hand: a newly registered architecture, strategy or loss is tested
as soon as it is registered (style.md 6, "contract tests parametrized over the registries").

* architecture: builds offline, maps (N, 3, H, W) to (N, 3, H, W) logits, and
  :func:`~segtune.strategies.partition` puts every parameter in exactly one unit.
* architecture x strategy: ``apply`` sets ``requires_grad`` exactly on the units the strategy
  says train, keeps the norm layers of frozen stages in eval mode through ``model.train()``,
  and one AdamW step on ``param_groups`` changes exactly the trainable parameters (frozen
  weights and BatchNorm statistics stay bit-identical).
* loss: a finite float32 scalar with a gradient; pixels equal to ``ignore_index`` change
  neither the value nor the gradient, and an all-ignored batch gives 0, never NaN.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from segtune.config import LossConfig, StrategyConfig
from segtune.losses import build_loss, list_losses
from segtune.models import SegModel, create_model, list_architectures
from segtune.strategies import build_strategy, list_strategies, norm_layers, partition

ARCHS = list_architectures()
STRATEGIES = list_strategies()
NUM_CLASSES = 3
LR = 1e-3
# The smallest input every architecture accepts (SMP needs multiples of 32; BatchNorm needs
# batch >= 2 in train mode). Not square, so a swapped H/W in any model shows.
N, H, W = 2, 32, 64
LOSS_NAMES = list_losses()


@pytest.fixture(scope="module")
def built() -> Callable[[str], SegModel]:
    """``built(arch)``: the architecture built once per module (seed 0, random weights).

    Tests never modify it: the strategy tests work on a deep copy. All of them together hold
    about 120 M parameters (0.5 GB), the two torchvision ResNet-50 models most of it.
    """
    cache: dict[str, SegModel] = {}

    def get(arch: str) -> SegModel:
        if arch not in cache:
            torch.manual_seed(0)
            cache[arch] = create_model(arch, num_classes=NUM_CLASSES, weights="none")
        return cache[arch]

    return get


def test_registries_are_not_empty() -> None:
    # guards the parametrizations below against silently testing nothing
    assert len(ARCHS) >= 3 and len(STRATEGIES) >= 3 and len(LOSS_NAMES) >= 3
    assert len(set(ARCHS)) == len(ARCHS) and len(set(STRATEGIES)) == len(STRATEGIES)


# --------------------------------------------------------------------------- architectures
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_builds_and_maps_to_input_size(arch: str, built) -> None:
    model = built(arch)
    assert isinstance(model, SegModel) and model.arch == arch and model.num_classes == NUM_CLASSES
    assert model.training  # create_model returns a model in train mode
    x = torch.randn(N, 3, H, W, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        try:
            out = model(x)
        finally:
            model.train()
    assert out.shape == (N, NUM_CLASSES, H, W) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.std() > 0  # not a constant map


@pytest.mark.parametrize("arch", ARCHS)
def test_partition_covers_every_parameter_exactly_once(arch: str, built) -> None:
    model = built(arch)
    units = partition(model)
    *stages, head = units
    assert head.stage is None and [u.stage for u in stages] == list(range(len(stages)))
    assert len(stages) == len(model.encoder_stages()) >= 2
    assert all(u.params for u in units), [u.name for u in units if not u.params]
    seen = [id(p) for u in units for _, p in u.params]
    assert len(seen) == len(set(seen))  # no parameter in two units
    assert set(seen) == {id(p) for p in model.parameters()}  # and none left out
    enc = {id(p) for p in model.encoder.parameters()}
    assert {id(p) for u in stages for _, p in u.params} == enc  # stages = the encoder
    assert model.class_head_keys() and all(k.startswith("net.") for k in model.class_head_keys())


# --------------------------------------------------------------------- architecture x strategy

def _check_pattern(model: SegModel, strategy, epoch: int) -> None:
    """requires_grad and norm modes after ``apply(epoch)`` + ``model.train()``."""
    strategy.apply(model, epoch=epoch)
    model.train()  # what Lightning (or a user) does after apply: must not wake frozen norms
    trainable = set(strategy.trainable_stages(epoch))
    assert trainable <= set(range(strategy.num_stages))
    units = strategy.units(model)
    assert {id(p) for u in units for _, p in u.params} == {id(p) for p in model.parameters()}
    for unit in units:
        on = strategy.unit_trains(unit, epoch)  # the strategy's own word, checked against the model
        wrong = [n for n, p in unit.params if p.requires_grad != on]
        assert not wrong, f"epoch {epoch}, {unit.name} (trains={on}): {wrong[:3]}"
        for m in norm_layers(unit.modules):
            assert m.training == on, f"epoch {epoch}, {unit.name}: norm {type(m).__name__} training={m.training}"


@pytest.mark.parametrize("strategy_name", STRATEGIES)
@pytest.mark.parametrize("arch", ARCHS)  # bottom decorator varies slowest: one build per arch
def test_strategy_trains_exactly_its_units(arch: str, strategy_name: str, built) -> None:
    model = copy.deepcopy(built(arch))
    strategy = build_strategy(model, StrategyConfig(name=strategy_name), lr=LR)

    # the pattern at a few epochs (gradual changes over epochs, the others must not)
    for epoch in sorted({0, 1, 2, strategy.num_stages + 1}, reverse=True):
        _check_pattern(model, strategy, epoch)
    _check_pattern(model, strategy, 0)  # back to epoch 0: apply is idempotent and reversible

    units = strategy.units(model)
    frozen_units = [u for u in units if not strategy.unit_trains(u, 0)]
    frozen_norms = [m for u in frozen_units for m in norm_layers(u.modules)]

    # param groups: every parameter exactly once, each group wholly trainable or wholly frozen
    groups = strategy.param_groups(0.01)
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups)) and set(in_groups) == {id(p) for p in model.parameters()}
    for g in groups:
        flags = {p.requires_grad for p in g["params"]}
        assert flags == {strategy.group_trainable(g["name"], 0)}, g["name"]

    # one optimiser step on a random batch
    opt = torch.optim.AdamW(groups)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers_before = [{k: v.clone() for k, v in m.state_dict().items()} for m in frozen_norms]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, 3, H, W, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (N, H, W), generator=gen)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()

    changed_trainable = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if p.grad is not None and p.grad.abs().sum() > 0:
                assert not torch.equal(p, params_before[name]), f"{name}: had a gradient, did not change"
                changed_trainable += 1
        else:
            assert p.grad is None, f"{name}: frozen but got a gradient"
            assert torch.equal(p, params_before[name]), f"{name}: frozen but changed"
    assert changed_trainable > 0  # at least the head learns
    for m, before in zip(frozen_norms, buffers_before, strict=True):
        for k, v in m.state_dict().items():  # running_mean, running_var, num_batches_tracked
            assert torch.equal(v, before[k]), f"frozen {type(m).__name__}.{k} moved"


# --------------------------------------------------------------------------------- losses
C_LOSS = 4


def _build_loss(name: str, ignore_index: int, weighted: bool) -> torch.nn.Module:
    weights = torch.tensor([0.5, 1.0, 2.0, 4.0]) if weighted else None
    return build_loss(LossConfig(name=name), C_LOSS, ignore_index, weights)


def _batch(ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, C_LOSS, 8, 12, generator=gen)
    target = torch.randint(0, C_LOSS, (2, 8, 12), generator=gen)
    ignored = torch.rand(2, 8, 12, generator=gen) < 0.3
    target[ignored] = ignore_index
    return logits, target, ignored


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("ignore_index", [255, C_LOSS], ids=["ignore255", "ignoreC"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_contract(name: str, ignore_index: int, weighted: bool) -> None:
    loss_fn = _build_loss(name, ignore_index, weighted)
    logits, target, ignored = _batch(ignore_index)
    assert ignored.any() and (~ignored).any()

    x = logits.clone().requires_grad_(True)
    value = loss_fn(x, target)
    assert value.dim() == 0 and value.dtype == torch.float32 and value.requires_grad
    assert torch.isfinite(value) and value > 0
    value.backward()
    grad = x.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # ignored pixels: no gradient, and whatever the logits there, the same value
    assert grad.permute(0, 2, 3, 1)[ignored].abs().max() == 0
    changed = logits.clone()
    changed.permute(0, 2, 3, 1)[ignored] = 50.0 * torch.randn(int(ignored.sum()), C_LOSS, generator=torch.Generator().manual_seed(2))
    assert torch.equal(loss_fn(changed, target), value.detach())

    # every pixel ignored: 0 (documented), never NaN, and backward still works
    all_ignored = torch.full_like(target, ignore_index)
    x = logits.clone().requires_grad_(True)
    empty = loss_fn(x, all_ignored)
    assert empty.dim() == 0 and torch.isfinite(empty) and float(empty.detach()) == 0.0
    empty.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() == 0

    # low-precision logits (AMP): still a float32 finite scalar
    half = loss_fn(logits.to(torch.bfloat16), target)
    assert half.dtype == torch.float32 and torch.isfinite(half)
