"""Command-line interface: ``segtune <command>``; a thin layer over the Python API.

Every user-fixable problem ends with a one-line ``error: ...`` and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import _log
from .errors import RunError, SegtuneError

__all__ = ["main", "build_parser"]

# Packages that bring their own commands. Each module defines
# ``add_commands(sub) -> dict[str, Callable[[argparse.Namespace], int]]``: it adds its
# subparsers to ``sub`` (keep its imports light; import heavy modules inside the handlers)
# and returns the handlers by command name. Add one line here per package.
_COMMAND_MODULES: tuple[str, ...] = (
    "segtune.selection.commands",
    "segtune.tuning.commands",
    "segtune.distill.cli",
    "segtune.export.commands",
)


def _lr_value(v: str) -> float | str:
    """``--lr``: a number or ``find`` (argparse prints the reason, not ``invalid <lambda> value``)."""
    if v == "find":
        return v
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number (e.g. 1e-3) or find, got {v!r}") from None


# flag -> dotted config key
_TRAIN_FLAGS: dict[str, tuple[str, type, str]] = {
    "config_arch": ("model.arch", str, "architecture: {architectures} (default unet)"),
    "encoder": ("model.encoder", str, "timm encoder, or smp-NAME for SMP's own encoders (default "
                "tf_efficientnet_lite0, ImageNet weights bundled)"),
    "weights": ("model.weights", str, "imagenet (bundled, else torch/HF cache or download) | coco (torchvision "
                "archs) | none | weights file | run folder to start from"),
    "strategy": ("strategy.name", str, "auto (default: chosen from the data: size, image sizes, domain shift; reason printed) | {strategies}"),
    "freeze_stages": ("strategy.freeze_stages", int, "partial: encoder stages kept frozen"),
    "encoder_lr_factor": ("strategy.encoder_lr_factor", float, "discriminative/gradual: encoder LR = LR x factor"),
    "epochs": ("train.epochs", int, "maximum epochs (default: about 1000 steps, within 30-200 epochs, printed)"),
    "max_steps": ("train.max_steps", int, "stop after this many optimiser steps"),
    "lr": ("optim.lr", _lr_value,
           "learning rate of the decoder/head (default: the strategy's measured value, printed); "
           "find: run `segtune lr-find` first and use its suggestion"),
    "batch_size": ("data.batch_size", int, "training batch size (per device: DDP's global batch is devices x nodes x this)"),
    "crop_size": ("data.crop_size", int, "training crop side (multiple of 32; default: from the image sizes, printed)"),
    "augment": ("data.augment", str, "auto (default: flip for images no larger than a 384 crop, else full; printed) | full (random crop + flip, plus rescale / colour jitter when "
                "data.scale_min/scale_max / data.color_jitter are set) | flip (whole images, random flips only)"),
    "cache_features": ("train.cache_features", str, "auto | on | off: head strategy + --augment flip trains the "
                       "decoder from encoder features computed once per image and flip (auto: when valid)"),
    "loss": ("loss.name", str, "{losses} (default ce+dice)"),
    "class_weights": ("loss.class_weights", str, "median (default; weights the CE term) | inverse | none"),
    "logger": ("train.logger", str, "none (default) | {loggers}: experiment tracking under the run folder"),
    "seed": ("train.seed", int, "random seed (a CPU run repeats exactly)"),
    "out": ("train.out", str, "parent folder of run folders (default runs)"),
    "name": ("train.name", str, "run folder name"),
    "accelerator": ("train.accelerator", str, "cpu | gpu | auto (default: a GPU when there is one)"),
    "devices": ("train.devices", int, "devices per machine; more than one in all trains with DDP (docs/cluster.md)"),
    "num_nodes": ("train.num_nodes", int, "machines (e.g. Slurm nodes); DDP runs devices x nodes processes"),
    "num_workers": ("data.num_workers", int, "data-loader worker processes"),
    "max_pixels": ("data.max_pixels", int, "refuse images above this many pixels"),
}


def _registered_names() -> dict[str, str]:
    """Help-text lists read from the registries (never written out by hand)."""
    from .inference.tiling import list_blends
    from .losses import list_losses
    from .models import list_architectures
    from .strategies import list_strategies
    from .tracking import list_loggers

    return {
        "loggers": " | ".join(list_loggers()),
        "architectures": ", ".join(list_architectures()),
        "strategies": " | ".join(list_strategies()),
        "losses": " | ".join(list_losses()),
        "blends": " | ".join(list_blends()),
    }


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="segtune",
        description="Transfer learning for semantic segmentation: fine-tune, evaluate, predict. Offline.",
    )
    p.add_argument("--version", action="version", version=f"segtune {__version__}")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="fine-tune a model on a data set folder",
                       description="Fine-tune a pretrained model. Any config key can be set with --set section.key=value.")
    t.add_argument("data", nargs="?", help="data set folder (with dataset.yaml, or images/ + masks/) or a dataset.yaml")
    t.add_argument("--config", help="YAML config file (flags override it)")
    names = _registered_names()
    t.add_argument("--arch", dest="config_arch", help=_TRAIN_FLAGS["config_arch"][2].format(**names))
    for key, (_, typ, help_) in _TRAIN_FLAGS.items():
        help_ = help_.format(**names)
        if key == "config_arch":
            continue
        t.add_argument("--" + key.replace("_", "-"), dest=key, type=typ, help=help_)
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set optim.schedule=poly (repeatable)")
    t.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace an existing run folder of the same name")
    t.add_argument("--skip-bad", action="store_true", help="train on the usable pairs when the data has problems")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--sync-bn", action="store_true",
                   help="DDP on GPUs: BatchNorm statistics over the global batch (train.sync_batchnorm)")
    t.add_argument("--lr-find-steps", type=int, default=100, help="--lr find: steps of the LR sweep (default 100)")

    c = sub.add_parser("check-data", help="list every problem in a data set at once, with class frequencies")
    c.add_argument("data", help="data set folder or dataset.yaml")
    c.add_argument("--max-pixels", type=int, default=180_000_000, help="largest image accepted (pixels)")
    c.add_argument("--strict", action="store_true",
                   help="report images without masks and masks without images as errors, not warnings")
    c.add_argument("--unknown-as-ignore", action="store_true",
                   help="RGB masks: read colours missing from colors: as ignore_index "
                        "(like unknown_as_ignore: true in dataset.yaml)")
    c.add_argument("--fix", metavar="OUT",
                   help="write a repaired copy to the new folder OUT (masks resized / snapped / converted to "
                        "index PNG, EXIF applied; the originals are never touched) and check it")

    e = sub.add_parser("evaluate", help="per-class metrics of a trained run on a data set")
    e.add_argument("run", help="run folder written by segtune train")
    e.add_argument("data", help="data set folder or dataset.yaml")
    e.add_argument("--split", default=None,
                   help="split to score (default: val; a folder with a single split, e.g. images/ + masks/, "
                        "is scored whole)")
    e.add_argument("--out", help="folder for metrics.json, per_class_iou.png and confusion_matrix.png "
                                 "(default RUN/eval-SPLIT; RUN/eval-FOLDER for a single-split folder)")
    e.add_argument("--tta", metavar="SPEC",
                   help="test-time augmentation, e.g. flip, scales=0.75,1,1.25 or flip,scales=0.75,1,1.25 "
                        "(averaged softmax); also reports plain inference and the gain")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--device", help="cpu or cuda (default: cuda if available)")

    pr = sub.add_parser("predict", help="segment images (file or folder) with a trained run")
    pr.add_argument("run", help="run folder written by segtune train, or a .onnx file from segtune export")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder for the palette PNG masks")
    pr.add_argument("--overlay", action="store_true", help="also write colour overlays")
    pr.add_argument("--skip-existing", action="store_true", help="skip images whose mask exists (resume)")
    pr.add_argument("--overwrite", action="store_true", help="replace existing masks")
    pr.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    pr.add_argument("--tile-size", type=int, default=1024, help="tile side for very large images")
    pr.add_argument("--blend", default="gaussian",
                    help=f"how overlapping tiles are combined: {names['blends']} (default gaussian: tile centres "
                         "weigh most)")
    pr.add_argument("--tta", metavar="SPEC",
                    help="test-time augmentation: flip, scales=0.75,1,1.25 or flip,scales=... (averaged softmax)")
    pr.add_argument("--probabilities", action="store_true",
                    help="also write per-class probability maps: OUT/probabilities/STEM/KK_CLASS.png (uint8, 255 = 1.0)")
    pr.add_argument("--areas", metavar="FILE.csv",
                    help="also write per-image class areas (pixels and fraction) to this CSV")
    pr.add_argument("--shard", metavar="I/N",
                    help="predict only shard I of N (0-based: the sorted image list, every N-th from I), "
                         "e.g. $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT in a job array")
    pr.add_argument("--max-pixels", type=int, default=180_000_000,
                    help="largest image accepted (pixels); larger ones are refused (decompression-bomb guard)")

    d = sub.add_parser("demo", help="train head vs scratch on a generated (or given) data set and compare")
    d.add_argument("--data", help="use a small subset of this data set instead of the generated one")
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--strategies", default="head,scratch", help="comma-separated strategies to compare")
    d.add_argument("--epochs", type=int, default=None, help="epochs per strategy")
    d.add_argument("--overwrite", action="store_true", help="replace an earlier demo's folder")

    sub.add_parser("models", help="list architectures, encoders with bundled weights, strategies and losses")

    from .incremental.methods import list_methods

    u = sub.add_parser("update", help="update a trained run with new images or new classes (a new run folder)")
    u.add_argument("run", nargs="?", help="run folder to update (never modified)")
    u.add_argument("new_data", nargs="?",
                   help="data set whose dataset.yaml lists RUN's classes (same order), then any new ones")
    u.add_argument("--method", default="auto",
                   help=f"auto (default: chosen for the kind of update, reason printed) | {' | '.join(list_methods())}")
    u.add_argument("--memory", type=int, default=None,
                   help="replay samples stored with the new run (class-balanced; default 20, 0: no replay)")
    u.add_argument("--old-data", help="RUN's original data, to replay from when RUN carries no memory")
    u.add_argument("--val", help="data to score the update on (default: NEW_DATA's val split)")
    u.add_argument("--out", help="parent folder of the new run (default: next to RUN)")
    u.add_argument("--name", help="new run folder name (default RUN-uSTEP)")
    u.add_argument("--epochs", type=int, help="epochs (default: a third of RUN's optimiser steps)")
    u.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    u.add_argument("--lr", type=float, help="learning rate (default: RUN's)")
    u.add_argument("--kd-weight", type=float, default=10.0, help="distillation weight of lwf / mib (default 10)")
    u.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value of the step, e.g. --set data.batch_size=4 (repeatable)")
    u.add_argument("--resume", metavar="NEW_RUN", help="continue an interrupted update")
    u.add_argument("--no-progress", action="store_true", help="no progress bars")
    u.add_argument("--watch", metavar="DIR",
                   help="online updates: watch DIR (dataset.yaml + images/ + masks/) and update each time "
                        "--every new labelled pairs arrived; a new model becomes OUT/current only when it "
                        "passes the guard (give RUN, not NEW_DATA)")
    u.add_argument("--every", type=int, default=10, metavar="N", help="--watch: new pairs per update (default 10)")
    u.add_argument("--guard", metavar="DATA",
                   help="--watch: data set whose val split scores every model (default: RUN's val data)")
    u.add_argument("--max-drop", type=float, default=1.0, metavar="POINTS",
                   help="--watch: promote a model whose old-class mIoU on the guard drops by at most this "
                        "many points (default 1.0)")
    u.add_argument("--poll", type=float, default=10.0, metavar="SECONDS",
                   help="--watch: seconds between looks at DIR (default 10)")
    u.add_argument("--max-updates", type=int, metavar="N", help="--watch: stop after deciding on N updates")

    h = sub.add_parser("history", help="the chain of updates behind a run, with old/new/all mIoU per step")
    h.add_argument("run", help="run folder")
    _PACKAGE_HANDLERS.update(_add_package_commands(sub))
    return p


def _cmd_update(a: argparse.Namespace) -> int:
    from .config import budget_overrides, parse_overrides
    from .incremental.update import DEFAULT_MEMORY, update

    overrides = {**budget_overrides(a.epochs, a.max_steps, a.lr, progress=not a.no_progress),
                 **parse_overrides(a.overrides)}
    if a.watch:  # online updates
        from .engine.resume import Interrupted
        from .incremental.watch import watch

        if a.new_data or a.resume or not a.run:
            raise SegtuneError("update --watch DIR: give the run folder only (new pairs arrive in DIR), e.g. "
                               "`segtune update runs/unet-head --watch incoming`, not NEW_DATA or --resume too")
        for flag in ("val", "name"):
            if getattr(a, flag) is not None:
                raise SegtuneError(f"update --watch: --{flag} does not apply (the guard data, --guard, scores "
                                   "every update; runs are named RUN-wNNNN)")
        try:
            watch(a.run, a.watch, a.every, guard=a.guard, max_drop=a.max_drop, method=a.method,
                  memory=DEFAULT_MEMORY if a.memory is None else a.memory, old_data=a.old_data,
                  kd_weight=a.kd_weight, out=a.out, poll_seconds=a.poll, max_updates=a.max_updates,
                  overrides=overrides, progress=not a.no_progress)
        except (KeyboardInterrupt, Interrupted):  # the watcher printed where it stopped
            pass
        return 0
    if a.resume:
        run = update(resume=a.resume, progress=not a.no_progress)
    else:
        if not a.run or not a.new_data:
            raise SegtuneError("update: give the run folder and the new data, e.g. `segtune update runs/unet-head new_data`")
        run = update(a.run, a.new_data, method=a.method, memory=DEFAULT_MEMORY if a.memory is None else a.memory,
                     old_data=a.old_data, val=a.val, out=a.out, name=a.name, overrides=overrides,
                     kd_weight=a.kd_weight, progress=not a.no_progress)
    if run.metrics:
        print(f"val mIoU {run.metrics.get('miou', float('nan')):.4f}  ->  {run.dir}")
    return 0


def _cmd_history(a: argparse.Namespace) -> int:
    from .incremental.report import format_history, history_rows, lineage_chain

    chain = lineage_chain(Path(a.run))
    bg = "background" if chain and chain[-1]["classes"][:1] == ["background"] else None
    print(format_history(history_rows(chain, background=bg)))
    return 0


def _cmd_train(a: argparse.Namespace) -> int:
    from .config import Config
    from .engine.train import train

    overrides: dict[str, Any] = {}
    if a.data:
        overrides["data.root"] = a.data
    for key, (dotted, _, _) in _TRAIN_FLAGS.items():
        v = getattr(a, key)
        if v is not None:
            overrides[dotted] = v
    if a.overwrite:
        overrides["train.overwrite"] = True
    if a.skip_bad:
        overrides["data.skip_bad"] = True
    if a.no_progress:
        overrides["train.progress"] = False
    if a.sync_bn:
        overrides["train.sync_batchnorm"] = True
    from .config import parse_overrides

    overrides.update(parse_overrides(a.overrides))
    if a.resume:
        run = train(resume=a.resume)
    else:
        if not a.data and not a.config:
            raise SegtuneError("train: give the data set folder, e.g. `segtune train path/to/data`")
        cfg = Config.from_yaml(a.config) if a.config else Config()
        finder = None
        if overrides.get("optim.lr") == "find":  # LR range test first (segtune.tuning)
            from .tuning.commands import lr_for_train

            del overrides["optim.lr"]
            overrides["optim.lr"], finder = lr_for_train(cfg, overrides, a.lr_find_steps)
        run = train(cfg, overrides=overrides)  # a refused start leaves no run folder behind
        if finder is not None and run.metrics:
            from .tuning.lr_find import write_result

            write_result(finder, Path(run.dir))
    if run.metrics:  # DDP ranks other than 0 return no metrics and print nothing
        print(f"val mIoU {run.metrics.get('miou', float('nan')):.4f}  ->  {run.dir}")
    return 0


def _cmd_check(a: argparse.Namespace) -> int:
    from .data import check_data, load_dataset_spec

    spec = load_dataset_spec(a.data)
    if a.unknown_as_ignore:
        spec.unknown_as_ignore = True
    if a.fix:
        from .repair import fix_dataset

        fixed = fix_dataset(spec, a.fix, max_pixels=a.max_pixels, progress=True)
        print(fixed.format())
        print()
        spec = load_dataset_spec(fixed.out)
    report = check_data(spec, max_pixels=a.max_pixels, progress=True, strict=a.strict)
    print(report.format())
    return 0 if report.ok else 2


def _cmd_evaluate(a: argparse.Namespace) -> int:
    from .engine.evaluate import evaluate, format_evaluation_extras
    from .metrics import format_metrics_table

    m = evaluate(a.run, a.data, split=a.split, out=a.out, batch_size=a.batch_size, device=a.device, tta=a.tta)
    print(format_metrics_table(m))
    print(format_evaluation_extras(m))
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from .inference import Predictor
    from .inference.predictor import parse_shard

    shard = parse_shard(a.shard) if a.shard else None
    if str(a.run).lower().endswith(".onnx"):  # exported model: torch-free runtime
        from .export.runtime import predict_paths

        unsupported = [f for f in ("tta", "probabilities", "areas") if getattr(a, f)]
        if unsupported:
            raise SegtuneError(f"predict {a.run}: --{unsupported[0]} needs the run folder; an .onnx model "
                               "writes masks (and --overlay) only")

        written = predict_paths(a.run, a.inputs, a.out, overlay=a.overlay, skip_existing=a.skip_existing,
                                overwrite=a.overwrite, shard=shard)
        print(f"wrote {len(written)} mask(s) to {a.out}")
        return 0
    pred = Predictor.from_run(a.run, device=a.device, tile_size=a.tile_size, max_pixels=a.max_pixels,
                              tta=a.tta, blend=a.blend)
    written = pred.predict_paths(a.inputs, a.out, overlay=a.overlay, skip_existing=a.skip_existing,
                                 overwrite=a.overwrite, shard=shard, probabilities=a.probabilities, areas=a.areas)
    print(f"wrote {len(written)} mask(s) to {a.out}" + (f" (overlays in {Path(a.out) / 'overlays'})" if a.overlay else ""))
    return 0


def _cmd_demo(a: argparse.Namespace) -> int:
    from .demo import run_demo

    strategies = [s.strip() for s in a.strategies.split(",") if s.strip()]
    run_demo(data=a.data, out=a.out, strategies=strategies, epochs=a.epochs, overwrite=a.overwrite)
    return 0


def _cmd_models(a: argparse.Namespace) -> int:
    from .models import list_encoders

    names = _registered_names()
    print("architectures: " + names["architectures"])
    print("encoders with bundled ImageNet weights: " + ", ".join(list_encoders()))
    print("other encoders: any timm name, or smp-NAME for SMP's own (smp-vgg16); --weights imagenet takes "
          "them from the torch / Hugging Face cache or the network (SEGTUNE_OFFLINE=1: cache only)")
    print("--weights coco: torchvision's COCO checkpoints, for the torchvision architectures "
          "(class layer re-initialised)")
    print("strategies: " + names["strategies"].replace(" | ", ", ") + " (and auto: chosen from the data)")
    print("losses: " + names["losses"].replace(" | ", ", "))
    return 0


_PACKAGE_HANDLERS: dict[str, Any] = {}

_COMMANDS = {
    "train": _cmd_train,
    "check-data": _cmd_check,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "demo": _cmd_demo,
    "models": _cmd_models,
    "update": _cmd_update,
    "history": _cmd_history,
}


def _add_package_commands(sub: Any) -> dict[str, Any]:
    """Subcommands of the packages in ``_COMMAND_MODULES``; returns their handlers."""
    import importlib

    handlers: dict[str, Any] = {}
    for module in _COMMAND_MODULES:
        handlers.update(importlib.import_module(module).add_commands(sub))
    return handlers


def _check_out_is_not_a_file(a: argparse.Namespace) -> None:
    """Every ``--out`` but export's names a folder: an existing file there is one line, not a traceback."""
    out = getattr(a, "out", None)
    if out and not getattr(a, "out_is_file", False) and Path(out).exists() and not Path(out).is_dir():
        raise RunError(f"--out {out}: is a file, not a folder (give a folder name, or move the file away)")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``segtune`` command; returns the exit code."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if not a.command:
        parser.print_help()
        return 2
    _log.set_quiet(a.quiet)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        _check_out_is_not_a_file(a)
        handler = _COMMANDS.get(a.command) or _PACKAGE_HANDLERS[a.command]
        return handler(a)
    except SegtuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
