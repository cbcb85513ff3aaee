"""``segtune demo``: does transfer pay on this data? Train strategies side by side and compare.

With no data it generates a small data set that looks like a real task (textured objects on
real photographs), trains the default model (Unet + ImageNet EfficientNet-Lite0) once with the
encoder frozen (``head``) and once from random weights (``scratch``) under the same budget,
and prints a table. With ``--data`` it uses a small subset of that data set instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from . import _log
from .config import Config

__all__ = ["run_demo", "demo_config"]


def demo_config(data_root: str | Path, out: Path, strategy: str, synthetic: bool, epochs: int | None) -> Config:
    """The configuration the demo trains with (small, CPU-friendly budget)."""
    cfg = Config()
    cfg.data.root = str(data_root)
    cfg.strategy.name = strategy
    cfg.train.out = str(out)
    cfg.train.name = strategy
    cfg.train.early_stopping = 0
    cfg.train.num_overlays = 3
    cfg.optim.warmup_steps = 5
    cfg.loss.name = "ce+dice"
    if synthetic:
        cfg.data.crop_size = 128
        cfg.data.batch_size = 8
        cfg.data.scale_min, cfg.data.scale_max = 0.75, 1.25
        cfg.train.epochs = epochs or 8
        cfg.optim.lr = 3e-3
    else:
        cfg.data.crop_size = 224
        cfg.data.batch_size = 8
        cfg.data.max_train_images = 32
        cfg.data.max_val_images = 12
        cfg.train.epochs = epochs or 6
        cfg.optim.lr = 3e-3
    return cfg


def run_demo(
    data: str | Path | None = None,
    out: str | Path = "runs/demo",
    strategies: list[str] | None = None,
    epochs: int | None = None,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Train each strategy under the same budget and print a comparison table.

    Args:
        data: a data set to take a small subset of; default: a generated one.
        out: folder for the data, the runs and ``comparison.png`` (numbered if it exists).
        strategies: strategies to compare (default ``head`` and ``scratch``).
        epochs: epochs per strategy (default 8 on generated data, 6 on a subset).
        overwrite: reuse ``out`` even if it exists.

    Returns:
        One row per strategy: strategy, trainable_params, epochs, val_miou, seconds, run.
    """
    from .engine.run import free_run_name
    from .engine.train import train
    from .report import plot_comparison

    strategies = strategies or ["head", "scratch"]
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        out = out.parent / free_run_name(out.parent, out.name)
    out.mkdir(parents=True, exist_ok=True)
    synthetic = data is None
    if synthetic:
        from .data import make_synthetic_dataset

        t = time.perf_counter()
        data = make_synthetic_dataset(out / "data", n_train=48, n_val=16, size=160, seed=0)
        _log.info(f"generated a demo data set in {data} ({time.perf_counter() - t:.1f} s): "
                  "textured objects on photographs, 48 train / 16 val images")
    rows = []
    for s in strategies:
        _log.info(f"\n=== strategy: {s} ===")
        cfg = demo_config(data, out, s, synthetic, epochs)
        cfg.train.overwrite = overwrite
        run = train(cfg)
        rows.append({
            "strategy": s,
            "trainable_params": run.summary.get("trainable_params"),
            "epochs": run.summary.get("epochs"),
            "val_miou": run.metrics.get("miou"),
            "seconds": run.summary.get("seconds"),
            "run": str(run.dir),
        })
    print()
    print(format_comparison(rows))
    try:
        plot_comparison(rows, out / "comparison.png")
    except Exception as e:  # pragma: no cover - plotting never kills the demo
        _log.warn(f"could not draw comparison.png ({e})")
    print(f"\ncomparison chart: {out / 'comparison.png'}")
    for r in rows:
        print(f"{r['strategy']:>14}: curves {Path(r['run']) / 'curves.png'}, overlays {Path(r['run']) / 'val_overlays'}/")
    best = max(rows, key=lambda r: r["val_miou"] or 0)
    from .strategies import STRATEGY_REGISTRY

    # the baseline is a strategy that starts from random weights (scratch)
    baseline = next((r for r in rows if not STRATEGY_REGISTRY.get(r["strategy"]).pretrained), None)
    if baseline is not None and len(rows) > 1:
        if best is not baseline:
            print(f"\ntransfer helped: {best['strategy']} beats {baseline['strategy']} by "
                  f"{(best['val_miou'] - baseline['val_miou']) * 100:.1f} mIoU points with the same budget")
        else:
            print(f"\ntransfer did not help on this data with this budget ({baseline['strategy']} was best)")
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of demo/benchmark rows."""
    lines = [f"{'strategy':>14} {'trainable params':>17} {'epochs':>7} {'val mIoU':>9} {'time (s)':>9}"]
    for r in rows:
        miou = f"{r['val_miou']:.4f}" if r["val_miou"] is not None else "n/a"
        lines.append(
            f"{r['strategy']:>14} {r['trainable_params'] or 0:>17,} {r['epochs'] or 0:>7} {miou:>9} {r['seconds'] or 0:>9.0f}"
        )
    return "\n".join(lines)
