"""``segtune export``: the command-line layer over :func:`segtune.export.export_onnx`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

__all__ = ["add_commands"]


def add_commands(sub: Any) -> dict[str, Callable[[argparse.Namespace], int]]:
    """Add ``export`` to the CLI's subparsers; returns its handler."""
    from .formats import list_formats

    e = sub.add_parser("export", help="export a trained run to ONNX (optionally INT8), verified against PyTorch",
                       description="Export a run's model; the file is written only if it matches PyTorch on "
                                   "real images (the run's val split, or --check DATA).")
    e.add_argument("run", help="run folder written by segtune train")
    e.add_argument("--format", default="onnx", help=f"{' | '.join(list_formats())} (default onnx)")
    e.add_argument("--out", help="output file (default RUN/model.onnx, RUN/model.int8.onnx with --int8)")
    e.add_argument("--int8", action="store_true", help="static INT8 quantisation (QDQ, per-channel weights)")
    e.add_argument("--calibration", metavar="DATA",
                   help="--int8: images (folder or data set) to calibrate on (default: the run's training images)")
    e.add_argument("--check", metavar="DATA", help="data set or image folder to verify on (default: the run's val split)")
    e.add_argument("--check-images", type=int, default=32, help="at most this many check images (default 32)")
    e.add_argument("--max-miou-drop", type=float, default=1.0,
                   help="--int8: refuse a model losing more mIoU points than this on the check images (default 1)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.set_defaults(out_is_file=True)  # the CLI's check that --out is not an existing file skips it
    return {"export": _cmd_export}


def _cmd_export(a: argparse.Namespace) -> int:
    from .formats import FORMATS

    export = FORMATS.get(a.format)
    report = export(a.run, out=a.out, int8=a.int8, calibration=a.calibration, check=a.check,
                    check_images=a.check_images, max_miou_drop=a.max_miou_drop, overwrite=a.overwrite,
                    progress=not a.no_progress)
    for line in report.lines():
        print(line)
    print(f"wrote {report.path}")
    return 0
