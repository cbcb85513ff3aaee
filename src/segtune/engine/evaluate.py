"""Evaluation: one confusion matrix over the whole data set, then per-class and mean scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .. import _log
from .._io import atomic_write_json
from .._progress import progress_iter
from .._tensor import cpu_channels_last, forward_chunked, suppress_classes
from ..errors import DataError

__all__ = ["evaluate", "evaluate_model", "write_evaluation"]

@torch.inference_mode()
def evaluate_model(
    model: torch.nn.Module,
    loader: DataLoader,
    num_classes: int,
    ignore_index: int,
    class_names: list[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    suppress: list[int] | tuple[int, ...] = (),
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and return :func:`segmentation_metrics` of the summed confusion matrix.

    Args:
        model: ``(N,3,H,W)`` float -> ``(N,C,H,W)`` logits.
        loader: yields ``{"image": (N,3,H,W) float32, "mask": (N,H,W) int64}`` batches.
        num_classes, ignore_index, class_names: label set of the data.
        device: where to run (default: the model's device).
        progress: show a progress bar.
        suppress: class indices never predicted (model.yaml ``inference.suppress``, e.g. the
            synthetic background of an incremental model), as in :class:`~segtune.inference.Predictor`.

    Returns:
        Metrics dict with ``confusion_matrix`` ((C,C) nested list, rows = truth) added.
    """
    from ..metrics import confusion_matrix, segmentation_metrics

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    channels_last = cpu_channels_last(model, device)  # faster CPU convolutions
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for batch in progress_iter(loader, "evaluating", show=None if progress else False):
        x = batch["image"].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = suppress_classes(forward_chunked(model, x), suppress)
        cm += confusion_matrix(logits.argmax(1).cpu(), batch["mask"], num_classes, ignore_index)
    m = segmentation_metrics(cm.numpy(), class_names)
    m["confusion_matrix"] = cm.tolist()
    return m


def write_evaluation(out_dir: str | Path, metrics: dict[str, Any], summary: dict[str, Any] | None = None, name: str = "metrics.json") -> None:
    """Write ``metrics.json`` and ``per_class_iou.png`` into ``out_dir`` (atomically)."""
    from ..report import plot_per_class

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"metrics": metrics}
    if summary:
        payload["summary"] = summary
    atomic_write_json(out_dir / name, payload)
    try:
        plot_per_class(metrics, out_dir / "per_class_iou.png")
    except Exception as e:  # a plot must never lose the metrics
        _log.warn(f"could not draw per_class_iou.png ({e})")


def evaluate(
    run: str | Path,
    data: str | Path,
    split: str = "val",
    out: str | Path | None = None,
    batch_size: int = 4,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a trained run on a data set split.

    Args:
        run: run folder written by :func:`segtune.train`.
        data: data set folder or dataset.yaml (its classes must match the model's).
        split: which split to score (``val``, ``test`` or ``train``).
        out: folder for metrics.json and per_class_iou.png (default ``<run>/eval-<split>``).
        batch_size: images per forward pass.
        device: ``cpu``/``cuda`` (default: cuda if available).
        progress: show a progress bar.

    Returns:
        The metrics dict (per class and means; see :func:`segtune.metrics.segmentation_metrics`).
    """
    from ..data import SegDataset, eval_transforms, find_pairs, load_dataset_spec, pad_collate
    from .run import load_model

    model, meta = load_model(run)
    spec = load_dataset_spec(data)
    # an incremental model with a synthetic background (index 0) scores data that lists the
    # other classes: labels move up by one, background is never predicted (inference.suppress)
    shift = int(meta.get("background") == "synthetic" and list(spec.classes) == list(meta.get("classes", []))[1:])
    if spec.num_classes + shift != int(meta["model"]["num_classes"]):
        raise DataError(
            f"{data}: data set has {spec.num_classes} classes but the model in {run} was trained for "
            f"{meta['model']['num_classes']} ({', '.join(meta.get('classes', []))}); evaluate on data with the same classes"
        )
    if split not in spec.splits:
        raise DataError(f"{data}: no '{split}' split (available: {', '.join(spec.splits)})")
    s = spec.splits[split]
    pairs, problems = find_pairs(s.images, s.masks)
    if not pairs:
        raise DataError(f"{s.images}: no image/mask pairs to evaluate" + (f" ({problems[0]})" if problems else ""))
    for p in problems:
        _log.warn(str(p))
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]
    ds = SegDataset(pairs, spec, eval_transforms(mean, std, spec.ignore_index), cache=False)
    def collate(batch: list) -> dict[str, Any]:
        out = pad_collate(batch, spec.ignore_index)
        if shift:
            m = out["mask"]
            out["mask"] = torch.where(m == spec.ignore_index, m, m + shift)
        return out

    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    suppress = (meta.get("inference") or {}).get("suppress", [])
    names = list(meta["classes"]) if shift else list(spec.classes)
    metrics = evaluate_model(model, loader, spec.num_classes + shift, spec.ignore_index, names, device,
                             progress, suppress=suppress)
    out_dir = Path(out) if out else Path(run) / f"eval-{split}"
    write_evaluation(out_dir, metrics, summary={"run": str(run), "data": str(data), "split": split, "images": len(pairs)})
    return metrics
