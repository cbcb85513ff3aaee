"""Evaluation: one confusion matrix over the whole data set, then per-class and mean scores."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from .. import _log
from .._io import atomic_write_json
from .._progress import progress_iter
from .._tensor import cpu_channels_last, forward_chunked, round_up, suppress_classes
from ..errors import DataError

if TYPE_CHECKING:
    from ..inference.tta import TTA

__all__ = ["choose_split", "evaluate", "evaluate_model", "format_evaluation_extras", "write_evaluation"]

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
    tta: TTA | str | None = None,
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
        tta: test-time augmentation (:class:`~segtune.inference.tta.TTA` or its text, e.g.
            ``"flip"``): the scores are those of the averaged softmax; plain inference is scored
            in the same pass (its view is one of the TTA views when scale 1 is among them).

    Returns:
        Metrics dict with ``confusion_matrix`` ((C,C) nested list, rows = truth) added; with
        ``tta`` also ``plain`` (the same metrics for plain inference) and ``tta`` (the spec,
        ``miou`` and ``miou_plain``, ``gain_miou`` = their difference, the same for ``pixel_acc``).
    """
    from ..inference.tta import parse_tta
    from ..metrics import confusion_matrix, segmentation_metrics

    tta = parse_tta(tta)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    forward = _padded_forward(model, cpu_channels_last(model, device), suppress)  # channels-last: faster CPU convs
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    cm_plain = cm.clone()
    for batch in progress_iter(loader, "evaluating", show=None if progress else False):
        x, truth = batch["image"].to(device), batch["mask"]
        if tta is None:
            cm += confusion_matrix(forward(x).argmax(1).cpu(), truth, num_classes, ignore_index)
            continue
        mean, plain = _tta_and_plain(forward, x, tta)
        cm += confusion_matrix(mean.argmax(1).cpu(), truth, num_classes, ignore_index)
        cm_plain += confusion_matrix(plain.argmax(1).cpu(), truth, num_classes, ignore_index)
    m = segmentation_metrics(cm.numpy(), class_names)
    m["confusion_matrix"] = cm.tolist()
    if tta is not None:
        m["plain"] = segmentation_metrics(cm_plain.numpy(), class_names)
        m["tta"] = _tta_summary(str(tta), len(tta.views()), m, m["plain"])
    return m


def _padded_forward(model: torch.nn.Module, channels_last: bool, suppress: list[int] | tuple[int, ...]) -> Any:
    """``(N,3,H,W) -> (N,C,H,W)`` float logits for any H, W: zero-padded bottom/right to a
    multiple of 32 (as :func:`~segtune.data.pad_collate` does), run a few images at a time on a
    CPU (:func:`forward_chunked`), cropped back; suppressed classes set to the lowest float."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = round_up(h) - h, round_up(w) - w
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return suppress_classes(forward_chunked(model, x).float()[..., :h, :w], suppress)

    return forward


def _tta_and_plain(forward: Any, x: torch.Tensor, tta: TTA) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean TTA probabilities and plain-inference scores ``(N,C,H,W)`` of one batch, sharing the
    plain view's forward pass when it is one of the TTA views."""
    from ..inference.tta import tta_views

    total: torch.Tensor | None = None
    plain: torch.Tensor | None = None
    n = 0
    for view, p in tta_views(forward, x, tta):
        if view == (1.0, False):
            plain = p.clone()
        total = p if total is None else total.add_(p)
        n += 1
    assert total is not None
    return total / n, plain if plain is not None else forward(x)


