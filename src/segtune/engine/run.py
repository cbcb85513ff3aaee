"""Run folders: where a training run keeps its model, config, metrics and pictures.

Layout of ``<out>/<name>/``::

    model.safetensors   weights of the best checkpoint (safetensors: loading runs no code)
    model.yaml          architecture, classes, colours, normalisation, strategy, versions, sha256
    config.yaml         the fully resolved Config
    metrics.json        final validation metrics (per class + means) and the run summary
    history.csv         one row per epoch (losses, val mIoU, lr, seconds)
    curves.png          training curves
    per_class_iou.png   per-class IoU bars
    val_overlays/       input | ground truth | prediction for a few validation images
    checkpoints/        last.ckpt and best.ckpt (Lightning, for --resume)
"""

from __future__ import annotations

import datetime as _dt
import platform
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from .._io import atomic_path, atomic_write_yaml, sha256_file
from ..errors import RunError, WeightsError

__all__ = [
    "Run",
    "MODEL_FILE",
    "MODEL_META",
    "CONFIG_FILE",
    "METRICS_FILE",
    "versions",
    "new_run_dir",
    "save_model",
    "load_model_meta",
    "load_model",
]

MODEL_FILE = "model.safetensors"
MODEL_META = "model.yaml"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
FORMAT_VERSION = 1


@dataclass
class Run:
    """The result of :func:`segtune.train`: a finished run folder and its headline numbers.

    Attributes:
        dir: run folder.
        metrics: final validation metrics (see :func:`segtune.metrics.segmentation_metrics`).
        history: one dict per epoch.
        summary: strategy, trainable parameters, epochs, seconds, ...
    """

    dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def miou(self) -> float | None:
        return self.metrics.get("miou")

    def load(self, device: str | None = None):  # -> Predictor
        """Load the trained model for prediction (see :class:`segtune.inference.Predictor`)."""
        from ..inference import Predictor

        return Predictor.from_run(self.dir, device=device)


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape a model's numbers."""
    out = {"python": platform.python_version()}
    from .. import __version__

    out["segtune"] = __version__
    for mod in ("torch", "torchvision", "timm", "segmentation_models_pytorch", "lightning", "numpy"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # pragma: no cover - optional
            pass
    return out


def new_run_dir(out: str | Path, name: str, overwrite: bool = False) -> Path:
    """Create and return ``out/name``.

    An existing folder is an error unless ``overwrite``; then its files are replaced as they
    are rewritten (never deleted wholesale).
    """
    if not re.fullmatch(r"[\w.\-+=@ ]+", name):
        raise RunError(f"run name '{name}' may only hold letters, digits, space and ._-+=@")
    run = Path(out) / name
    if run.exists() and any(run.iterdir()) and not overwrite:
        raise RunError(
            f"{run}: run folder already exists (pass --overwrite to replace it, "
            f"--resume {run} to continue it, or --name to pick another)"
        )
    run.mkdir(parents=True, exist_ok=True)
    return run


def default_run_name(arch: str, strategy: str) -> str:
    """``<arch>-<strategy>``, or just ``<arch>`` while the strategy is still ``auto``."""
    return arch if strategy == "auto" else f"{arch}-{strategy}"


def free_run_name(out: str | Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... whichever does not exist yet under ``out``."""
    out = Path(out)
    if not (out / base).exists():
        return base
    i = 2
    while (out / f"{base}-{i}").exists():
        i += 1
    return f"{base}-{i}"


def save_model(run_dir: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``model.yaml`` (with the weights' SHA-256) atomically.

    Args:
        run_dir: run folder.
        model: a :class:`segtune.models.SegModel`.
        meta: extra description (classes, colours, ignore_index, strategy, ...); ``model``,
            ``format_version``, ``versions`` and ``sha256`` are filled in here.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run_dir / MODEL_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "segtune"})
    full = {
        "format_version": FORMAT_VERSION,
        "model": model.describe(),
        **meta,
        "versions": versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sha256": sha256_file(run_dir / MODEL_FILE),
    }
    atomic_write_yaml(run_dir / MODEL_META, full)
    return run_dir / MODEL_FILE


def load_model_meta(run_dir: str | Path) -> dict[str, Any]:
    """Read ``model.yaml`` of a run folder (safe YAML), with clear errors."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"{run_dir}: run folder not found (give the folder that `segtune train` wrote)")
    meta_path = run_dir / MODEL_META
    if not meta_path.is_file():
        hint = " (training did not finish: resume it with `segtune train --resume`)" if (
            run_dir / "checkpoints" / "last.ckpt"
        ).exists() else ""
        raise RunError(f"{meta_path}: missing, so {run_dir} holds no finished model{hint}")
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RunError(f"{meta_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise RunError(f"{meta_path}: not a segtune model description (no 'model' key)")
    return meta


def load_model(run_dir: str | Path, verify: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a run folder and load its weights.

    Args:
        run_dir: run folder holding ``model.safetensors`` and ``model.yaml``.
        verify: check the weights' SHA-256 against ``model.yaml`` (detects corrupt or swapped files).

    Returns:
        ``(model, meta)`` with the model in eval mode on the CPU.
    """
    from safetensors.torch import load_file

    from ..models import create_model

    run_dir = Path(run_dir)
    meta = load_model_meta(run_dir)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise RunError(f"{weights}: missing (the run folder is incomplete)")
    if verify and meta.get("sha256") and sha256_file(weights) != meta["sha256"]:
        raise WeightsError(
            f"{weights}: SHA-256 does not match model.yaml (file changed or corrupt); "
            "restore it or retrain"
        )
    desc = dict(meta["model"])
    kwargs = {k: desc[k] for k in ("arch", "encoder", "num_classes") if k in desc}
    model = create_model(**kwargs, weights="none")
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise WeightsError(f"{weights}: cannot read safetensors file ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsError(f"{weights}: weights do not fit the model in model.yaml ({first})") from None
    model.eval()
    return model, meta


_ = sys
