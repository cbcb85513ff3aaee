"""``segtune rank-encoders``: score candidate encoders on a data set before training any of them.

:func:`rank_encoders` reads as its phases: load the data (training images only; a data set
without a val split loses the same seeded 20% that ``segtune train`` would hold out), build every
candidate (a bad one fails here, before any work or output), sample labelled pixels once,
then per candidate extract frozen features and score them; finally write ``ranking.json`` and
``ranking.png`` into the output folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _log
from .._io import atomic_path, atomic_write_json
from ..errors import ConfigError, DataError, RunError
from .candidates import Candidate, build_encoder, parse_candidates
from .features import extract_features, sample_pixels
from .levels import LEVELS
from .scores import SCORES

__all__ = ["Ranking", "rank_encoders", "format_table", "DEFAULT_SCORES"]

DEFAULT_SCORES = ("logme", "h_score", "h_score_shrink", "gbc")
RANKING_JSON = "ranking.json"
RANKING_PNG = "ranking.png"


@dataclass
class Ranking:
    """The result of :func:`rank_encoders`.

    Attributes:
        rows: one dict per candidate, best first by ``rank_by``: ``candidate``, ``kind``,
            ``encoder``, ``feature_dim``, ``seconds`` (features + scores), ``scores``
            (name -> float) and ``rank`` (score name -> 1-based rank).
        rank_by: the score that orders ``rows``.
        info: data set, images, pixels, level, seeds, total seconds.
        out: the output folder (``None`` when nothing was written).
    """

    rows: list[dict[str, Any]]
    rank_by: str
    info: dict[str, Any] = field(default_factory=dict)
    out: Path | None = None

    def order(self, score: str | None = None) -> list[str]:
        """Candidate labels, best first, by ``score`` (default ``rank_by``)."""
        s = score or self.rank_by
        return [r["candidate"] for r in sorted(self.rows, key=lambda r: r["rank"][s])]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (what ``ranking.json`` holds)."""
        return {"rank_by": self.rank_by, **self.info, "rows": self.rows}


# ------------------------------------------------------------------------- phase: data
def _training_pairs(data: str | Path, max_images: int, seed: int) -> tuple[Any, list[tuple[Path, Path]]]:
    from ..config import DataConfig
    from ..data import find_pairs, load_dataset_spec
    from ..data.split import split_train_val

    spec = load_dataset_spec(data)
    if "train" not in spec.splits or spec.splits["train"].masks is None:
        raise DataError(f"{spec.source}: no labelled train split (rank-encoders scores the training images)")
    train, problems = find_pairs(spec.splits["train"].images, spec.splits["train"].masks)
    for p in problems:
        _log.warn(str(p))
    if not train:
        raise DataError(f"{spec.splits['train'].images}: no image/mask pairs (check the folders in {spec.source})")
    val = spec.splits.get("val")
    has_val = val is not None and val.masks is not None
    split = split_train_val(
        train, [] if has_val else None, val_fraction=DataConfig().val_fraction, seed=seed,
        max_train_images=max_images, source=spec.source,
    )
    return spec, split.train