def _tta_summary(spec: str, views: int, m: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """The gain of TTA over plain inference (mIoU and pixel accuracy, fractions in 0..1)."""

    def diff(key: str) -> float | None:
        a, b = m.get(key), plain.get(key)
        return None if a is None or b is None else float(a) - float(b)

    return {"spec": spec, "views": views, "miou": m.get("miou"), "miou_plain": plain.get("miou"),
            "gain_miou": diff("miou"), "pixel_acc": m.get("pixel_acc"), "pixel_acc_plain": plain.get("pixel_acc"),
            "gain_pixel_acc": diff("pixel_acc")}


def format_evaluation_extras(metrics: dict[str, Any]) -> str:
    """Lines printed after the metrics table: the TTA gain (when measured) and the files written."""
    lines = []
    t = metrics.get("tta")
    if t and t.get("miou") is not None and t.get("miou_plain") is not None:
        lines.append(f"TTA {t['spec']} ({t['views']} views): mIoU {t['miou']:.4f} vs plain {t['miou_plain']:.4f} "
                     f"({100 * t['gain_miou']:+.2f} points)")
    files = metrics.get("files") or []
    if files:
        lines.append("wrote " + ", ".join(str(f) for f in files))
    return "\n".join(lines)


def write_evaluation(out_dir: str | Path, metrics: dict[str, Any], summary: dict[str, Any] | None = None,
                     name: str = "metrics.json", confusion_png: bool = False) -> list[Path]:
    """Write ``metrics.json`` and ``per_class_iou.png`` (and ``confusion_matrix.png``, the
    row-normalised confusion matrix, when asked) into ``out_dir`` atomically; returns the paths."""
    from ..report import plot_per_class

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {"metrics": metrics}
    if summary:
        payload["summary"] = summary
    atomic_write_json(out_dir / name, payload)
    written = [out_dir / name]
    plots: list[tuple[str, Any]] = [("per_class_iou.png", lambda p: plot_per_class(metrics, p))]
    if confusion_png and metrics.get("confusion_matrix"):
        from ..report.confusion import plot_confusion_matrix

        names = [str(r.get("name")) for r in metrics.get("per_class", [])]
        plots.append(("confusion_matrix.png", lambda p: plot_confusion_matrix(metrics["confusion_matrix"], names, p)))
    for fname, draw in plots:
        try:
            draw(out_dir / fname)
            written.append(out_dir / fname)
        except Exception as e:  # a plot must never lose the metrics
            _log.warn(f"could not draw {fname} ({e})")
    return written


def choose_split(spec: Any, split: str | None, data: str | Path) -> str:
    """The split to score: ``split`` when given; otherwise ``val``, else the only split of a
    single-split folder (e.g. ``images/`` + ``masks/``, a held-out test folder), else ``test``.

    Raises:
        DataError: the asked split does not exist, or no split qualifies (names the choices).
    """
    available = list(spec.splits)
    if split is not None:
        if split not in spec.splits:
            raise DataError(f"{data}: no '{split}' split (available: {', '.join(available)}; pass one with --split)")
        return split
    if "val" in spec.splits:
        return "val"
    if len(available) == 1 or "test" in spec.splits:
        chosen = available[0] if len(available) == 1 else "test"
        what = "a single split" if len(available) == 1 else "no 'val' split"
        _log.info(f"{data}: {what}; scoring its '{chosen}' split ({spec.splits[chosen].images}); "
                  "pass --split to choose")
        return chosen
    raise DataError(f"{data}: no 'val' split and more than one other (available: {', '.join(available)}); "
                    "pass --split NAME")


def _warn_if_training_data(run: str | Path, data: str | Path, split: str) -> None:
    """Warn when the scored folder is the run's own training data (its scores flatter the model)."""
    import yaml

    try:
        cfg = yaml.safe_load((Path(run) / "config.yaml").read_text(encoding="utf-8")) or {}
        root = (cfg.get("data") or {}).get("root")
    except (OSError, yaml.YAMLError, AttributeError):
        return
    if root and Path(str(root)).resolve() == Path(data).resolve() and split == "train":
        _log.warn(f"{data}: this is the data {run} was trained on; the '{split}' split includes its training "
                  "images, so the scores are optimistic (evaluate on a held-out folder)")


def evaluate(
    run: str | Path,
    data: str | Path,
    split: str | None = None,
    out: str | Path | None = None,
    batch_size: int = 4,
    device: str | None = None,
    progress: bool = True,
    tta: TTA | str | None = None,
) -> dict[str, Any]:
    """Evaluate a trained run on a data set split.

    Args:
        run: run folder written by :func:`segtune.train`.
        data: data set folder or dataset.yaml (its classes must match the model's).
        split: which split to score (``val``, ``test`` or ``train``); None: ``val``, or the
            single split of a folder that has one (``images/`` + ``masks/``), see :func:`choose_split`.
        out: folder for metrics.json, per_class_iou.png and confusion_matrix.png (default
            ``<run>/eval-<split>``; ``<run>/eval-<data set name>`` for a single-split folder).
        batch_size: images per forward pass.
        device: ``cpu``/``cuda`` (default: cuda if available).
        progress: show a progress bar.
        tta: test-time augmentation, e.g. ``"flip"`` or ``"flip,scales=0.75,1,1.25"``; the
            result then also holds plain inference's metrics and the gain (``metrics["tta"]``).

    Returns:
        The metrics dict (per class and means; see :func:`segtune.metrics.segmentation_metrics`),
        with ``split`` (the split scored) and ``files`` (the paths written) added.
    """
    from ..inference.tta import parse_tta
    from .run import load_model

    tta = parse_tta(tta)  # a bad spec fails before the model loads
    model, meta = load_model(run)
    asked = split
    spec, split, shift, loader, n_images = _eval_loader(run, data, split, meta, batch_size)
    _warn_if_training_data(run, data, split)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    suppress = (meta.get("inference") or {}).get("suppress", [])
    names = list(meta["classes"]) if shift else list(spec.classes)
    metrics = evaluate_model(model, loader, spec.num_classes + shift, spec.ignore_index, names, device,
                             progress, suppress=suppress, tta=tta)
    # a single-split folder (a held-out test set) is named after itself, so two such folders
    # evaluated with one run do not share (and overwrite) eval-train/
    single = asked is None and len(spec.splits) == 1
    default = f"eval-{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(spec.name)) or split}" if single else f"eval-{split}"
    out_dir = Path(out) if out else Path(run) / default
    summary = {"run": str(run), "data": str(data), "split": split, "images": n_images,
               "tta": None if tta is None else str(tta)}
    files = write_evaluation(out_dir, metrics, summary=summary, confusion_png=True)
    metrics["split"] = split
    metrics["files"] = [str(f) for f in files]
    return metrics


def _eval_loader(run: str | Path, data: str | Path, split: str | None, meta: dict[str, Any],
                 batch_size: int) -> tuple[Any, str, int, DataLoader, int]:
    """The data set's spec, the split chosen, the label shift (1 for an incremental model with a
    synthetic background, else 0), a loader over its pairs and their number."""
    from ..data import SegDataset, eval_transforms, load_dataset_spec, pad_collate
    from ..data.pairing import split_pairs

    spec = load_dataset_spec(data, known=meta)
    # an incremental model with a synthetic background (index 0) scores data that lists the
    # other classes: labels move up by one, background is never predicted (inference.suppress)
    shift = int(meta.get("background") == "synthetic" and list(spec.classes) == list(meta.get("classes", []))[1:])
    if spec.num_classes + shift != int(meta["model"]["num_classes"]):
        raise DataError(
            f"{data}: data set has {spec.num_classes} classes but the model in {run} was trained for "
            f"{meta['model']['num_classes']} ({', '.join(meta.get('classes', []))}); evaluate on data with the same classes"
        )
    split = choose_split(spec, split, data)
    s = spec.splits[split]
    if s.masks is None:
        raise DataError(f"{s.images}: the '{split}' split has no masks to score against (add its masks folder)")
    pairs, problems = split_pairs(s)
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

    return spec, split, shift, DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate), len(pairs)
