from pathlib import Path

import pytest

from segtune.config import Config, apply_overrides
from segtune.errors import ConfigError


def test_defaults_validate_and_roundtrip(tmp_path: Path) -> None:
    cfg = Config()
    cfg.data.root = "somewhere"
    cfg.validate()
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = Config.from_yaml(p)
    assert again.to_dict() == cfg.to_dict()


def test_overrides_parse_types() -> None:
    cfg = apply_overrides(Config(), ["optim.lr=3e-4", "train.max_steps=7", "data.hflip=false", "strategy.stage_lr_decay=0.5"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.max_steps == 7
    assert cfg.data.hflip is False
    assert cfg.strategy.stage_lr_decay == 0.5


@pytest.mark.parametrize(
    "override, needle",
    [
        (["optim.lr=-1"], "optim.lr=-1.0 must be > 0"),
        (["strategy.name=headd"], "did you mean 'head'"),
        (["optim.lrr=1"], "valid: optimizer, lr"),
        (["data.crop_size=100"], "multiple of 32"),
        (["train.epochs=abc"], "must be an integer"),
    ],
)
def test_bad_values_name_key_and_fix(override: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), override).validate()
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_section_in_yaml(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("optimiser:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="did you mean 'optim'"):
        Config.from_yaml(p)


def test_override_parsing_is_one_function_for_cli_and_python() -> None:
    from segtune.config import override_dict, parse_overrides

    assert parse_overrides(["optim.lr=3e-4", " train.epochs = 2 ", "optim.lr=1e-3"]) == {
        "optim.lr": "1e-3", "train.epochs": "2"}
    assert override_dict(["optim.lr=0.001", "train.progress=false", "model.weights="]) == {
        "optim.lr": 1e-3, "train.progress": False, "model.weights": ""}
    given = {"train.epochs": 3}
    assert override_dict(given) == given and override_dict(given) is not given
    assert override_dict(None) == {}
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_overrides(["optim.lr"])


def test_budget_flags_map_to_their_config_keys() -> None:
    from segtune.config import budget_overrides

    assert budget_overrides() == {}
    assert budget_overrides(epochs=3, lr=0.01, progress=False) == {
        "train.epochs": 3, "optim.lr": 0.01, "train.progress": False}
    cfg = apply_overrides(Config(), budget_overrides(max_steps=7))
    assert cfg.train.max_steps == 7


def test_atomic_writes_get_a_plain_files_permissions(tmp_path: Path) -> None:
    """Outputs written through a temporary file are as readable as a file opened with open()."""
    import os

    from segtune._io import _UMASK, atomic_path, atomic_write_json

    atomic_write_json(tmp_path / "a.json", {"x": 1})
    with atomic_path(tmp_path / "b.png", durable=False) as tmp:
        tmp.write_bytes(b"\x89PNG")
    (tmp_path / "plain.txt").write_text("x")
    plain = os.stat(tmp_path / "plain.txt").st_mode & 0o777
    assert plain == 0o666 & ~_UMASK
    for name in ("a.json", "b.png"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == plain, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.png", "plain.txt"]


def test_temp_dir_gets_a_plain_folders_permissions(tmp_path: Path) -> None:
    import os

    from segtune._io import _UMASK, temp_dir

    made = temp_dir(tmp_path / "parent", prefix=".out.")
    assert made.parent == tmp_path / "parent" and made.name.startswith(".out.") and not any(made.iterdir())
    assert os.stat(made).st_mode & 0o777 == 0o777 & ~_UMASK
