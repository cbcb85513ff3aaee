"""Tiled vs whole-image inference on CamVid val at full resolution (480x360), and TTA flip.

A quickly trained model (Unet + ImageNet EfficientNet-Lite0, ``head`` strategy through
``segtune.train``, crop 256, batch 8, a short step budget on all 367 training images at full
resolution) predicts every second val image (51 of 101) in one pass and in overlapping tiles of a few sizes
(1/4 overlap). Each tile's softmax probabilities come from the same whole-image predictor;
the tiles are combined once with Gaussian weights (segtune's default, ``--blend gaussian``)
and once plainly averaged (``--blend uniform``), so both blends see identical tiles. All
scores come from one confusion matrix per variant over the whole split (mIoU = mean over
classes present, label 11 ignored). The goal of issue 11: tiled within 0.5 mIoU points of
whole-image inference. Also scored: test-time augmentation with a horizontal flip (the mean of
two passes), against the same plain inference.

    python benchmarks/tiling.py --write-results            # ~6-8 minutes on 1 CPU core
    python benchmarks/tiling.py --steps 5 --max-val 3 --tiles 192 --json /tmp/t.json   # smoke test
    python benchmarks/tiling.py --from-json benchmarks/tiling.json   # the RESULTS.md section only
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, also when loaded from the tests
import _common  # noqa: E402

_common.src_on_path()

JSON_DEFAULT = HERE / "tiling.json"
MARK_START, MARK_END = "<!-- tiling:start -->", "<!-- tiling:end -->"
CAMVID = HERE.parents[1] / "shared" / "data" / "camvid"


def train_model(data: Path, steps: int, workdir: Path, seed: int = 0) -> tuple[Path, float]:
    """A ``head`` run on all of CamVid train at full resolution; returns (run folder, seconds)."""
    import segtune
    from segtune.config import Config

    cfg = Config()
    cfg.data.root = str(data)
    cfg.data.crop_size, cfg.data.batch_size = 256, 8
    cfg.data.max_val_images = 2  # the run's own final evaluation; this script scores all of val
    cfg.strategy.name = "head"
    cfg.train.seed = seed
    cfg.train.max_steps = steps
    cfg.train.epochs = 1_000_000  # the step budget ends the run
    cfg.train.val_every = 1_000_000
    cfg.train.early_stopping = 0
    cfg.train.num_overlays = 0
    cfg.train.progress = False
    cfg.train.out, cfg.train.name, cfg.train.overwrite = str(workdir), "tiling-head", True
    t0 = time.perf_counter()
    run = segtune.train(cfg)
    return Path(run.dir), time.perf_counter() - t0


def _val_pairs(data: Path, max_val: int | None, stride: int = 1) -> tuple[Any, list[Any]]:
    """Every ``stride``-th val pair (sorted by name), at most ``max_val`` of them."""
    from segtune.data import find_pairs, load_dataset_spec

    spec = load_dataset_spec(data)
    s = spec.splits["val"]
    pairs, _ = find_pairs(s.images, s.masks)
    pairs = pairs[::stride]
    return spec, pairs[:max_val] if max_val else pairs


def _cached_tiles(pred: Any, image: Any) -> Any:
    """A tile function for :func:`segtune.inference.tiling.blend_tiles` that runs ``pred`` on each
    tile of ``image`` once (both blends reuse the same tile predictions)."""
    cache: dict[tuple[int, int, int, int], Any] = {}

    def tile_fn(y0: int, y1: int, x0: int, x1: int) -> Any:
        key = (y0, y1, x0, x1)
        if key not in cache:
            cache[key] = pred.predict_proba(image[y0:y1, x0:x1])
        return cache[key]

    return tile_fn


def _score_image(image: Any, truth: Any, whole: Any, flip: Any, tiles: list[int], spec: Any,
                 cms: dict[str, Any], secs: dict[str, float]) -> None:
    """Add one image's confusion matrices (and seconds) to every variant."""
    from segtune.inference.tiling import blend_tiles
    from segtune.metrics import confusion_matrix

    c, h, w = spec.num_classes, image.shape[0], image.shape[1]

    def add(variant: str, probs: Any, t0: float) -> None:
        cms[variant] += confusion_matrix(probs.argmax(0)[None], truth, c, spec.ignore_index)
        secs[variant] += time.perf_counter() - t0

    t0 = time.perf_counter()
    add("whole", whole.predict_proba(image), t0)
    for t in tiles:
        tile_fn = _cached_tiles(whole, image)
        for blend in ("gaussian", "uniform"):  # uniform's time excludes the (cached) forward passes
            t0 = time.perf_counter()
            add(f"tile{t}-{blend}", blend_tiles(tile_fn, h, w, t, blend), t0)
    if flip is not None:
        t0 = time.perf_counter()
        add("tta-flip", flip.predict_proba(image), t0)


