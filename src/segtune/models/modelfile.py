"""Model files: ``model.safetensors`` + ``model.yaml``, written atomically, loaded without pickle.

The one place that saves and loads a trained model (the engine writes it, prediction, evaluation
and export read it). ``model.yaml`` holds the architecture, classes, colours, normalisation,
versions and the SHA-256 of the weights, which :func:`load_model` checks.
"""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

import torch
import yaml

from .._io import atomic_path, atomic_write_yaml, sha256_file
from ..errors import RunError, WeightsError
from .factory import create_model

__all__ = ["MODEL_FILE", "MODEL_META", "FORMAT_VERSION", "versions", "save_model", "load_model_meta", "load_model"]

MODEL_FILE = "model.safetensors"
MODEL_META = "model.yaml"
FORMAT_VERSION = 1


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
