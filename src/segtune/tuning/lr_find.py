"""LR range test (``segtune lr-find``): sweep the learning rate exponentially, watch the loss.

One optimiser step per learning rate, from ``min_lr`` to ``max_lr`` on a log scale, with the
model, strategy, loss and optimiser that ``segtune train`` would build (:func:`build_parts`).
The sweep scales **every param group** by the same factor, so a discriminative strategy keeps
its encoder/head LR ratio (Lightning's ``Tuner.lr_find`` sets all groups to one LR, which loses
it). The loss is smoothed with a bias-corrected exponential moving average and the sweep stops
when the smoothed loss exceeds ``diverge`` x its minimum so far (or is not finite).

**Suggestion rule** (:data:`RULE`). The steepest descent of the loss per decade of LR (the
least-squares slope of the raw losses over half a decade around each LR: no EMA lag, batch
noise averaged), looked for between the first 10% of the sweep and the loss minimum; when the
loss never descends, the LR at the minimum / 10. Both values are reported (``steepest``,
``min_div10``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _log
from .._io import atomic_path, atomic_write_json
from .._progress import progress
from ..errors import ConfigError

__all__ = ["LRFindResult", "range_test", "suggest_lr", "lr_find", "plot_lr_find", "RULE"]

RULE = ("steepest descent of the loss per decade of LR (least-squares slope over half a decade around "
        "each LR), between the first 10% of the sweep and the loss minimum (running mean over half a "
        "decade); LR at that minimum / 10 when the loss never descends")


@dataclass
class LRFindResult:
    """The sweep and the suggestion.

    Attributes:
        lrs: head learning rate of each step (other groups keep their ratio to it).
        losses: raw training loss of each step.
        smoothed: bias-corrected EMA of ``losses``.
        suggestion: the suggested head LR (:data:`RULE`), None if the sweep was too short.
        steepest: LR of the steepest descent of the smoothed loss.
        min_div10: LR at the smoothed-loss minimum, / 10.
        stopped: ``diverged`` (loss above ``diverge`` x minimum, or not finite) or ``max_lr``.
        rule: how ``suggestion`` was chosen.
        group_ratios: ``{group name: its LR / head LR}``.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float | None
    steepest: float | None
    min_div10: float | None
    stopped: str
    rule: str = RULE
    group_ratios: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (what ``lr_find.json`` holds)."""
        return asdict(self)


def suggest_lr(lrs: list[float], losses: list[float]) -> tuple[float | None, float | None, float | None]:
    """``(suggestion, steepest, min_div10)`` for a sweep's raw losses (see :data:`RULE`).

    Both use centred windows of half a decade of LR (a least-squares slope, a running mean)
    instead of the EMA, which lags behind the sweep by about ``1 / (1 - beta)`` steps and would
    push the suggestion to higher LRs; the window also averages out batch noise.
    """
    n = len(lrs)
    if n < 3:
        return None, None, None
    y = np.asarray(losses, dtype=float)
    x = np.log10(np.asarray(lrs, dtype=float))
    per_decade = (n - 1) / max(x[-1] - x[0], 1e-12)
    half = max(1, round(per_decade / 2))  # +-1/2 decade around each point
    mean = np.array([y[max(0, i - half) : i + half + 1].mean() for i in range(n)])
    i_min = int(np.argmin(mean))
    min_div10 = lrs[i_min] / 10
    skip = max(1, n // 10)
    best_slope, steepest = 0.0, None
    for i in range(skip, i_min + 1):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        if hi - lo < 3:
            continue
        slope = float(np.polyfit(x[lo:hi], y[lo:hi], 1)[0])
        if slope < best_slope:
            best_slope, steepest = slope, lrs[i]
    return (steepest if steepest is not None else min_div10), steepest, min_div10


def range_test(
    step: Callable[[], float],
    optimizer: torch.optim.Optimizer,
    *,
    base_lr: float | None = None,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_steps: int = 100,
    beta: float = 0.9,
    diverge: float = 4.0,
    show_progress: bool | None = None,
) -> LRFindResult:
    """Run an exponential LR sweep with any ``step`` function.

    Args:
        step: does one training step with ``optimizer`` (zero_grad, forward, backward, step)
            and returns the loss (float).
        optimizer: its param groups' current LRs fix the ratios kept during the sweep.
        base_lr: the LR the ratios are relative to (default: the largest group LR); the
            sweep's LRs are this "head" LR.
        min_lr, max_lr: sweep range (log scale), ``0 < min_lr < max_lr``.
        num_steps: steps from ``min_lr`` to ``max_lr`` (>= 3).
        beta: EMA factor of the smoothed loss.
        diverge: stop when the smoothed loss exceeds this multiple of its minimum.

    Returns:
        The :class:`LRFindResult`.
    """
    _check_sweep(min_lr, max_lr, num_steps)
    base = base_lr or max(g["lr"] for g in optimizer.param_groups)
    ratios = [g["lr"] / base for g in optimizer.param_groups]
    lrs, losses, smoothed = [], [], []
    avg, best, stopped = 0.0, math.inf, "max_lr"
    with progress(show_progress, "lr-find", num_steps) as advance:
        for i in range(num_steps):
            lr = min_lr * (max_lr / min_lr) ** (i / (num_steps - 1))
            for g, r in zip(optimizer.param_groups, ratios, strict=True):
                g["lr"] = lr * r
            loss = float(step())
            advance()
            avg = beta * avg + (1 - beta) * loss
            smooth = avg / (1 - beta ** (i + 1))
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(smooth)
            if not math.isfinite(smooth) or (i > 0 and smooth > diverge * best):
                stopped = "diverged"
                break
            best = min(best, smooth)
    finite = [k for k, v in enumerate(losses) if math.isfinite(v)]
    suggestion, steepest, min_div10 = suggest_lr([lrs[k] for k in finite], [losses[k] for k in finite])
    names = [str(g.get("name", k)) for k, g in enumerate(optimizer.param_groups)]
    return LRFindResult(lrs, losses, smoothed, suggestion, steepest, min_div10, stopped,
                        group_ratios=dict(zip(names, ratios, strict=True)))


def _check_sweep(min_lr: float, max_lr: float, num_steps: int) -> None:
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"lr-find: need 0 < min_lr < max_lr, got {min_lr} and {max_lr}")
    if num_steps < 3:
        raise ConfigError(f"lr-find: steps={num_steps} must be >= 3")


def _segmentation_step(parts: Any, optimizer: torch.optim.Optimizer, grad_clip: float,
                       device: torch.device) -> Callable[[], float]:
    """One training step of the engine's module on the next training batch (cycling)."""
    module, model = parts.module, parts.model
    batches = itertools.chain.from_iterable(itertools.repeat(parts.dm.train_dataloader()))
    trainable = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]

    def step() -> float:
        batch = next(batches)
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        optimizer.zero_grad(set_to_none=True)
        loss = module.training_loss(module.forward_train(batch), batch)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        optimizer.step()
        return float(loss.detach())

    model.to(device)
    return step