def _loaders(
    ds: Any, scale: float
) -> tuple[list[Callable[[], Any]], list[Callable[[], Any]]]:
    """Per-image loaders: ``(3, H, W)`` float [0, 1] images and ``(H, W)`` int64 masks, rescaled."""
    import torch.nn.functional as F

    def image(i: int) -> Any:
        x = ds[i]["image"]
        if scale == 1.0:
            return x
        return F.interpolate(x[None], scale_factor=scale, mode="bilinear", antialias=True,
                             align_corners=False, recompute_scale_factor=False)[0]

    def mask(i: int) -> Any:
        m = ds[i]["mask"]
        if scale == 1.0:
            return m
        h, w = (max(1, round(s * scale)) for s in m.shape)
        return F.interpolate(m[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()

    n = len(ds)
    return [lambda i=i: image(i) for i in range(n)], [lambda i=i: mask(i) for i in range(n)]


# ------------------------------------------------------------------- phase: candidates
def _build_all(candidates: list[Candidate], seed: int) -> list[tuple[Candidate, Any]]:
    built = []
    for c in candidates:
        model = build_encoder(c, seed=seed)
        if c.kind == "run":
            c = Candidate(c.label, c.kind, model.encoder_name, c.source)
        built.append((c, model))
    return built


def _score_one(
    cand: Candidate, model: Any, images: list[Callable[[], Any]], sample: Any, level: Any,
    scores: Sequence[str], device: str, progress: bool | None,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    feats = extract_features(model, images, sample, level, device=device, show_progress=progress,
                             description=f"features {cand.label}")
    t_feat = time.perf_counter() - t0
    labels = sample.all_labels()
    values = {s: float(SCORES.get(s)(feats, labels)) for s in scores}
    seconds = time.perf_counter() - t0
    _log.info(f"{cand.label}: " + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
              + f" (D={feats.shape[1]}, {seconds:.1f} s)")
    return {"candidate": cand.label, "kind": cand.kind, "encoder": cand.encoder,
            "feature_dim": int(feats.shape[1]), "seconds": round(seconds, 3),
            "feature_seconds": round(t_feat, 3), "scores": values}


def _add_ranks(rows: list[dict[str, Any]], scores: Sequence[str], rank_by: str) -> list[dict[str, Any]]:
    for s in scores:
        order = sorted(range(len(rows)), key=lambda i: -rows[i]["scores"][s])
        for r, i in enumerate(order, 1):
            rows[i].setdefault("rank", {})[s] = r
    return sorted(rows, key=lambda r: r["rank"][rank_by])


# ------------------------------------------------------------------------- phase: output
def _prepare_out(out: str | Path | None, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if (out / RANKING_JSON).exists() and not overwrite:
        raise RunError(f"{out}: already holds {RANKING_JSON} (pass --overwrite to replace it, or choose another --out)")
    return out


def _plot(ranking: Ranking, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(ranking.rows[0]["scores"])
    fig = Figure(figsize=(4.0 * len(names), 0.5 * len(ranking.rows) + 1.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    labels = [r["candidate"] for r in ranking.rows][::-1]
    for ax, s in zip(axes, names, strict=True):
        vals = [r["scores"][s] for r in ranking.rows][::-1]
        colors = ["0.6" if r["kind"] == "random" else "tab:blue" for r in ranking.rows][::-1]
        ax.barh(range(len(vals)), vals, color=colors)
        ax.set_yticks(range(len(vals)))
        ax.set_yticklabels(labels if ax is axes[0] else [""] * len(vals), fontsize=8)
        ax.set_title(s + (" (orders the table)" if s == ranking.rank_by else ""), fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle(f"transferability on {ranking.info.get('data', '')} (higher is better; grey: random init)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def _write(ranking: Ranking, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _plot(ranking, out / RANKING_PNG)
    atomic_write_json(out / RANKING_JSON, ranking.to_dict())
    ranking.out = out


def format_table(ranking: Ranking) -> str:
    """The ranking as a text table: rank, candidate, scores, feature dim, seconds."""
    names = list(ranking.rows[0]["scores"]) if ranking.rows else []
    width = max([9, *(len(r["candidate"]) for r in ranking.rows)])
    head = f"{'rank':>4}  {'candidate':<{width}}  " + "  ".join(f"{n:>9}" for n in names) + f"  {'dim':>5}  {'s':>6}"
    lines = [head]
    for r in ranking.rows:
        vals = "  ".join(f"{r['scores'][n]:>9.4f}" for n in names)
        lines.append(f"{r['rank'][ranking.rank_by]:>4}  {r['candidate']:<{width}}  {vals}  {r['feature_dim']:>5}  {r['seconds']:>6.1f}")
    return "\n".join(lines)


def _warn_random(ranking: Ranking) -> None:
    rand = [r for r in ranking.rows if r["kind"] == "random"]
    if rand and ranking.rows[-1]["kind"] != "random":
        above = [r["candidate"] for r in ranking.rows[ranking.rows.index(rand[0]) + 1:] if r["kind"] != "random"]
        _log.warn(f"{rand[0]['candidate']} ranks above {', '.join(above)} by {ranking.rank_by}: those encoders' "
                  "features fit these labels no better than random ones")


# --------------------------------------------------------------------------------- API
def rank_encoders(
    data: str | Path,
    candidates: str | Sequence[str] | None = None,
    *,
    out: str | Path | None = None,
    max_images: int = 100,
    pixels_per_class: int = 1000,
    levels: str = "multi",
    scores: Sequence[str] = DEFAULT_SCORES,
    scale: float = 1.0,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
) -> Ranking:
    """Score candidate encoders' frozen features on a data set's training images.

    Args:
        data: data set folder or dataset.yaml (its train split is used).
        candidates: comma-separated string or list (see :mod:`segtune.selection.candidates`);
            ``None``: EfficientNet-Lite0/1/2 with ImageNet weights and random Lite0.
        out: folder for ``ranking.json`` and ``ranking.png`` (None: write nothing).
        max_images: seeded random subset of the training images (at most this many).
        pixels_per_class: class-balanced sample size per class (grid cells at the level's stride).
        levels: feature level, ``multi`` or ``deepest`` (see :mod:`segtune.selection.features`).
        scores: score names (see :data:`segtune.selection.SCORES`); the first orders the table.
        scale: resize factor of images (bilinear) and masks (nearest) before encoding.
        seed: image subset, pixel sample and random-init seed.
        device: torch device (default: cuda when available).
        overwrite: replace an existing ``ranking.json`` in ``out``.
        progress: progress bars (None: when stderr is a terminal).

    Returns:
        A :class:`Ranking` (rows best first).

    Raises:
        SegtuneError: bad data, bad candidate, unknown score/level, or ``out`` already used.
    """
    import torch

    t0 = time.perf_counter()
    scores = [str(s).lower() for s in scores]
    for s in scores:
        SCORES.get(s)
    if not scores:
        raise ConfigError("--scores: empty (give e.g. logme,h_score)")
    level = LEVELS.get(levels)
    if not 0 < scale <= 4:
        raise ConfigError(f"--scale={scale}: must be in (0, 4]")
    out_dir = _prepare_out(out, overwrite)
    spec, pairs = _training_pairs(data, max_images, seed)
    built = _build_all(parse_candidates(candidates), seed)
    from ..data import SegDataset

    ds = SegDataset(pairs, spec, transform=None, cache=True)
    images, masks = _loaders(ds, float(scale))
    sample = sample_pixels(masks, level.stride, spec.num_classes, spec.ignore_index, pixels_per_class, seed)
    if len(sample.counts) < 2:
        raise DataError(f"{spec.source}: fewer than 2 classes in the sampled training pixels (nothing to tell apart)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = [_score_one(c, m, images, sample, level, scores, device, progress) for c, m in built]
    info = {"data": spec.name or str(data), "images": len(pairs), "pixels": sample.n,
            "pixels_per_class": pixels_per_class, "class_cells": {spec.classes[c]: n for c, n in sample.counts.items()},
            "level": levels, "stride": level.stride, "scale": scale, "seed": seed, "device": device,
            "seconds": round(time.perf_counter() - t0, 2)}
    ranking = Ranking(_add_ranks(rows, scores, scores[0]), scores[0], info)
    _warn_random(ranking)
    if out_dir is not None:
        _write(ranking, out_dir)
    return ranking
