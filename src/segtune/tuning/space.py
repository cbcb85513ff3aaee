"""The search space of ``segtune tune``: a YAML file the user can edit.

Each entry of ``params:`` is one hyperparameter, named by the config key it sets
(``section.key``, see :mod:`segtune.config`), or by a name of your own whose ``presets`` are
named sets of config values (e.g. an augmentation recipe that sets three keys at once)::

    params:
      optim.lr: {low: 3.0e-4, high: 1.0e-2, log: true, grid: [1.0e-3, 3.0e-3]}   # float range
      strategy.freeze_stages: {low: 1, high: 4, grid: [2]}                       # integer range
      loss.class_weights: {choices: [median, none]}                              # categorical
      augmentation:
        presets:
          crop_flip: {data.scale_min: 1.0, data.scale_max: 1.0}
          rescale: {data.scale_min: 0.5, data.scale_max: 2.0}

A range is an integer range when ``low`` and ``high`` are both integers. The ``grid`` sampler
tries every combination of ``choices`` / ``presets`` / ``grid`` values, so each range needs a
``grid:`` list for it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, apply_overrides
from ..errors import ConfigError, SegtuneError

__all__ = ["Param", "SearchSpace", "DEFAULT_SPACE_YAML", "load_space", "write_default_space"]

DEFAULT_SPACE_YAML = """\
# Search space of `segtune tune` (edit freely; `segtune tune DATA --space THIS_FILE`).
# Each entry under params: is one hyperparameter, named by the config key it sets
# (section.key: see `segtune train --help` and src/segtune/config.py):
#   KEY: {choices: [a, b, ...]}                one of the values
#   KEY: {low: L, high: H, log: true}          a float in [L, H] (log: sampled on a log scale)
#   KEY: {low: 1, high: 4}                     an integer in [1, 4] (both bounds integers)
#   NAME: {presets: {p1: {KEY: v, ...}, ...}}  one of several named sets of config values
# The grid sampler (--sampler grid) tries every combination of choices, presets and the
# grid: lists of the ranges. Values a trial's strategy does not use are ignored by it
# (e.g. encoder_lr_factor with the head strategy). Fixed settings for every trial
# (e.g. train.max_steps) go in --config / --set, not here.
params:
  strategy.name: {choices: [head, discriminative, partial, gradual]}
  optim.lr: {low: 3.0e-4, high: 1.0e-2, log: true, grid: [1.0e-3, 3.0e-3]}
  strategy.encoder_lr_factor: {low: 0.01, high: 0.3, log: true, grid: [0.1]}
  strategy.freeze_stages: {low: 1, high: 4, grid: [2]}
  loss.name: {choices: [ce+dice, ce]}
  loss.class_weights: {choices: [median, none]}
  augmentation:          # full: random crop (data.crop_size) + flip (+ rescale / jitter); flip: whole images
    presets:
      crop_flip: {data.augment: full, data.scale_min: 1.0, data.scale_max: 1.0, data.color_jitter: 0.0}
      rescale: {data.augment: full, data.scale_min: 0.75, data.scale_max: 1.25, data.color_jitter: 0.0}
      rescale_jitter: {data.augment: full, data.scale_min: 0.5, data.scale_max: 2.0, data.color_jitter: 0.2}
      whole_flip: {data.augment: flip}
  data.crop_size: {choices: [256, 384]}
  train.epochs: {choices: [10, 20, 40]}
"""

_SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Param:
    """One hyperparameter: categorical (``choices``), preset, or a float/int range.

    Attributes:
        name: config key (``section.key``) or, for presets, a name of the user's choosing.
        choices: categorical values (YAML scalars), or None.
        presets: ``{preset name: {config key: value}}``, or None.
        low, high: range bounds (int range when both are ints).
        log: sample the range on a log scale.
        grid: the range's values for the grid sampler.
    """

    name: str
    choices: tuple[Any, ...] | None = None
    presets: dict[str, dict[str, Any]] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    grid: tuple[Any, ...] | None = None

    @property
    def is_int(self) -> bool:
        """True when both bounds are ints (the parameter is suggested as an int)."""
        return isinstance(self.low, int) and isinstance(self.high, int)

    def suggest(self, trial: Any) -> Any:
        """The trial's value for this parameter (an Optuna ``trial.suggest_*`` call)."""
        if self.presets is not None:
            return trial.suggest_categorical(self.name, list(self.presets))
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def grid_values(self) -> list[Any] | None:
        """Values for the grid sampler, or None when a range has no ``grid:`` list."""
        if self.presets is not None:
            return list(self.presets)
        if self.choices is not None:
            return list(self.choices)
        return list(self.grid) if self.grid is not None else None

    def config_values(self, value: Any) -> dict[str, Any]:
        """``{dotted config key: value}`` that the trial's ``value`` sets."""
        if self.presets is not None:
            return dict(self.presets[value])
        return {self.name: value}


