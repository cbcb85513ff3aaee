"""Evaluation and prediction throughput of segtune against a bare ``torch.inference_mode()`` loop.

Same model (Unet + EfficientNet-Lite0, 11 classes, weights as saved in a run folder), same
images (the first ``--images`` CamVid val images, 480x360; a generated stand-in without
``../shared/data/camvid``), one process on the CPU (``--threads``, default 1: see
``benchmarks/overhead.py`` about oversubscribed shared cores). Images/s, alternating the
contenders for ``--rounds`` rounds (the order rotates each round); ratios are medians of the
per-round ratios.

* **evaluate** (decoding included for every contender): ``segtune.evaluate(run, data)``, the
  ``segtune evaluate`` path: reads PNG image + mask pairs, normalises, pads to a multiple of 32
  (480x384), batches of 4 (on a CPU forwarded one image at a time, see
  :func:`segtune.engine.evaluate.forward_chunked`), argmax, one confusion matrix, metrics. Its image loop
  (:func:`~segtune.engine.evaluate.evaluate_model` with the loader ``evaluate`` builds, i.e.
  decode + transform + forward + confusion matrix) is timed apart from the whole call, which
  also loads and hash-checks the model and writes metrics.json and per_class_iou.png.
  *bare*: PIL decode of image and mask, normalise, zero / ignore padding to 480x384, batches
  of 4, forward under ``torch.inference_mode()``, argmax and a ``torch.bincount`` confusion
  matrix.
* **predict** (decoding and PNG writing included for every contender):
  ``Predictor.predict_paths(files, out)`` (the ``segtune predict`` path; model loading timed
  apart) vs *bare*: PIL decode, normalise, reflect-pad to a multiple of 32, forward one image,
  crop, argmax, write an 8-bit palette PNG with PIL.

Each bare loop runs twice: with NCHW tensors (what a hand-written loop does) and with NHWC
(channels-last) weights and inputs, which segtune uses on a CPU. segtune / bare is what a
user sees; segtune / bare NHWC is segtune's own overhead.

    python benchmarks/throughput.py --quick            # ~1-2 minutes
    python benchmarks/throughput.py                    # ~5-8 minutes
    python benchmarks/throughput.py --write-results    # also benchmarks/throughput.json + its RESULTS.md section
    python benchmarks/throughput.py --from-json benchmarks/throughput.json   # the section from the JSON alone
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, also when loaded from the tests
import _common  # noqa: E402
from _common import REPO  # noqa: E402

CAMVID_DIR = REPO.parent / "shared" / "data" / "camvid"
MARK_START, MARK_END = "<!-- throughput:start -->", "<!-- throughput:end -->"
NUM_CLASSES, IGNORE = 11, 11
CAMVID_COLORS = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
                 [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
PROFILES = {"quick": {"images": 6, "rounds": 2, "batch": 4}, "default": {"images": 40, "rounds": 3, "batch": 4}}


# ----------------------------------------------------------------------------- fixtures
def make_data(workdir: Path, n: int) -> tuple[Path, str]:
    """A data set folder whose val split holds ``n`` images (CamVid symlinks or generated)."""
    import numpy as np
    from PIL import Image

    root = workdir / "data"
    img_dir, ann_dir = root / "val", root / "valannot"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    if CAMVID_DIR.is_dir():
        names = sorted(os.listdir(CAMVID_DIR / "val"))[:n]
        for name in names:
            (img_dir / name).symlink_to(CAMVID_DIR / "val" / name)
            (ann_dir / name).symlink_to(CAMVID_DIR / "valannot" / name)
        label = f"CamVid val, first {len(names)} images (480x360)"
    else:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:360, 0:480]
        for i in range(n):  # smooth images (PNG-decodes like a photo), blocky masks
            img = np.stack([(xx + 7 * i) % 256, (yy + 3 * i) % 256, (xx + yy) % 256], -1).astype(np.uint8)
            mask = rng.integers(0, NUM_CLASSES + 1, (12, 16), dtype=np.uint8).repeat(30, 0).repeat(30, 1)
            Image.fromarray(img).save(img_dir / f"{i:04d}.png")
            Image.fromarray(mask).save(ann_dir / f"{i:04d}.png")
        label = f"generated 480x360 stand-in, {n} images (no ../shared/data/camvid)"
    classes = ", ".join(f"c{i}" for i in range(NUM_CLASSES))
    (root / "dataset.yaml").write_text(
        f"name: bench\nclasses: [{classes}]\nignore_index: {IGNORE}\nmask_format: index\n"
        "splits:\n  train: {images: val, masks: valannot}\n  val: {images: val, masks: valannot}\n"
    )
    return root, label


def make_run(workdir: Path) -> Path:
    """A run folder (model.safetensors + model.yaml) as segtune.train writes it."""
    import torch

    from segtune.engine.run import save_model
    from segtune.models import create_model

    torch.manual_seed(0)
    model = create_model("unet", "tf_efficientnet_lite0", num_classes=NUM_CLASSES, weights="none")
    run = workdir / "run"
    run.mkdir()
    meta = {
        "classes": [f"c{i}" for i in range(NUM_CLASSES)], "colors": CAMVID_COLORS, "ignore_index": IGNORE,
        "normalization": {"mean": list(model.mean), "std": list(model.std)}, "input": {"pad_multiple": 32},
        "strategy": "full",
    }
    save_model(run, model, meta)
    return run


# ----------------------------------------------------------------------------- bare loops
def _bare_model(run: Path, channels_last: bool) -> tuple[Any, Any, Any]:
    import torch

    from segtune.engine.run import load_model

    model, meta = load_model(run)
    model.eval()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    mean = torch.tensor(meta["normalization"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["normalization"]["std"]).view(1, 3, 1, 1)
    return model, mean, std


def bare_evaluate(model: Any, mean: Any, std: Any, pairs: list[tuple[Path, Path]], batch: int, channels_last: bool) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    cm = torch.zeros(NUM_CLASSES * NUM_CLASSES, dtype=torch.int64)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(pairs), batch):
            xs, ys = [], []
            for ip, mp in pairs[k : k + batch]:
                img = torch.from_numpy(np.asarray(Image.open(ip).convert("RGB")).copy())
                x = (img.permute(2, 0, 1)[None].float().div_(255) - mean) / std
                y = torch.from_numpy(np.asarray(Image.open(mp)).astype(np.int64))[None]
                h, w = x.shape[-2:]
                ph, pw = (-h) % 32, (-w) % 32
                xs.append(F.pad(x, (0, pw, 0, ph)))
                ys.append(F.pad(y, (0, pw, 0, ph), value=IGNORE))
            x, y = torch.cat(xs), torch.cat(ys)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            pred = model(x).argmax(1)
            keep = y != IGNORE
            cm += torch.bincount(y[keep] * NUM_CLASSES + pred[keep], minlength=NUM_CLASSES**2)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "ips": len(pairs) / dt, "cm": cm.view(NUM_CLASSES, NUM_CLASSES)}


def bare_predict(model: Any, mean: Any, std: Any, files: list[Path], out: Path, channels_last: bool) -> dict[str, Any]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    palette = np.zeros((256, 3), np.uint8)
    palette[:NUM_CLASSES] = CAMVID_COLORS
    palette_list = palette.flatten().tolist()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for f in files:
            img = torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy())
            x = (img.permute(2, 0, 1)[None].float().div_(255) - mean) / std
            h, w = x.shape[-2:]
            x = F.pad(x, (0, (-w) % 32, 0, (-h) % 32), mode="reflect")
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            mask = model(x)[0, :, :h, :w].argmax(0).to(torch.uint8).numpy()
            p = Image.fromarray(mask)
            p.putpalette(palette_list)
            p.save(out / f"{f.stem}.png")
    dt = time.perf_counter() - t0
    return {"seconds": dt, "ips": len(files) / dt}


# ----------------------------------------------------------------------------- segtune
def segtune_evaluate(run: Path, data: Path, batch: int, out: Path, n: int) -> dict[str, Any]:
    import importlib

    ev = importlib.import_module("segtune.engine.evaluate")  # the module (segtune.engine.evaluate is also a function)

    inner: dict[str, float] = {}
    real = ev.evaluate_model

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            inner["s"] = time.perf_counter() - t

    ev.evaluate_model = timed  # evaluate() looks it up in its module at call time
    try:
        t0 = time.perf_counter()
        m = ev.evaluate(run, data, split="val", out=out, batch_size=batch, device="cpu", progress=False)
        dt = time.perf_counter() - t0
    finally:
        ev.evaluate_model = real
    return {"seconds": inner["s"], "ips": n / inner["s"], "total_s": dt, "total_ips": n / dt,
            "cm": m["confusion_matrix"]}


def segtune_predict(run: Path, files: list[Path], out: Path) -> dict[str, Any]:
    from segtune.inference import Predictor

    t0 = time.perf_counter()
    pred = Predictor.from_run(run, device="cpu")
    t1 = time.perf_counter()
    pred.predict_paths(files, out, overwrite=True, progress=False)
    t2 = time.perf_counter()
    return {"seconds": t2 - t1, "ips": len(files) / (t2 - t1), "load_s": t1 - t0}


# ----------------------------------------------------------------------------- bench
def bench(images: int, rounds: int, batch: int, log: Any = print) -> dict[str, Any]:
    import numpy as np

    work = Path(tempfile.mkdtemp(prefix="segtune-throughput-"))
    data, label = make_data(work, images)
    run = make_run(work)
    files = sorted((data / "val").iterdir())
    pairs = [(f, data / "valannot" / f.name) for f in files]
    models = {cl: _bare_model(run, cl) for cl in (False, True)}
    # warm-up: one image through each path
    bare_evaluate(*models[False], pairs[:1], 1, False)
    bare_evaluate(*models[True], pairs[:1], 1, True)

    contenders = {
        "eval_bare": lambda: bare_evaluate(*models[False], pairs, batch, False),
        "eval_bare_nhwc": lambda: bare_evaluate(*models[True], pairs, batch, True),
        "eval_segtune": lambda: segtune_evaluate(run, data, batch, work / "eval", len(pairs)),
        "pred_bare": lambda: bare_predict(*models[False], files, work / "pred_bare", False),
        "pred_bare_nhwc": lambda: bare_predict(*models[True], files, work / "pred_bare_nhwc", True),
        "pred_segtune": lambda: segtune_predict(run, files, work / "pred_segtune"),
    }
    names = list(contenders)
    log(f"{label}; evaluate batch {batch}; {rounds} rounds, images/s")
    log(f"    {'round':>5} " + " ".join(f"{n:>15}" for n in names))
    rows = []
    for r in range(rounds):
        k = r % len(names)
        got = {name: contenders[name]() for name in names[k:] + names[:k]}
        rows.append({name: got[name] for name in names})
        log(f"    {r + 1:>5} " + " ".join(f"{got[n]['ips']:>15.3f}" for n in names))
    # same answers: segtune's confusion matrix equals the bare loop's (up to float ties)
    cm_bare = np.asarray(rows[-1]["eval_bare"]["cm"])
    cm_seg = np.asarray(rows[-1]["eval_segtune"]["cm"])
    agree = float(np.trace(np.minimum(cm_bare, cm_seg))) / max(1.0, float(np.trace(cm_bare)))

    def ratio(a: str, b: str) -> float:
        return _common.median([row[a]["ips"] / row[b]["ips"] for row in rows])

    res: dict[str, Any] = {
        "data": label, "images": len(files), "rounds": rounds, "batch": batch,
        "ips": {n: _common.median([row[n]["ips"] for row in rows]) for n in names},
        "eval_ratio": ratio("eval_segtune", "eval_bare"),
        "eval_ratio_nhwc": ratio("eval_segtune", "eval_bare_nhwc"),
        "eval_total_ratio": _common.median([row["eval_segtune"]["total_ips"] / row["eval_bare"]["ips"] for row in rows]),
        "eval_total_ips": _common.median([row["eval_segtune"]["total_ips"] for row in rows]),
        "pred_ratio": ratio("pred_segtune", "pred_bare"),
        "pred_ratio_nhwc": ratio("pred_segtune", "pred_bare_nhwc"),
        "pred_load_s": _common.median([row["pred_segtune"]["load_s"] for row in rows]),
        "eval_fixed_s": _common.median([row["eval_segtune"]["total_s"] - row["eval_segtune"]["seconds"] for row in rows]),
        "cm_agreement": agree,
        "per_round": [{n: row[n]["ips"] for n in names} for row in rows],
    }
    log(f"    {'median':>5} " + " ".join(f"{res['ips'][n]:>15.3f}" for n in names))
    log(f"evaluate: segtune / bare {res['eval_ratio']:.3f}, / bare NHWC {res['eval_ratio_nhwc']:.3f}; "
        f"whole evaluate() call / bare {res['eval_total_ratio']:.3f} (fixed {res['eval_fixed_s']:.2f} s: model load, "
        f"metrics.json, plot); correct-pixel agreement with bare {agree:.5f}")
    log(f"predict:  segtune / bare {res['pred_ratio']:.3f}, / bare NHWC {res['pred_ratio_nhwc']:.3f} "
        f"(model load {res['pred_load_s']:.2f} s apart)")
    shutil.rmtree(work, ignore_errors=True)
    return res


JSON_DEFAULT = HERE / "throughput.json"


def _section(res: dict[str, Any], json_path: Path | None = None) -> str:
    """The RESULTS.md section; every number in it comes from ``res`` (the JSON)."""
    ips = res["ips"]
    src = f"; raw results `{_common.rel(json_path)}`" if json_path else ""
    nhwc_eval = ips["eval_bare_nhwc"] / ips["eval_bare"]
    nhwc_pred = ips["pred_bare_nhwc"] / ips["pred_bare"]

    def word(x: float) -> str:
        return "faster than it" if x > 1.02 else ("slower than it" if x < 0.98 else "about as fast as it, within 2%")

    return "\n".join([
        "## Evaluation and prediction throughput",
        "",
        f"`{res['command']}` ({res['seconds']:.0f} s; {res['machine']}; {res.get('date', '?')}{src}). "
        + _common.load_sentence(res.get("load"))
        + f" Contenders alternate (order rotating) over {res['rounds']} rounds; medians. {res['data']}; "
        "Unet + EfficientNet-Lite0, 11 classes.",
        "",
        "| task | what is timed (same for every contender) | bare img/s | bare NHWC img/s | segtune img/s | "
        "segtune / bare | segtune / bare NHWC |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| evaluate | PNG decode of image + mask, normalise, pad to a multiple of 32, batches of {res['batch']}, forward, "
        f"argmax, confusion matrix | {ips['eval_bare']:.3f} | {ips['eval_bare_nhwc']:.3f} | "
        f"{ips['eval_segtune']:.3f} | **{res['eval_ratio']:.3f}** | **{res['eval_ratio_nhwc']:.3f}** |",
        f"| predict | PNG decode, normalise, reflect-pad, forward one image, argmax, palette PNG written | "
        f"{ips['pred_bare']:.3f} | {ips['pred_bare_nhwc']:.3f} | {ips['pred_segtune']:.3f} | "
        f"**{res['pred_ratio']:.3f}** | **{res['pred_ratio_nhwc']:.3f}** |",
        "",
        f"Both sides named: evaluating, segtune ran at {res['eval_ratio']:.2f}x the plain NCHW bare loop "
        f"({word(res['eval_ratio'])}) and {res['eval_ratio_nhwc']:.2f}x the channels-last bare loop "
        f"({word(res['eval_ratio_nhwc'])}); predicting, at {res['pred_ratio']:.2f}x the NCHW bare loop "
        f"({word(res['pred_ratio'])}) and {res['pred_ratio_nhwc']:.2f}x the NHWC one ({word(res['pred_ratio_nhwc'])}). "
        f"The NHWC bare loops ran at {nhwc_eval:.2f}x (evaluate) and {nhwc_pred:.2f}x (predict) the NCHW ones "
        "(medians of the rates).",
        "",
        "segtune evaluate = the image loop of `segtune.evaluate()` (`evaluate_model` over the loader it builds), "
        f"which on a CPU runs a batch of {res['batch']} large images as single-image forward passes "
        "(`forward_chunked`); the bare loops forward the whole batch, as a hand-written loop does. "
        f"The whole call also loads and hash-checks the model and writes metrics.json and per_class_iou.png "
        f"({res['eval_fixed_s']:.2f} s once per call; whole call over {res['images']} images: "
        f"{res['eval_total_ips']:.3f} img/s, {res['eval_total_ratio']:.3f}x the NCHW bare loop). segtune predict = "
        "`Predictor.predict_paths` (rename-atomic PNG writes without a per-file fsync; header pre-check of every "
        f"file); loading the run (`Predictor.from_run`, {res['pred_load_s']:.2f} s) is once per call and not in the "
        f"rate. segtune's and the bare loop's confusion matrices agree on {100 * res['cm_agreement']:.3f}% of the "
        "correctly classified pixels (the rest: float rounding between memory layouts).",
        "",
    ])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few images and rounds (about 1-2 minutes)")
    ap.add_argument("--images", type=int, help="number of val images")
    ap.add_argument("--rounds", type=int, help="alternating rounds")
    ap.add_argument("--batch", type=int, help="evaluation batch size (segtune evaluate's default is 4)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--write-results", action="store_true",
                    help="write the raw results JSON (--json, default benchmarks/throughput.json) and the "
                         "RESULTS.md section generated from it")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="measure nothing: rewrite the RESULTS.md section from a JSON of an earlier run")
    a = ap.parse_args(argv)
    if a.from_json:
        res = json.loads(a.from_json.read_text())
        _common.write_section(_section(res, a.from_json), MARK_START, MARK_END)
        return res

    import torch

    torch.set_num_threads(a.threads)
    src = str(REPO / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from segtune import _log

    _log.set_quiet(True)
    p = dict(PROFILES["quick" if a.quick else "default"])
    for k in ("images", "rounds", "batch"):
        if getattr(a, k) is not None:
            p[k] = getattr(a, k)
    t0 = time.perf_counter()
    machine = _common.machine(a.threads)
    print(machine, flush=True)
    load0 = _common.load_avg()
    res = bench(p["images"], p["rounds"], p["batch"], lambda s: print(s, flush=True))
    res.update(machine=machine, threads=a.threads, seconds=time.perf_counter() - t0,
               command=_common.command_line("throughput.py", argv), date=time.strftime("%Y-%m-%d"),
               load=[load0, _common.load_avg()], profile="quick" if a.quick else "default")
    print(f"total {res['seconds']:.0f} s", flush=True)
    json_path = a.json or (JSON_DEFAULT if a.write_results else None)
    if json_path:
        _common.save_json(json_path, res)
    if a.write_results:
        _common.write_section(_section(json.loads(Path(json_path).read_text()), json_path), MARK_START, MARK_END)
    return res


if __name__ == "__main__":
    main()