def lr_find(
    config: Any = None,
    *,
    overrides: dict[str, Any] | list[str] | None = None,
    out: str | Path | None = None,
    min_lr: float = 1e-7,
    max_lr: float = 1.0,
    num_steps: int = 100,
    diverge: float = 4.0,
    device: str | None = None,
) -> LRFindResult:
    """LR range test for the model and strategy a ``segtune train`` with ``config`` would use.

    Args:
        config: as for :func:`segtune.train` (``data.root`` set); ``auto`` values are filled
            exactly as training fills them.
        overrides: dotted config values on top of ``config``.
        out: folder for ``lr_find.json`` and ``lr_find.png`` (created; existing files there
            are an error); None writes nothing.
        min_lr, max_lr, num_steps, diverge: see :func:`range_test`.
        device: ``cpu`` / ``cuda`` (default: ``cpu`` when ``train.accelerator`` is ``cpu``,
            else a GPU if there is one). Float32, one process.

    Returns:
        The :class:`LRFindResult`; ``suggestion`` is a head/decoder LR (``optim.lr``).
    """
    from ..engine.train import build_parts

    _check_sweep(min_lr, max_lr, num_steps)
    if out is not None:
        _check_free(Path(out))
    cfg, parts = build_parts(config, overrides)
    if device is None:
        device = "cuda" if cfg.train.accelerator != "cpu" and torch.cuda.is_available() else "cpu"
    model = parts.model
    parts.strategy.apply(model, 0)  # epoch 0's trainable stages; frozen norms stay in eval mode
    model.train()
    optimizer = parts.module.build_optimizer()
    step = _segmentation_step(parts, optimizer, cfg.optim.grad_clip, torch.device(device))
    _log.info(f"lr-find: {num_steps} steps from {min_lr:.1e} to {max_lr:.1e} on {device} "
              f"(strategy {parts.strategy.name}, every group keeps its LR ratio to the head)")
    result = range_test(step, optimizer, base_lr=parts.strategy.lr, min_lr=min_lr, max_lr=max_lr,
                        num_steps=num_steps, diverge=diverge, show_progress=None if cfg.train.progress else False)
    if out is not None:
        write_result(result, Path(out))
    return result


def _check_free(out: Path) -> None:
    for name in ("lr_find.json", "lr_find.png"):
        if (out / name).exists():
            raise ConfigError(f"{out / name}: already exists (pick another --out, or delete it)")


def write_result(result: LRFindResult, out: Path) -> None:
    """Write ``lr_find.json`` and ``lr_find.png`` into ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "lr_find.json", result.to_dict())
    try:
        plot_lr_find(result, out / "lr_find.png")
    except Exception as e:  # a plot must never lose the numbers
        _log.warn(f"could not draw {out / 'lr_find.png'} ({e})")


def plot_lr_find(result: LRFindResult, path: str | Path) -> None:
    """Loss (raw and smoothed) against LR (log axis), suggestion marked; PNG 700x450 px."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", lw=2, label="smoothed loss")
    if result.suggestion is not None:
        ax.axvline(result.suggestion, color="C3", ls="--", label=f"suggestion {result.suggestion:.2e}")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        lo, hi = min(finite), max(finite[: max(1, len(finite) // 10)] + [min(finite)])
        ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.5 * (hi - lo + 1e-9))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (head; other groups keep their ratio)")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({result.stopped})")
    ax.legend(loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