@dataclass(frozen=True)
class SearchSpace:
    """The hyperparameters of a study, in file order; ``source`` names the file in errors."""

    params: tuple[Param, ...]
    source: str = "search space"

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample every parameter; returns ``{dotted config key: value}`` for the trial."""
        values: dict[str, Any] = {}
        for p in self.params:
            values.update(p.config_values(p.suggest(trial)))
        return values

    def config_values(self, params: dict[str, Any]) -> dict[str, Any]:
        """``{dotted config key: value}`` of a finished trial's ``params`` (Optuna's names)."""
        values: dict[str, Any] = {}
        for p in self.params:
            if p.name in params:
                values.update(p.config_values(params[p.name]))
        return values

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space; ConfigError names a range without ``grid:``."""
        out: dict[str, list[Any]] = {}
        for p in self.params:
            values = p.grid_values()
            if values is None:
                raise ConfigError(
                    f"{self.source}: params.{p.name} is a range without a grid: list, which the grid sampler "
                    f"needs (add e.g. grid: [{p.low}, {p.high}], or use --sampler tpe)"
                )
            out[p.name] = values
        return out

    def grid_size(self) -> int:
        """Number of points of the full grid (product of every parameter's grid values)."""
        return len(list(itertools.product(*self.grid().values())))

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (``{"params": {...}}``), as :func:`load_space` reads it."""
        params: dict[str, Any] = {}
        for p in self.params:
            if p.presets is not None:
                params[p.name] = {"presets": p.presets}
            elif p.choices is not None:
                params[p.name] = {"choices": list(p.choices)}
            else:
                d: dict[str, Any] = {"low": p.low, "high": p.high}
                if p.log:
                    d["log"] = True
                if p.grid is not None:
                    d["grid"] = list(p.grid)
                params[p.name] = d
        return {"params": params}


def load_space(space: str | Path | dict[str, Any] | SearchSpace | None = None) -> SearchSpace:
    """Read and check a search space (a YAML path, its dict form, or None for the default).

    Raises:
        ConfigError: one line naming the file, the entry and the fix.
    """
    if isinstance(space, SearchSpace):
        return space
    if space is None:
        return _parse(yaml.safe_load(DEFAULT_SPACE_YAML), "default search space")
    if isinstance(space, dict):
        return _parse(space, "search space")
    path = Path(space)
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: search space file not found (write the default with "
                          f"`segtune tune --write-space {path}`)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    return _parse(d, str(path))


def write_default_space(path: str | Path, overwrite: bool = False) -> Path:
    """Write the default search space (with its comments) to ``path``; refuses to replace a file."""
    from .._io import atomic_write_text

    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: already exists (pick another file name, or delete it first)")
    atomic_write_text(path, DEFAULT_SPACE_YAML)
    return path


def _parse(d: Any, source: str) -> SearchSpace:
    if not isinstance(d, dict) or not isinstance(d.get("params"), dict) or not d["params"]:
        raise ConfigError(f"{source}: expected a mapping `params:` with at least one entry "
                          "(see `segtune tune --write-space FILE`)")
    extra = sorted(set(d) - {"params"})
    if extra:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(extra)}; only params: is read")
    params = tuple(_param(name, spec, source) for name, spec in d["params"].items())
    return SearchSpace(params, source)


def _param(name: Any, spec: Any, source: str) -> Param:
    where = f"{source}: params.{name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping with choices:, presets: or low:/high:, got {spec!r}")
    kinds = [k for k in ("choices", "presets", "low") if k in spec]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of choices:, presets: or low:/high: (got {sorted(spec)})")
    allowed = {"choices": {"choices"}, "presets": {"presets"}, "low": {"low", "high", "log", "grid"}}[kinds[0]]
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    if kinds[0] == "presets":
        return _presets(str(name), spec["presets"], where)
    _check_key(str(name), where)
    if kinds[0] == "choices":
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices or not all(isinstance(c, _SCALARS) for c in choices):
            raise ConfigError(f"{where}: choices must be a non-empty list of plain values, got {choices!r}")
        for c in choices:
            _check_value(str(name), c, where)
        return Param(str(name), choices=tuple(choices))
    return _range(str(name), spec, where)


def _range(name: str, spec: dict[str, Any], where: str) -> Param:
    low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
        raise ConfigError(f"{where}: low and high must be numbers with low < high, got {low!r} and {high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log: true needs low > 0, got {low}")
    grid = spec.get("grid")
    if grid is not None:
        if not isinstance(grid, list) or not grid or not all(low <= g <= high for g in grid
                                                                  if isinstance(g, (int, float))):
            raise ConfigError(f"{where}: grid must be a non-empty list of numbers within [{low}, {high}], got {grid!r}")
        grid = tuple(grid)
    for v in (low, high, *(grid or ())):
        _check_value(name, v, where)
    return Param(name, low=low, high=high, log=log, grid=grid)


def _presets(name: str, presets: Any, where: str) -> Param:
    if not isinstance(presets, dict) or not presets:
        raise ConfigError(f"{where}: presets must map preset names to {{config key: value}} mappings")
    clean: dict[str, dict[str, Any]] = {}
    for pname, values in presets.items():
        if not isinstance(values, dict) or not values:
            raise ConfigError(f"{where}.presets.{pname}: expected a mapping of config keys to values, got {values!r}")
        for key, value in values.items():
            _check_key(str(key), f"{where}.presets.{pname}")
            _check_value(str(key), value, f"{where}.presets.{pname}")
        clean[str(pname)] = {str(k): v for k, v in values.items()}
    return Param(name, presets=clean)


def _check_key(key: str, where: str) -> None:
    if "." not in key:
        raise ConfigError(f"{where}: '{key}' is not a config key (section.key, e.g. optim.lr); "
                          "a parameter of your own naming needs presets:")
    _check_value(key, None, where, only_key=True)


def _check_value(key: str, value: Any, where: str, only_key: bool = False) -> None:
    """Set ``key`` on a default Config to catch unknown keys and wrong types (ranges are checked
    per trial, where a bad combination fails that trial only)."""
    cfg = Config()
    section, field_name = key.split(".", 1) if "." in key else (key, "")
    if only_key:
        value = getattr(getattr(cfg, section, None), field_name, None) if hasattr(cfg, section) else None
    try:
        apply_overrides(cfg, {key: value})
    except SegtuneError as e:
        raise ConfigError(f"{where}: {str(e).removeprefix('override: ')}") from None
