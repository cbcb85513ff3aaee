"""``segtune rank-encoders``: the CLI layer over :func:`segtune.selection.rank.rank_encoders`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``rank-encoders`` to the subparsers ``sub``; return its handler."""
    from .candidates import DEFAULT_CANDIDATES
    from .levels import LEVELS
    from .scores import list_scores

    r = sub.add_parser(
        "rank-encoders", help="rank candidate encoders by transferability scores of their frozen features (no training)",
        description="Score each candidate encoder's frozen features on a class-balanced sample of labelled "
                    "training pixels (LogME, H-score, GBC); writes ranking.json and ranking.png.")
    r.add_argument("data", help="data set folder or dataset.yaml (its train split is used)")
    r.add_argument("--candidates", default=DEFAULT_CANDIDATES,
                   help="comma-separated: timm encoder (ImageNet weights), random:ENCODER, run folder, weights "
                        f"file or ENCODER:FILE (default {DEFAULT_CANDIDATES})")
    r.add_argument("--out", help="output folder (default runs/rank-DATASET)")
    r.add_argument("--images", type=int, default=100, help="at most this many training images (seeded subset; default 100)")
    r.add_argument("--pixels-per-class", type=int, default=1000, help="class-balanced pixel sample per class (default 1000)")
    r.add_argument("--levels", default="multi", help=f"feature level: {' | '.join(LEVELS.names())} (default multi)")
    r.add_argument("--scores", default=",".join(list_scores()),
                   help=f"comma-separated, the first orders the table: {', '.join(list_scores())}")
    r.add_argument("--scale", type=float, default=1.0, help="resize images and masks by this factor first (default 1)")
    r.add_argument("--seed", type=int, default=0, help="image subset, pixel sample and random-init seed")
    r.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    r.add_argument("--overwrite", action="store_true", help="replace an earlier ranking in --out")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return {"rank-encoders": _cmd_rank}


def _cmd_rank(a: argparse.Namespace) -> int:
    from ..data import load_dataset_spec
    from .rank import format_table, rank_encoders

    out = a.out
    if out is None:
        spec = load_dataset_spec(a.data)
        out = str(Path("runs") / f"rank-{spec.name or Path(a.data).stem}")
    ranking = rank_encoders(
        a.data, a.candidates, out=out, max_images=a.images, pixels_per_class=a.pixels_per_class,
        levels=a.levels, scores=[s.strip() for s in a.scores.split(",") if s.strip()], scale=a.scale,
        seed=a.seed, device=a.device, overwrite=a.overwrite, progress=False if a.no_progress else None)
    print(format_table(ranking))
    print(f"{ranking.info['images']} images, {ranking.info['pixels']} pixels ({ranking.info['level']} features, "
          f"stride {ranking.info['stride']}), {ranking.info['seconds']:.1f} s; wrote {Path(out) / 'ranking.json'} "
          f"and {Path(out) / 'ranking.png'}")
    return 0