def score(run: Path, data: Path, tiles: list[int], max_val: int | None, tta: bool, stride: int = 1) -> dict[str, Any]:
    """Confusion matrices of whole-image, tiled (gaussian/uniform per tile size) and TTA-flip inference."""
    import numpy as np
    import torch

    from segtune.data import SegDataset
    from segtune.inference import Predictor
    from segtune.inference.tiling import tile_count
    from segtune.metrics import segmentation_metrics

    spec, pairs = _val_pairs(data, max_val, stride)
    ds = SegDataset(pairs, spec, None, cache=False)
    whole = Predictor.from_run(run, device="cpu", tile_pixels=10**9)
    flip = Predictor.from_run(run, device="cpu", tile_pixels=10**9, tta="flip") if tta else None
    c = spec.num_classes
    variants = ["whole"] + [f"tile{t}-{b}" for t in tiles for b in ("gaussian", "uniform")] + (["tta-flip"] if tta else [])
    cms = {v: torch.zeros(c, c, dtype=torch.int64) for v in variants}
    secs = dict.fromkeys(variants, 0.0)
    h = w = 0
    for i in range(len(ds)):
        image, mask = ds.load(i)  # (H, W, 3) uint8, (H, W) class indices
        h, w = image.shape[:2]
        truth = torch.as_tensor(np.asarray(mask), dtype=torch.int64)[None]
        _score_image(image, truth, whole, flip, tiles, spec, cms, secs)
    rows = []
    for v in variants:
        m = segmentation_metrics(cms[v].numpy(), list(spec.classes))
        rows.append({"variant": v, "miou": m["miou"], "pixel_acc": m["pixel_acc"], "seconds": secs[v],
                     "per_class": {p["name"]: p["iou"] for p in m["per_class"]}})
    return {"images": len(ds), "size": [int(h), int(w)],
            "tiles_per_image": {str(t): tile_count(h, w, t) for t in tiles}, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=CAMVID, help="CamVid folder (default ../shared/data/camvid)")
    ap.add_argument("--steps", type=int, default=120, help="training steps of the quick model")
    ap.add_argument("--tiles", type=int, nargs="+", default=[192, 256], help="tile sides (multiples of 32)")
    ap.add_argument("--val-stride", type=int, default=2,
                    help="score every K-th val image (default 2: 51 of the 101, to fit the CPU budget)")
    ap.add_argument("--max-val", type=int, default=None, help="score at most N val images")
    ap.add_argument("--no-tta", action="store_true", help="skip the TTA-flip row")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--workdir", type=Path, help="where the run goes (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="where to save the result (default with --write-results: benchmarks/tiling.json)")
    ap.add_argument("--write-results", action="store_true", help="save benchmarks/tiling.json and its RESULTS.md section")
    ap.add_argument("--from-json", type=Path, metavar="FILE", help="measure nothing: rewrite the RESULTS.md section")
    a = ap.parse_args(argv)
    if a.from_json:
        doc = json.loads(a.from_json.read_text())
        _common.write_section(section(doc, a.from_json), MARK_START, MARK_END)
        return doc
    import torch

    from segtune import _log

    torch.set_num_threads(a.threads)
    _log.set_quiet(True)
    load0 = _common.load_avg()
    t_all = time.perf_counter()
    workdir = a.workdir or Path(tempfile.mkdtemp(prefix="segtune-tiling-"))
    run, train_s = train_model(a.data, a.steps, workdir)
    res = score(run, a.data, a.tiles, a.max_val, not a.no_tta, a.val_stride)
    doc = {"command": _common.command_line("tiling.py", argv), "machine": _common.machine(a.threads),
           "date": time.strftime("%Y-%m-%d"), "load": [load0, _common.load_avg()],
           "seconds": time.perf_counter() - t_all, "train": {"steps": a.steps, "seconds": train_s, "strategy": "head",
                                                            "crop": 256, "batch": 8, "train_images": 367},
           "val_stride": a.val_stride, **res}
    for r in doc["rows"]:
        print(f"{r['variant']:<18} mIoU {100 * r['miou']:6.2f}  pixel acc {100 * r['pixel_acc']:6.2f}  {r['seconds']:6.1f} s")
    path = a.json or (JSON_DEFAULT if a.write_results else None)
    if path:
        _common.save_json(path, doc)
    if a.write_results:
        _common.write_section(section(doc, path), MARK_START, MARK_END)
        print(f"updated {path} and the tiling section of {_common.RESULTS}")
    return doc


