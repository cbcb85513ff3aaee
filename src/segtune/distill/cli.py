"""``segtune distill``: the command (added to the CLI through ``_COMMAND_MODULES``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_commands", "parse_student"]


def parse_student(text: str) -> tuple[str, str]:
    """``ARCH/ENCODER`` -> ``(arch, encoder)``; a one-line ConfigError otherwise."""
    from ..errors import ConfigError

    arch, sep, encoder = str(text).partition("/")
    if not sep or not arch.strip() or not encoder.strip():
        raise ConfigError(f"--student {text!r}: give ARCH/ENCODER, e.g. --student unet/tf_efficientnet_lite0 "
                          "(`segtune models` lists both)")
    return arch.strip(), encoder.strip()


def add_commands(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``distill`` to the CLI's subparsers; returns its handler."""
    d = sub.add_parser("distill", help="train a smaller student on a trained run's soft outputs (a new run folder)",
                       description="Knowledge distillation: the student learns alpha x the labels' loss + "
                                   "(1 - alpha) x T^2 KL(teacher || student) at temperature T.")
    d.add_argument("run", nargs="?", help="the teacher: a run folder written by segtune train (never modified)")
    d.add_argument("data", nargs="?", help="data set with the teacher's classes (labels + val split)")
    d.add_argument("--student", metavar="ARCH/ENCODER", help="the student, e.g. unet/tf_efficientnet_lite0")
    d.add_argument("--unlabelled", metavar="FOLDER", help="images without masks, used for the distillation term only")
    d.add_argument("--temperature", type=float, default=None, help="softmax temperature T (default 2)")
    d.add_argument("--alpha", type=float, default=None,
                   help="weight of the labels' loss in [0, 1]; distillation gets 1 - alpha (default 0.5)")
    d.add_argument("--hint-weight", type=float, default=0.0,
                   help="weight of a feature hint: the student's decoder output regresses the teacher's through "
                        "a trained 1x1 convolution (default 0: off; SMP architectures)")
    d.add_argument("--epochs", type=int, help="epochs (default: as many optimiser steps as the teacher's run)")
    d.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    d.add_argument("--lr", type=float, help="learning rate (default: the teacher's)")
    d.add_argument("--out", help="parent folder of the student run (default: next to RUN)")
    d.add_argument("--name", help="student run folder name (default RUN-ARCH-ENCODER)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value of the student run, e.g. --set data.batch_size=4 (repeatable)")
    d.add_argument("--resume", metavar="STUDENT_RUN", help="continue an interrupted distillation")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    return {"distill": _cmd_distill}


def _cmd_distill(a: argparse.Namespace) -> int:
    from ..config import budget_overrides, parse_overrides
    from ..errors import ConfigError
    from .run import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, distill, resume_distill

    if a.resume:
        if a.run or a.data or a.student:
            raise ConfigError("distill --resume STUDENT_RUN: give nothing else (the rest is read from its distill.yaml)")
        print(f"done  ->  {resume_distill(a.resume)}")
        return 0
    if not a.run or not a.data or not a.student:
        raise ConfigError("distill: give the teacher run, the data and the student, e.g. "
                          "`segtune distill runs/unet-head data/ --student unet/tf_efficientnet_lite0`")
    arch, encoder = parse_student(a.student)
    overrides = {**budget_overrides(a.epochs, a.max_steps, a.lr, progress=not a.no_progress),
                 **parse_overrides(a.overrides)}
    run_dir = distill(a.run, a.data, student_arch=arch, student_encoder=encoder, unlabelled=a.unlabelled,
                      overrides=overrides,
                      temperature=DEFAULT_TEMPERATURE if a.temperature is None else a.temperature,
                      alpha=DEFAULT_ALPHA if a.alpha is None else a.alpha, hint_weight=a.hint_weight,
                      out=a.out, name=a.name, progress=not a.no_progress)
    print(f"student  ->  {run_dir}")
    return 0


