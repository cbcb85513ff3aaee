"""CLI commands of the tuning package: ``segtune tune`` and ``segtune lr-find``.

Top-level imports stay light (argparse only); the handlers import the heavy modules.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_commands", "lr_for_train"]

_LR_FIND_FLAGS = {  # flag -> dotted config key (a subset of `segtune train`'s)
    "strategy": ("strategy.name", str, "strategy whose param groups are swept (default auto, as train)"),
    "arch": ("model.arch", str, "architecture (default unet)"),
    "encoder": ("model.encoder", str, "timm encoder (default tf_efficientnet_lite0)"),
    "encoder_lr_factor": ("strategy.encoder_lr_factor", float, "discriminative/gradual: encoder LR = LR x factor"),
    "batch_size": ("data.batch_size", int, "training batch size"),
    "crop_size": ("data.crop_size", int, "training crop side (multiple of 32)"),
}


def add_commands(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``tune`` and ``lr-find`` to the ``segtune`` subparsers; return their handlers."""
    from .samplers import list_pruners, list_samplers

    t = sub.add_parser("tune", help="search hyperparameters with Optuna (each trial a segtune train run)",
                       description="Optuna study over strategy, LRs, loss, augmentation, crop and epochs; "
                                   "each trial is a normal training run; the study lives in OUT/study.db.")
    t.add_argument("data", nargs="?", help="data set folder or dataset.yaml (taken from the study with --resume)")
    t.add_argument("--trials", type=int, default=20, help="total trials of the study (default 20; with --resume "
                   "the finished ones count)")
    t.add_argument("--timeout", type=float, help="start no new trial after this many seconds")
    t.add_argument("--sampler", help=f"{' | '.join(list_samplers())} (default tpe)")
    t.add_argument("--pruner", help=f"{' | '.join(list_pruners())} (default median; on per-epoch val mIoU)")
    t.add_argument("--space", help="search space YAML (default: the built-in one; see --write-space)")
    t.add_argument("--out", default="runs/tune", help="study folder (default runs/tune; must not exist "
                   "unless --resume)")
    t.add_argument("--resume", action="store_true", help="continue the study in --out")
    t.add_argument("--config", help="base config YAML of every trial (as `segtune train --config`)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="base config value of every trial, e.g. --set train.max_steps=200 (repeatable)")
    t.add_argument("--keep", choices=("best", "all"), help="trial run folders kept: best (default) or all")
    t.add_argument("--seed", type=int, help="sampler seed (default train.seed)")
    t.add_argument("--write-space", metavar="FILE", help="write the default search space to FILE and exit")

    f = sub.add_parser("lr-find", help="LR range test: sweep the LR, plot the loss, suggest an LR",
                       description="Exponential LR sweep with the model, strategy and optimiser of "
                                   "`segtune train` (every param group keeps its LR ratio).")
    f.add_argument("data", nargs="?", help="data set folder or dataset.yaml")
    for key, (_, typ, help_) in _LR_FIND_FLAGS.items():
        f.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, help=help_)
    f.add_argument("--config", help="config YAML (as `segtune train --config`)")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value (repeatable)")
    f.add_argument("--min-lr", type=float, default=1e-7, help="start of the sweep (default 1e-7)")
    f.add_argument("--max-lr", type=float, default=1.0, help="end of the sweep (default 1)")
    f.add_argument("--steps", type=int, default=100, help="optimiser steps of the sweep (default 100)")
    f.add_argument("--out", help="folder for lr_find.json / lr_find.png (default runs/lr-find, numbered if taken)")
    return {"tune": _cmd_tune, "lr-find": _cmd_lr_find}


def _overrides(a: argparse.Namespace, flags: dict[str, tuple[str, type, str]]) -> dict[str, Any]:
    from ..config import parse_overrides

    out: dict[str, Any] = {}
    for key, (dotted, _, _) in flags.items():
        if getattr(a, key, None) is not None:
            out[dotted] = getattr(a, key)
    return {**out, **parse_overrides(a.overrides)}


def _cmd_tune(a: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from .space import write_default_space

    if a.write_space:
        print(f"wrote {write_default_space(a.write_space)} (edit it, then `segtune tune DATA --space "
              f"{a.write_space}`)")
        return 0
    if a.trials < 1:
        raise ConfigError(f"tune: --trials {a.trials} must be >= 1")
    if not a.data and not a.resume and not a.config:
        raise ConfigError("tune: give the data set folder, e.g. `segtune tune path/to/data --trials 20`")
    from .study import tune

    r = tune(a.data, trials=a.trials, timeout=a.timeout, sampler=a.sampler, pruner=a.pruner, space=a.space,
             out=a.out, resume=a.resume, config=a.config, overrides=_overrides(a, {}), keep=a.keep, seed=a.seed)
    counts = ", ".join(f"{n} {s}" for s, n in r.counts.items())
    if r.best_value is None:  # nothing to use: a script must not read this as success
        print(f"error: no trial finished ({counts}); each trial's reason is in {r.dir / 'trials.csv'}",
              file=sys.stderr)
        return 2
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.best_params.items())
    print(f"best val mIoU {r.best_value:.4f} (trial {r.best_trial}; {counts}): {params}")
    print(f"train with it: segtune train --config {r.best_config}")
    return 0


def _cmd_lr_find(a: argparse.Namespace) -> int:
    from ..config import Config
    from ..engine.run import free_run_name
    from ..errors import ConfigError
    from .lr_find import lr_find

    if not a.data and not a.config:
        raise ConfigError("lr-find: give the data set folder, e.g. `segtune lr-find path/to/data`")
    overrides = _overrides(a, _LR_FIND_FLAGS)
    if a.data:
        overrides["data.root"] = a.data
    out = Path(a.out) if a.out else Path("runs") / free_run_name("runs", "lr-find")
    cfg = Config.from_yaml(a.config) if a.config else Config()
    r = lr_find(cfg, overrides=overrides, out=out, min_lr=a.min_lr, max_lr=a.max_lr, num_steps=a.steps)
    print(_suggestion_line(r))
    print(f"wrote {out / 'lr_find.json'} and {out / 'lr_find.png'}")
    return 0


def _suggestion_line(r: Any) -> str:
    if r.suggestion is None:
        return f"no suggestion: the sweep stopped ({r.stopped}) after {len(r.lrs)} steps; widen --min-lr/--max-lr"
    extra = f"steepest descent {r.steepest:.2e}, " if r.steepest is not None else ""
    return (f"suggested LR {r.suggestion:.2e} ({extra}minimum/10 {r.min_div10:.2e}; sweep {r.stopped} "
            f"after {len(r.lrs)} steps at {r.lrs[-1]:.2e})")


def lr_for_train(cfg: Any, overrides: dict[str, Any], num_steps: int = 100) -> tuple[float, Any]:
    """``segtune train --lr find``: run the range test for this config, print the suggestion.

    Returns:
        ``(lr, result)``; write ``result`` into the run folder with
        :func:`segtune.tuning.lr_find.write_result`.

    Raises:
        RunError: the sweep gave no suggestion.
    """
    from .. import _log
    from ..errors import RunError
    from .lr_find import lr_find

    r = lr_find(cfg, overrides=overrides, num_steps=num_steps)
    line = _suggestion_line(r)
    if r.suggestion is None:
        raise RunError(f"--lr find: {line}, or pass --lr VALUE")
    lr = float(f"{r.suggestion:.3g}")
    print(f"--lr find: {line}; training with optim.lr={lr:.3g}")
    _log.info(f"(rule: {r.rule})")
    return lr, r