def section(doc: dict[str, Any], json_path: Path | None = None) -> str:
    """The RESULTS.md section, generated from the JSON."""
    rows = {r["variant"]: r for r in doc["rows"]}
    base = rows["whole"]["miou"]
    h, w = doc["size"]
    lines = [
        "## Tiling", "",
        f"`{doc['command']}` ({doc['seconds']:.0f} s; {doc['machine']}; {doc['date']}). "
        + _common.load_sentence(doc.get("load")) + (f" Raw results: `{_common.rel(json_path)}`." if json_path else ""),
        "",
        f"Model: Unet + ImageNet EfficientNet-Lite0, `head` strategy, {doc['train']['steps']} steps (batch "
        f"{doc['train']['batch']}, crop {doc['train']['crop']}) on the {doc['train']['train_images']} CamVid "
        f"training images at full resolution ({doc['train']['seconds']:.0f} s): a quickly trained model, not a good "
        f"one. Scored on {doc['images']} of the 101 CamVid val images (one in {doc.get('val_stride', 1)}, in name "
        f"order, to fit the CPU budget) at full resolution ({w}x{h}), one confusion matrix per row. Tiles overlap by 1/4; both blends use the same tile predictions (the uniform row's time excludes "
        "the forward passes).",
        "",
        "| inference | tiles per image | mIoU | vs whole (points) | pixel acc | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for v, r in rows.items():
        tiles = "1"
        if v.startswith("tile"):
            tiles = str(doc["tiles_per_image"].get(v[4:].split("-")[0], "?"))
        lines.append(f"| {v} | {tiles} | {100 * r['miou']:.2f} | {100 * (r['miou'] - base):+.2f} | "
                     f"{100 * r['pixel_acc']:.2f} | {r['seconds']:.1f} |")
    gauss = [(v, r) for v, r in rows.items() if v.endswith("-gaussian")]
    reading = []
    for v, r in gauss:
        d = 100 * (r["miou"] - base)
        u = rows[v.replace("gaussian", "uniform")]
        met = "within" if abs(d) <= 0.5 else "outside"
        reading.append(f"{v[4:].split('-')[0]} px tiles with Gaussian blending: {d:+.2f} points vs whole-image "
                       f"({met} the 0.5-point goal), uniform averaging {100 * (u['miou'] - base):+.2f}")
    if gauss:
        diffs = [100 * (r["miou"] - rows[v.replace("gaussian", "uniform")]["miou"]) for v, r in gauss]
        verdict = ("Gaussian blending beat plain averaging at every tile size" if min(diffs) > 0 else
                   "Gaussian blending did not beat plain averaging here" if max(diffs) <= 0 else
                   "Gaussian vs plain averaging went both ways")
        reading.append(f"{verdict} (Gaussian minus uniform: " + ", ".join(
            f"{d:+.2f} at {v[4:].split('-')[0]} px" for d, (v, _) in zip(diffs, gauss, strict=True)) + ")")
    if "tta-flip" in rows:
        reading.append(f"TTA flip: {100 * (rows['tta-flip']['miou'] - base):+.2f} points over plain whole-image inference")
    lines += ["", "Reading it: " + "; ".join(reading) + ". One model, one seed, one split: differences of a few "
              "tenths of a point are within what another seed could change."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
