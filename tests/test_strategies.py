"""Transfer strategies: requires_grad patterns, param groups, LRs, frozen BatchNorm statistics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segtune.config import StrategyConfig
from segtune.errors import ConfigError
from segtune.models import create_model
from segtune.strategies import build_strategy, list_strategies, norm_layers

torch.set_num_threads(1)  # 2 threads on a shared 2-core box stall in OpenMP barriers
LR = 1e-3
S = 5  # encoder stages of tf_efficientnet_lite0


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights="none")


def _stage_flags(model) -> list[bool]:
    """Per encoder stage: True if all its params train, False if none; error if mixed."""
    out = []
    for mods in model.encoder_stages():
        flags = {p.requires_grad for m in mods for p in m.parameters()}
        assert len(flags) == 1
        out.append(flags.pop())
    return out


def _head_trains(model) -> bool:
    return all(p.requires_grad for m in model.head_modules() for p in m.parameters())


def _snapshot(modules) -> dict[str, torch.Tensor]:
    return {
        f"{i}.{k}": v.detach().clone()
        for i, m in enumerate(modules)
        for k, v in m.state_dict().items()
    }


def _train_steps(model, strategy, opt_name: str, steps: int = 3) -> None:
    groups = strategy.param_groups(weight_decay=0.05)
    opt = (
        torch.optim.AdamW(groups) if opt_name == "adamw" else torch.optim.SGD(groups, momentum=0.9)
    )
    strategy.apply(model, 0)
    model.train()  # what Lightning does: frozen norms must stay in eval mode
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(2, 3, 64, 64, generator=g)
        y = torch.randint(0, 3, (2, 64, 64), generator=g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize(
    ("name", "kwargs", "stages"),
    [
        ("head", {}, [False] * S),
        ("partial", {"freeze_stages": 2}, [False, False, True, True, True]),
        ("partial", {"freeze_stages": 0}, [True] * S),
        ("full", {}, [True] * S),
        ("discriminative", {}, [True] * S),
        ("gradual", {"head_epochs": 1}, [False] * S),
        ("gradual", {"head_epochs": 0}, [False, False, False, False, True]),
        ("scratch", {}, [True] * S),
    ],
)
def test_requires_grad_pattern_at_epoch_0(model, name, kwargs, stages):
    strategy = build_strategy(model, StrategyConfig(name=name, **kwargs), LR)
    strategy.apply(model, 0)
    assert _stage_flags(model) == stages
    assert _head_trains(model)
    rows = strategy.summary(0)
    assert [r["group"] for r in rows] == [f"encoder.{k}" for k in range(S)] + ["head"]
    assert [r["trainable"] == r["total"] for r in rows[:-1]] == stages
    assert "\n" not in strategy.describe() and strategy.describe().startswith(name)
    assert strategy.pretrained is (name != "scratch")


def test_gradual_unfreezes_deepest_first(model):
    cfg = StrategyConfig(name="gradual", head_epochs=2, unfreeze_every=2)
    strategy = build_strategy(model, cfg, LR)
    expected = {
        0: [],
        1: [],
        2: [4],
        3: [4],
        4: [3, 4],
        5: [3, 4],
        6: [2, 3, 4],
        8: [1, 2, 3, 4],
        10: [0, 1, 2, 3, 4],
        50: [0, 1, 2, 3, 4],
    }
    model.train()
    for epoch, stages in expected.items():
        strategy.apply(model, epoch)
        assert _stage_flags(model) == [k in stages for k in range(S)], epoch
        for k, mods in enumerate(model.encoder_stages()):
            assert all(bn.training == (k in stages) for bn in norm_layers(mods)), (epoch, k)
        assert strategy.trainable_stages(epoch) == stages
    assert not strategy.static and strategy.group_trainable("head.no_decay", 0)
    assert not strategy.group_trainable("encoder.4", 1) and strategy.group_trainable(
        "encoder.4.no_decay", 2
    )
    # going back (e.g. a resume at an earlier epoch) re-freezes: state derives from the epoch
    strategy.apply(model, 2)
    assert _stage_flags(model) == [False] * 4 + [True]


@pytest.mark.parametrize(
    "name", ["head", "partial", "full", "discriminative", "gradual", "scratch"]
)
def test_param_groups_cover_every_param_once(model, name):
    strategy = build_strategy(model, StrategyConfig(name=name), LR)
    groups = strategy.param_groups(weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names)) and names[0] == "head"
    for g in groups:
        assert g["params"] and g["lr"] > 0
        if g["name"].endswith(".no_decay"):
            assert g["weight_decay"] == 0.0 and all(p.ndim <= 1 for p in g["params"])
        else:
            assert g["weight_decay"] == 0.01 and all(p.ndim > 1 for p in g["params"])
    torch.optim.AdamW(groups)  # valid optimizer input


def test_discriminative_learning_rates(model):
    plain = build_strategy(model, StrategyConfig(name="discriminative", encoder_lr_factor=0.1), LR)
    lrs = {g["name"]: g["lr"] for g in plain.param_groups(0.0)}
    assert lrs["head"] == LR and lrs["head.no_decay"] == LR
    for k in range(S):
        assert lrs[f"encoder.{k}"] == pytest.approx(LR * 0.1)
    cfg = StrategyConfig(name="discriminative", encoder_lr_factor=0.1, stage_lr_decay=0.5)
    decayed = build_strategy(model, cfg, LR)
    lrs = {g["name"]: g["lr"] for g in decayed.param_groups(0.0)}
    for k in range(S):  # deepest stage (4) gets lr * 0.1, each stage towards the input halves it
        assert lrs[f"encoder.{k}"] == pytest.approx(LR * 0.1 * 0.5 ** (S - 1 - k))
        assert lrs[f"encoder.{k}.no_decay"] == lrs[f"encoder.{k}"]
    assert [r["lr"] for r in decayed.summary()][-1] == LR
    gradual = build_strategy(model, StrategyConfig(name="gradual", encoder_lr_factor=0.2), LR)
    enc_lrs = [g["lr"] for g in gradual.param_groups(0.0) if g["name"].startswith("encoder")]
    assert enc_lrs and all(lr == pytest.approx(LR * 0.2) for lr in enc_lrs)
    full = build_strategy(model, StrategyConfig(name="full"), LR)
    assert {g["lr"] for g in full.param_groups(0.0)} == {LR}


def test_head_strategy_freezes_encoder_weights_and_bn_stats(model):
    strategy = build_strategy(model, StrategyConfig(name="head"), LR)
    enc_before = _snapshot([model.encoder])
    head_before = _snapshot(model.head_modules())
    _train_steps(model, strategy, "adamw")
    assert all(not bn.training for bn in norm_layers([model.encoder]))
    for k, v in _snapshot([model.encoder]).items():
        assert torch.equal(v, enc_before[k]), k  # weights, running_mean/var, num_batches_tracked
    changed = [
        k for k, v in _snapshot(model.head_modules()).items() if not torch.equal(v, head_before[k])
    ]
    assert any(k.endswith("weight") for k in changed)
    assert any(k.endswith("running_mean") for k in changed)  # decoder BN still trains


def test_partial_strategy_freezes_first_stages_only(model):
    strategy = build_strategy(model, StrategyConfig(name="partial", freeze_stages=2), LR)
    stages = model.encoder_stages()
    before = [_snapshot(mods) for mods in stages]
    _train_steps(model, strategy, "sgd")
    after = [_snapshot(mods) for mods in model.encoder_stages()]
    for k in range(2):
        for key, v in after[k].items():
            assert torch.equal(v, before[k][key]), (k, key)
    for k in range(2, S):
        changed = {key for key, v in after[k].items() if not torch.equal(v, before[k][key])}
        assert any(key.endswith("running_mean") for key in changed), k
        assert any(key.endswith("weight") and "bn" not in key for key in changed), k


def test_apply_is_idempotent_and_follows_model_mode(model):
    strategy = build_strategy(model, StrategyConfig(name="partial", freeze_stages=1), LR)
    model.train()
    strategy.apply(model, 0)
    state = [(n, m.training) for n, m in model.named_modules()]
    grads = [(n, p.requires_grad) for n, p in model.named_parameters()]
    strategy.apply(model, 0)
    assert state == [(n, m.training) for n, m in model.named_modules()]
    assert grads == [(n, p.requires_grad) for n, p in model.named_parameters()]
    model.eval()
    strategy.apply(model, 0)  # e.g. after validation, while in eval mode
    assert not any(m.training for m in model.modules())
    model.train()
    frozen = norm_layers(model.encoder_stages()[0])
    assert frozen and not any(bn.training for bn in frozen)
    assert all(bn.training for bn in norm_layers(model.encoder_stages()[1]))


def test_torchvision_model_partition_and_head_strategy():
    m = create_model("lraspp_mobilenet_v3_large", num_classes=3, weights="none")
    strategy = build_strategy(m, StrategyConfig(name="head"), LR)
    groups = strategy.param_groups(0.01)
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(
        id(p) for p in m.parameters()
    )
    strategy.apply(m, 0)
    m.train()
    assert not any(p.requires_grad for p in m.encoder.parameters())
    assert not any(bn.training for bn in norm_layers([m.encoder]))


def test_bad_strategy_config(model):
    assert set(list_strategies()) == {
        "head",
        "partial",
        "full",
        "discriminative",
        "gradual",
        "scratch",
            "classifier",
}
    with pytest.raises(ConfigError, match="did you mean 'partial'"):
        build_strategy(model, StrategyConfig(name="partal"), LR)
    with pytest.raises(ConfigError, match="freeze_stages=6: .* has 5 stages"):
        build_strategy(model, StrategyConfig(name="partial", freeze_stages=6), LR)
    with pytest.raises(ConfigError, match="optim.lr"):
        build_strategy(model, StrategyConfig(name="full"), 0.0)


def test_lightning_fit_keeps_frozen_stages_fixed(model):
    """Under a real Trainer (model.train() calls, validation mode restore), gradual unfreezing
    changes only the stages it unfroze; frozen BatchNorm stays in eval mode in every step."""
    import lightning as L
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self, model, strategy):
            super().__init__()
            self.model, self.strategy = model, strategy

        def training_step(self, batch, idx):
            frozen = set(range(S)) - set(self.strategy.trainable_stages(self.current_epoch))
            for k in frozen:
                assert not any(bn.training for bn in norm_layers(self.model.encoder_stages()[k]))
            return F.cross_entropy(self.model(batch[0]), batch[1])

        def validation_step(self, batch, idx):
            self.log("val_loss", F.cross_entropy(self.model(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.AdamW(self.strategy.param_groups(0.01))

        def on_train_start(self):
            self.strategy.apply(self.model, self.current_epoch)

        def on_train_epoch_start(self):
            self.strategy.apply(self.model, self.current_epoch)

        def on_validation_end(self):
            self.strategy.apply(self.model, self.current_epoch)

    strategy = build_strategy(model, StrategyConfig(name="gradual", head_epochs=1), LR)
    before = [_snapshot(mods) for mods in model.encoder_stages()]
    data = TensorDataset(torch.randn(4, 3, 64, 64), torch.randint(0, 3, (4, 64, 64)))
    trainer = L.Trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        Module(model, strategy), DataLoader(data, batch_size=2), DataLoader(data, batch_size=2)
    )
    after = [_snapshot(mods) for mods in model.encoder_stages()]
    changed = [
        k for k in range(S) if any(not torch.equal(v, before[k][n]) for n, v in after[k].items())
    ]
    assert changed == [3, 4]  # epoch 0: head only, epoch 1: + stage 4, epoch 2: + stage 3
