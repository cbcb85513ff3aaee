from segtune.config import Config
from segtune.strategies.auto import AUTO_TABLE, choose_defaults, default_epochs, resolve_auto


def test_auto_fills_only_unset_values_and_explains() -> None:
    cfg = Config()
    notes = resolve_auto(cfg, 92)
    row = choose_defaults(92)
    assert cfg.strategy.name == row.strategy and cfg.optim.lr == row.lr
    assert cfg.train.epochs == default_epochs(92, cfg.data.batch_size)
    assert len(notes) == 3 and "92 training images" in notes[0] and row.why in notes[0]

    user = Config()
    user.strategy.name, user.optim.lr, user.train.epochs = "full", 5e-4, 7
    assert resolve_auto(user, 92) == []
    assert (user.strategy.name, user.optim.lr, user.train.epochs) == ("full", 5e-4, 7)


def test_default_epochs_target_about_1000_steps_clamped() -> None:
    assert default_epochs(367, 8) == 30  # 46 steps/epoch -> 22 epochs, clamped up to 30
    assert default_epochs(92, 8) == 84  # 12 steps/epoch
    assert default_epochs(5, 8) == 200  # clamped
    assert all(r.why for r in AUTO_TABLE)
