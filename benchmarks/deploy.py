"""Deployment on a CPU: PyTorch eager vs ONNX fp32 vs ONNX INT8, teacher and distilled student.

CamVid val (all 101 images, 480x360, padded to 480x384 inside each backend and cropped back),
on ``--threads`` (default 2) intra-op threads, every backend in a fresh Python process that
reports its own peak RSS (``VmHWM``); ONNX processes never import torch.

Per backend: batch-1 latency (median and p95 over the 101 val images, from the decoded uint8
image to the (H, W) class mask: normalise, pad, forward, crop, argmax; file decoding not
timed), images/s at batch 8 (8 val images in one call, median of ``--batch-rounds`` calls after
one warm-up), val mIoU over all 101 images (one confusion matrix, mean over classes present in
the truth or the prediction, as ``segtune evaluate``), model size on disk, peak RSS.

Stage ``--prepare`` (skipped for what exists in ``--work``): trains the teacher with the segtune
API (Unet + tf_efficientnet_lite2, ImageNet weights, ``head`` strategy, random 256x256 crops +
flips of the full-resolution training images, batch 8, ``--steps`` optimiser steps, val during
training on 16 images), distils a student from it with ``segtune.distill.distill`` (Unet +
tf_efficientnet_lite0: a smaller encoder; same recipe and steps, labels + teacher's soft outputs),
and exports both with ``segtune.export.export_onnx`` (fp32, and INT8 calibrated on 32 CamVid
training images; the INT8 teacher twice: all ops quantised and ``Resize`` kept in float).

    python benchmarks/deploy.py --prepare --measure --write-results   # ~15 CPU minutes on 2 cores
    python benchmarks/deploy.py --measure --write-results             # reuse --work's models
    python benchmarks/deploy.py --from-json benchmarks/deploy.json    # the RESULTS.md section only
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, also when loaded from the tests
import _common  # noqa: E402

REPO = _common.REPO
JSON_DEFAULT = HERE / "deploy.json"
MARK_START, MARK_END = "<!-- deploy:start -->", "<!-- deploy:end -->"
CAMVID_YAML = REPO / "examples" / "camvid.yaml"
CAMVID = REPO.parent / "shared" / "data" / "camvid"
IGNORE = 11
TEACHER = ("unet", "tf_efficientnet_lite2")
STUDENT = ("unet", "tf_efficientnet_lite0")

# row name -> (backend, model file relative to --work)
ROWS: dict[str, tuple[str, str]] = {
    "teacher eager": ("eager", "teacher"),
    "teacher onnx fp32": ("onnx", "teacher/model.onnx"),
    "teacher onnx int8": ("onnx", "teacher/model.int8.onnx"),
    "teacher onnx int8 (Resize in float)": ("onnx", "teacher/model.int8-resize-float.onnx"),
    "student eager": ("eager", "student"),
    "student onnx fp32": ("onnx", "student/model.onnx"),
    "student onnx int8": ("onnx", "student/model.int8.onnx"),
}


# --------------------------------------------------------------------------- prepare
def _train_cfg(work: Path, steps: int) -> dict[str, Any]:
    return {
        "data": {"root": str(CAMVID_YAML), "crop_size": 256, "batch_size": 8, "max_val_images": 16},
        "model": {"arch": TEACHER[0], "encoder": TEACHER[1]},
        "strategy": {"name": "head"},
        "train": {"max_steps": steps, "epochs": 1000, "out": str(work), "name": "teacher", "progress": False,
                  "num_overlays": 0, "early_stopping": 0, "memory": 0, "seed": 0},
    }


def prepare(work: Path, steps: int, threads: int) -> dict[str, Any]:
    """Train the teacher, distil the student, export both (each step skipped when its output exists)."""
    import torch

    torch.set_num_threads(threads)
    _common.src_on_path()
    import segtune
    from segtune.distill import distill
    from segtune.export import export_onnx

    info: dict[str, Any] = json.loads((work / "prepare.json").read_text()) if (work / "prepare.json").is_file() else {}
    if not (work / "teacher" / "model.yaml").is_file():
        t0 = time.perf_counter()
        segtune.train(_train_cfg(work, steps))
        info["teacher_train_s"] = round(time.perf_counter() - t0, 1)
        _common.save_json(work / "prepare.json", info)
    if not (work / "student" / "model.yaml").is_file():
        t0 = time.perf_counter()
        distill(work / "teacher", CAMVID_YAML, student_arch=STUDENT[0], student_encoder=STUDENT[1],
                overrides={"train.max_steps": steps}, out=work, name="student", progress=False)
        info["student_train_s"] = round(time.perf_counter() - t0, 1)
        _common.save_json(work / "prepare.json", info)
    calib = CAMVID / "train"
    jobs = [("teacher/model.onnx", "teacher", False, None), ("teacher/model.int8.onnx", "teacher", True, ()),
            ("teacher/model.int8-resize-float.onnx", "teacher", True, ("Resize",)),
            ("student/model.onnx", "student", False, None), ("student/model.int8.onnx", "student", True, ())]
    for out, run, int8, float_ops in jobs:
        if (work / out).is_file():
            continue
        t0 = time.perf_counter()
        r = export_onnx(work / run, work / out, int8=int8, calibration=calib if int8 else None,
                        check_images=8, calibration_images=32, max_miou_drop=None, float_ops=float_ops,
                        threads=threads, progress=False)
        info.setdefault("exports", {})[out] = {**r.to_dict(), "export_s": round(time.perf_counter() - t0, 1)}
        print("\n".join(r.lines()), flush=True)
        _common.save_json(work / "prepare.json", info)
    return info


# --------------------------------------------------------------------------- child (one backend)
def _miou(cm: Any) -> tuple[float, list[float | None]]:
    import numpy as np

    tp = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - tp
    ious = [float(t / u) if u > 0 else None for t, u in zip(tp, union, strict=True)]
    present = [v for v in ious if v is not None]
    return float(np.mean(present)), ious


def _eager(path: Path, threads: int) -> tuple[Any, Any, Path]:
    import torch

    torch.set_num_threads(threads)
    from segtune.inference import Predictor
    from segtune.models.modelfile import load_model

    model, meta = load_model(path)
    pred = Predictor(model, meta, device="cpu")

    norm = meta["normalization"]
    mean, std = (torch.tensor(norm[k], dtype=torch.float32).view(1, 3, 1, 1) for k in ("mean", "std"))

    @torch.inference_mode()
    def batch(images: list[Any]) -> Any:
        import numpy as np

        x = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255 - mean) / std
        h, w = x.shape[-2:]
        x = torch.nn.functional.pad(x, (0, -w % 32, 0, -h % 32), mode="reflect")
        x = x.contiguous(memory_format=torch.channels_last)
        return pred.model(x)[..., :h, :w].argmax(1).numpy()

    return pred.predict, batch, path / "model.safetensors"


def _onnx(path: Path, threads: int) -> tuple[Any, Any, Path]:
    from segtune.export.runtime import OnnxSegmenter

    seg = OnnxSegmenter(path, threads=threads)
    return seg.predict, (lambda images: seg.logits(images).argmax(1)), path


def child(backend: str, path: Path, threads: int, batch_rounds: int, limit: int | None) -> dict[str, Any]:
    """Measure one backend in this (fresh) process; returns the row."""
    import numpy as np
    from PIL import Image

    _common.src_on_path()
    predict, batch, model_file = (_eager if backend == "eager" else _onnx)(path, threads)
    rss_loaded = _common.rss_mb("VmRSS")
    names = sorted(os.listdir(CAMVID / "val"))[:limit]
    read = lambda n: np.asarray(Image.open(CAMVID / "val" / n).convert("RGB"))  # noqa: E731
    for n in names[:2]:  # warm-up
        predict(read(n))
    cm = np.zeros((IGNORE, IGNORE), np.int64)
    times = []
    for n in names:
        image = read(n)
        t0 = time.perf_counter()
        mask = predict(image)
        times.append(time.perf_counter() - t0)
        truth = np.asarray(Image.open(CAMVID / "valannot" / n)).astype(np.int64)
        keep = truth != IGNORE
        cm += np.bincount(truth[keep] * IGNORE + mask[keep], minlength=IGNORE * IGNORE).reshape(IGNORE, IGNORE)
    eight = [read(n) for n in names[:8]]
    batch(eight)  # warm-up
    bt = []
    for _ in range(batch_rounds):
        t0 = time.perf_counter()
        batch(eight)
        bt.append(time.perf_counter() - t0)
    miou, ious = _miou(cm)
    ms = np.asarray(times) * 1000
    return {"backend": backend, "model": str(path), "images": len(names), "ms_median": float(np.median(ms)),
            "ms_p95": float(np.percentile(ms, 95)), "ips_batch1": 1000 / float(np.median(ms)),
            "ips_batch8": 8 / float(np.median(bt)), "miou": miou, "per_class_iou": ious,
            "size_mb": model_file.stat().st_size / 2**20, "rss_loaded_mb": rss_loaded,
            "rss_peak_mb": _common.rss_mb("VmHWM"), "torch_imported": "torch" in sys.modules}


def measure(work: Path, threads: int, batch_rounds: int, limit: int | None) -> dict[str, dict[str, Any]]:
    done = work / "rows.json"  # rows measured so far: an interrupted --measure continues
    rows: dict[str, dict[str, Any]] = json.loads(done.read_text()) if done.is_file() else {}
    for name, (backend, rel) in ROWS.items():
        path = work / rel
        if name in rows:
            continue
        if not path.exists():
            print(f"{name}: {path} missing, skipped (run --prepare)", flush=True)
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", backend, str(path), "--threads", str(threads),
               "--batch-rounds", str(batch_rounds)] + (["--limit", str(limit)] if limit else [])
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONWARNINGS": "ignore"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise SystemExit(f"{name}: child failed:\n{out.stderr[-3000:]}")
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        _common.save_json(done, rows)
        r = rows[name]
        print(f"{name:38s} {r['ms_median']:7.1f} ms (p95 {r['ms_p95']:.1f})  b8 {r['ips_batch8']:5.2f} img/s  "
              f"mIoU {100 * r['miou']:.2f}  {r['size_mb']:.1f} MB  peak RSS {r['rss_peak_mb']:.0f} MB", flush=True)
    return {n: rows[n] for n in ROWS if n in rows}


# --------------------------------------------------------------------------- report
def goals(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's goals, each with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    base = rows.get("teacher eager")
    if not base:
        return out

    def add(goal: str, value: float, ok: bool) -> None:
        out.append({"goal": goal, "value": round(value, 3), "met": bool(ok)})

    for name, speed, loss in (("teacher onnx int8", 2.0, 1.0), ("student onnx int8", 4.0, 3.0)):
        r = rows.get(name)
        if r:
            s = base["ms_median"] / r["ms_median"]
            d = 100 * (base["miou"] - r["miou"])
            add(f"{name}: >= {speed:g}x faster than teacher eager (batch-1 median)", s, s >= speed)
            add(f"{name}: <= {loss:g} mIoU points lost vs teacher eager", d, d <= loss)
    r = rows.get("student onnx int8")
    if r:
        add("student onnx int8: >= 10 images/s at batch 1", r["ips_batch1"], r["ips_batch1"] >= 10)
    return out


def section(doc: dict[str, Any], json_path: Path | None = None) -> str:
    """The RESULTS.md section, from the JSON alone."""
    rows, base = doc["rows"], doc["rows"].get("teacher eager")
    lines = ["## Deploy: PyTorch eager vs ONNX fp32 vs ONNX INT8 (teacher and distilled student)", "",
             f"`{doc['command']}` ({doc['date']}; {doc['machine']}; {doc['threads']} threads per backend). "
             f"CamVid val, {next(iter(rows.values()))['images']} images at 480x360; every row a fresh process "
             "(ONNX rows never import torch). " + _common.load_sentence(doc.get("load")), "",
             f"Teacher: {doc['teacher']}. Student: {doc['student']}."
             + (f" Raw results: `{_common.rel(json_path)}`." if json_path else ""), "",
             "| backend | batch-1 median ms | p95 ms | img/s batch 1 | img/s batch 8 | speed-up vs eager | val mIoU | "
             "change (points) | size MB | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        sp = base["ms_median"] / r["ms_median"] if base else float("nan")
        ch = 100 * (r["miou"] - base["miou"]) if base else float("nan")
        lines.append(f"| {name} | {r['ms_median']:.1f} | {r['ms_p95']:.1f} | {r['ips_batch1']:.2f} | "
                     f"{r['ips_batch8']:.2f} | {sp:.2f}x | {100 * r['miou']:.2f} | {ch:+.2f} | {r['size_mb']:.1f} | "
                     f"{r['rss_peak_mb']:.0f} |")
    lines += ["", "Goals (from the issue):", ""]
    lines += [f"- {g['goal']}: {g['value']:g} -> **{'met' if g['met'] else 'not met'}**" for g in doc["goals"]]
    if doc.get("notes"):
        lines += ["", *doc["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def _describe(prep: dict[str, Any], steps: int) -> tuple[str, str]:
    t = (f"{TEACHER[0]} + {TEACHER[1]} (ImageNet), head strategy, {steps} steps of batch 8 random 256x256 crops "
         f"of full-resolution training images, trained in {prep.get('teacher_train_s', float('nan')):.0f} s")
    s = (f"{STUDENT[0]} + {STUDENT[1]} distilled from it (`segtune.distill.distill`, same recipe and steps), "
         f"trained in {prep.get('student_train_s', float('nan')):.0f} s")
    return t, s


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--prepare", action="store_true", help="train the teacher and student, export them")
    ap.add_argument("--measure", action="store_true", help="measure every backend present in --work")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "deploy-bench", help="models folder")
    ap.add_argument("--steps", type=int, default=150, help="optimiser steps of teacher and student")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, help="only the first N val images (default all 101)")
    ap.add_argument("--write-results", action="store_true", help="write --json and the RESULTS.md section")
    ap.add_argument("--json", type=Path, default=JSON_DEFAULT)
    ap.add_argument("--from-json", type=Path, metavar="FILE", help="measure nothing: the section from FILE")
    ap.add_argument("--child", nargs=2, metavar=("BACKEND", "PATH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child[0], Path(a.child[1]), a.threads, a.batch_rounds, a.limit)))
        return {}
    if a.from_json:
        doc = json.loads(a.from_json.read_text())
        _common.write_section(section(doc, a.from_json), MARK_START, MARK_END)
        return doc
    a.work.mkdir(parents=True, exist_ok=True)
    load = [_common.load_avg()]
    prep = prepare(a.work, a.steps, a.threads) if a.prepare else {}
    if not a.measure:
        return prep
    prep = prep or (json.loads((a.work / "prepare.json").read_text()) if (a.work / "prepare.json").is_file() else {})
    rows = measure(a.work, a.threads, a.batch_rounds, a.limit)
    load.append(_common.load_avg())
    teacher, student = _describe(prep, a.steps)
    doc = {"command": _common.command_line("deploy.py", argv), "date": datetime.date.today().isoformat(),
           "machine": _common.machine(a.threads), "threads": a.threads, "load": load, "teacher": teacher,
           "student": student, "prepare": prep, "rows": rows, "goals": goals(rows), "notes": []}
    print(section(doc))
    if a.write_results:
        _common.save_json(a.json, doc)
        _common.write_section(section(doc, a.json), MARK_START, MARK_END)
    return doc


if __name__ == "__main__":
    main()
