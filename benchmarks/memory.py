"""Peak memory (RSS) of ``segtune train`` and ``segtune predict`` vs image, crop and batch size.

Every configuration runs in a fresh Python process, which reports its own peak resident set
size (``VmHWM`` from ``/proc/self/status``, falling back to ``getrusage``) and its RSS once
the libraries are imported and the model is built (the fixed part). CPU only, one thread.

* train: ``segtune.train`` end to end (Unet + EfficientNet-Lite0, ``full`` strategy, AdamW,
  ce+dice, Lightning) on a generated data set of 512 x 512 images, for a few optimiser steps
  at each ``crop x batch``; validation (1 image at a time) and the final evaluation included,
  overlays off, decoded images cached in RAM (a few MB here).
* predict: ``Predictor.predict_paths`` on one PNG of ``S x S`` pixels (11 classes, like
  CamVid): decode, forward (tiled above ``tile_pixels`` = 2048^2), palette PNG written.

It prints a table and the least-squares rule ``training RSS ~ A + B x batch x crop^2``.

    python benchmarks/memory.py --quick            # ~1-2 minutes on 2 CPU cores
    python benchmarks/memory.py                    # full grid, ~10 minutes
    python benchmarks/memory.py --quick --record   # also benchmarks/memory.json + its RESULTS.md section
    python benchmarks/memory.py --from-json benchmarks/memory.json   # the section from the JSON alone

``benchmarks/memory.json`` keeps the latest result of each profile (``quick``, ``full``) with its
command, machine and date; the RESULTS.md section (between ``<!-- memory:start -->`` and
``<!-- memory:end -->``) is generated from it, one part per profile present.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, also when loaded from the tests
import _common  # noqa: E402
from _common import machine, rss_mb  # noqa: E402

JSON_DEFAULT = HERE / "memory.json"
MARK_START, MARK_END = "<!-- memory:start -->", "<!-- memory:end -->"

QUICK = {
    "train": [(256, 2), (256, 4), (384, 2), (384, 4)],
    "predict": [512, 1024, 2048],
}
FULL = {
    "train": [(c, b) for c in (256, 384, 512) for b in (2, 4, 8)],
    "predict": [512, 1024, 2048, 4096],
}
STEPS = 3
PREDICT_CLASSES = 11


# --------------------------------------------------------------------------- child side
def _child_train(data: str, crop: int, batch: int, steps: int) -> dict:
    import torch

    torch.set_num_threads(1)
    import segtune
    from segtune import _log
    from segtune.models import create_model

    _log.set_quiet(True)
    create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights="none")  # warm imports
    base = rss_mb("VmRSS")
    out = tempfile.mkdtemp(prefix="segtune-mem-")
    cfg = {
        "data": {"root": data, "crop_size": crop, "batch_size": batch, "val_batch_size": 1,
                 "cache": "ram", "scale_min": 1.0, "scale_max": 1.0},
        "model": {"weights": "none"},
        "strategy": {"name": "full"},
        "train": {"max_steps": steps, "epochs": 100, "out": out, "name": "m", "progress": False,
                  "num_overlays": 0, "early_stopping": 0},
        "optim": {"warmup_steps": 0},
    }
    t0 = time.perf_counter()
    segtune.train(cfg)
    return {"base_mb": base, "peak_mb": rss_mb("VmHWM"), "seconds": time.perf_counter() - t0}


def _child_predict(size: int, classes: int) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    from segtune import _log
    from segtune.inference import Predictor
    from segtune.models import create_model

    _log.set_quiet(True)
    folder = Path(tempfile.mkdtemp(prefix="segtune-mem-"))
    yy, xx = np.mgrid[0:size, 0:size]  # smooth content: fast to write and to read back
    img = np.stack([(xx * 255 // size), (yy * 255 // size), ((xx + yy) * 127 // size)], -1).astype(np.uint8)
    Image.fromarray(img).save(folder / "in.png", compress_level=1)
    del img, yy, xx
    model = create_model("unet", "tf_efficientnet_lite0", num_classes=classes, weights="none")
    meta = {"classes": [f"c{i}" for i in range(classes)], "colors": None, "ignore_index": 255,
            "normalization": {"mean": list(model.mean), "std": list(model.std)}}
    pred = Predictor(model, meta, device="cpu", max_pixels=size * size + 1)
    import gc

    gc.collect()
    base = rss_mb("VmRSS")
    t0 = time.perf_counter()
    pred.predict_paths(folder / "in.png", folder / "out", progress=False)
    return {"base_mb": base, "peak_mb": rss_mb("VmHWM"), "seconds": time.perf_counter() - t0,
            "tiled": size * size > pred.tile_pixels}


# -------------------------------------------------------------------------- parent side
def _run_child(args: list[str]) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fit(rows: list[dict]) -> tuple[float, float]:
    """Least squares ``peak_mb = A + B * (batch * crop^2 / 1e6)``."""
    import numpy as np

    x = np.array([r["batch"] * r["crop"] ** 2 / 1e6 for r in rows])
    y = np.array([r["peak_mb"] for r in rows])
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small grid (about a minute or two)")
    ap.add_argument("--record", "--write-results", action="store_true",
                    help="store the result in the JSON (--json, default benchmarks/memory.json) and write the "
                         "RESULTS.md section generated from it")
    ap.add_argument("--json", type=Path, help="JSON file holding the latest result of each profile")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="measure nothing: rewrite the RESULTS.md section from the JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, *rest = a.child
        if kind == "train":
            res = _child_train(rest[0], int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            res = _child_predict(int(rest[0]), int(rest[1]))
        print(json.dumps(res))
        return res
    if a.from_json:
        doc = json.loads(a.from_json.read_text())
        _common.write_section(section(doc, a.from_json), MARK_START, MARK_END)
        return doc

    grid = QUICK if a.quick else FULL
    t_all = time.perf_counter()
    load0 = _common.load_avg()
    sys.path.insert(0, str(HERE.parent / "src"))
    from segtune.data.synthetic import make_synthetic_dataset

    tmp = Path(tempfile.mkdtemp(prefix="segtune-memdata-"))
    data = make_synthetic_dataset(tmp / "syn", n_train=8, n_val=1, size=512, seed=0)
    train_rows, pred_rows = [], []
    print(f"{'train':<8} {'crop':>5} {'batch':>5} {'base MB':>8} {'peak MB':>8} {'s':>6}", flush=True)
    for crop, batch in grid["train"]:
        r = _run_child(["train", str(data), str(crop), str(batch), str(STEPS)])
        r.update(crop=crop, batch=batch)
        train_rows.append(r)
        print(f"{'':<8} {crop:>5} {batch:>5} {r['base_mb']:>8.0f} {r['peak_mb']:>8.0f} {r['seconds']:>6.1f}", flush=True)
    a_mb, b_mb = _fit(train_rows)
    print(f"{'predict':<8} {'size':>11} {'base MB':>8} {'peak MB':>8} {'s':>6}", flush=True)
    for size in grid["predict"]:
        r = _run_child(["predict", str(size), str(PREDICT_CLASSES)])
        r.update(size=size)
        pred_rows.append(r)
        tiled = " (tiled)" if r["tiled"] else ""
        print(f"{'':<8} {size:>5}x{size:<5} {r['base_mb']:>8.0f} {r['peak_mb']:>8.0f} {r['seconds']:>6.1f}{tiled}", flush=True)
    worst = max(abs(r["peak_mb"] - (a_mb + b_mb * r["batch"] * r["crop"] ** 2 / 1e6)) for r in train_rows)
    print(f"training peak RSS ~ {a_mb:.0f} MB + {b_mb:.0f} MB x batch x crop^2 / 1e6  (largest misfit {worst:.0f} MB)")
    total = time.perf_counter() - t_all
    print(f"total {total:.0f} s")
    res = {"profile": "quick" if a.quick else "full", "command": _common.command_line("memory.py", argv),
           "machine": machine(1), "date": time.strftime("%Y-%m-%d"), "seconds": total,
           "load": [load0, _common.load_avg()], "steps": STEPS, "train": train_rows, "predict": pred_rows,
           "fit": {"a_mb": a_mb, "b_mb_per_mpx": b_mb, "worst_mb": worst}}
    json_path = a.json or (JSON_DEFAULT if a.record else None)
    if json_path:
        doc = json.loads(Path(json_path).read_text()) if Path(json_path).is_file() else {}
        doc[res["profile"]] = res
        _common.save_json(json_path, doc)
        if a.record:
            _common.write_section(section(json.loads(Path(json_path).read_text()), json_path), MARK_START, MARK_END)
            print(f"updated {json_path} and the memory section of {_common.RESULTS}")
    return res


def _profile_part(res: dict) -> list[str]:
    """Tables and computed reading of one profile's result."""
    import statistics

    f = res["fit"]
    lines = [
        f"`{res['command']}` ({res['seconds']:.0f} s; {res['machine']}; {res['date']}). "
        + _common.load_sentence(res.get("load")),
        "",
        f"Training: `segtune.train`, Unet + EfficientNet-Lite0, `full`, AdamW, ce+dice, {res['steps']} steps on "
        "512x512 generated images, validation and final evaluation included.",
        "",
        "| crop | batch | batch x crop^2 (Mpx) | base MB | peak MB | s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in res["train"]:
        mpx = r["batch"] * r["crop"] ** 2 / 1e6
        lines.append(f"| {r['crop']} | {r['batch']} | {mpx:.2f} | {r['base_mb']:.0f} | {r['peak_mb']:.0f} | {r['seconds']:.1f} |")
    lines += [
        "",
        f"Fit: training peak RSS ~ {f['a_mb']:.0f} MB + {f['b_mb_per_mpx']:.0f} MB x batch x crop^2 / 1e6 "
        f"(least squares over the {len(res['train'])} rows; largest misfit {f['worst_mb']:.0f} MB).",
        "",
        f"Prediction: `Predictor.predict_paths` on one PNG, {PREDICT_CLASSES} classes, tiled above 2048x2048 pixels.",
        "",
        "| image | tiled | base MB | peak MB | s |",
        "|---|---|---:|---:|---:|",
    ]
    for r in res["predict"]:
        lines.append(f"| {r['size']}x{r['size']} | {'yes' if r['tiled'] else 'no'} | {r['base_mb']:.0f} | "
                     f"{r['peak_mb']:.0f} | {r['seconds']:.1f} |")
    base = statistics.median(r["base_mb"] for r in res["train"])
    untiled = [r for r in res["predict"] if not r["tiled"]]
    tiled = [r for r in res["predict"] if r["tiled"]]
    per_mpx = [(r["peak_mb"] - r["base_mb"]) / (r["size"] ** 2 / 1e6) for r in untiled]
    reading = [f"the process with the libraries imported and a model built holds {base:.0f} MB (median base)",
               f"training adds {f['a_mb'] - base:.0f} MB fixed (fit intercept minus base: model, optimiser state, "
               f"Lightning, data) plus {f['b_mb_per_mpx']:.0f} MB per megapixel of batch x crop^2 (activations "
               "kept for the backward pass); a real data set's decoded-image RAM cache (`data.cache_max_gb`) "
               "comes on top"]
    if per_mpx:
        big = max(untiled, key=lambda r: r["size"])
        reading.append(f"untiled prediction costs {min(per_mpx):.0f}-{max(per_mpx):.0f} MB per megapixel above its "
                       f"base ({big['size']}^2: +{big['peak_mb'] - big['base_mb']:.0f} MB, peak {big['peak_mb']:.0f} MB)")
        for t in tiled:
            cmp = "less" if t["peak_mb"] < big["peak_mb"] else "more"
            reading.append(f"the tiled {t['size']}^2 image ({t['size'] ** 2 / 1e6:.1f} Mpx) peaked at "
                           f"{t['peak_mb']:.0f} MB, {cmp} than the untiled {big['size']}^2")
    lines += ["", "Reading it: " + "; ".join(reading) + "."]
    return lines


def section(doc: dict, json_path: Path | None = None) -> str:
    """The RESULTS.md section from the JSON (one part per profile present; full first)."""
    src = f" Raw results: `{_common.rel(json_path)}`." if json_path else ""
    lines = ["## Memory", "",
             "Peak RSS (VmHWM) of a fresh process per row; *base* is the RSS with the libraries imported and a "
             "model built." + src, ""]
    for name in ("full", "quick"):
        if name in doc:
            lines += [f"**{'Full grid' if name == 'full' else 'Quick grid'}.**", "", *_profile_part(doc[name]), ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    main()
