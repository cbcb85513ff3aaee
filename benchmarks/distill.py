"""Distillation on CamVid: a small student with KD from a larger teacher vs the same student on labels alone.

The protocol (one seed, CamVid scaled, every run at the same optimiser-step budget):

1. **teacher**: ``segtune.train`` of Unet + EfficientNet-Lite2 on all CamVid train labels
   (segtune's defaults: strategy ``head``, LR 3e-3, ce+dice with median class weights);
2. **kd**: ``segtune.distill.distill`` of a student (LinkNet + EfficientNet-Lite0, 3.1 M parameters,
   and Unet + EfficientNet-Lite0, 5.2 M, against the teacher's 6.7 M) that gets the labels
   of a seeded subset of the train images (``data.max_train_images``) and the other train images
   as ``--unlabelled`` (temperature 2, alpha 0.5, the defaults);
3. **labels**: the same student with the same config (the teacher's, architecture and encoder
   replaced), the same labelled subset, budget and seed, trained with ``segtune.train`` on the
   labels alone.

Both students are scored by their run's final evaluation on the whole CamVid val split (101
images). No validation during training (``train.val_every`` above the run length): each run keeps
its last weights, so no run picks its checkpoint on val.

    python benchmarks/distill.py --quick                    # end-to-end check (a few steps)
    python benchmarks/distill.py --write-results            # the measurement (~10 CPU minutes)
    python benchmarks/distill.py --report-only --write-results
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402

CAMVID = HERE.parents[1] / "shared" / "data" / "camvid"
JSON_DEFAULT = HERE / "distill.json"
START, END = "<!-- distill:start -->", "<!-- distill:end -->"
TITLE = "## Distillation (distill)"
SEED = 0
TEACHER = ("unet", "tf_efficientnet_lite2")
#: students, each trained twice (KD / labels alone): a lighter decoder + smaller encoder, and the
#: teacher's architecture with the smaller encoder
STUDENTS = (("linknet", "tf_efficientnet_lite0"), ("unet", "tf_efficientnet_lite0"))

PROFILES: dict[str, dict[str, Any]] = {
    "full": {"scale": 0.5, "crop": 128, "batch": 8, "teacher_steps": 300, "student_steps": 300,
             "labelled": 46, "max_train": None, "max_val": None, "temperature": 2.0, "alpha": 0.5},
    "quick": {"scale": 0.25, "crop": 64, "batch": 4, "teacher_steps": 3, "student_steps": 3,
              "labelled": 4, "max_train": 12, "max_val": 4, "temperature": 2.0, "alpha": 0.5},
}


# =========================================================================== data
def scaled_camvid(dest: Path, prof: dict[str, Any]) -> Path:
    """CamVid train/val resized by ``scale`` (images bilinear, masks nearest) with a dataset.yaml;
    ``max_train`` / ``max_val``: the first files by name only."""
    import yaml
    from PIL import Image

    if (dest / "dataset.yaml").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    desc = yaml.safe_load((CAMVID / "dataset.yaml").read_text())
    for split, ann, limit in (("train", "trainannot", prof["max_train"]), ("val", "valannot", prof["max_val"])):
        names = sorted(os.listdir(CAMVID / split))[:limit]
        for folder, is_mask in ((split, False), (ann, True)):
            (tmp / folder).mkdir(parents=True)
            for name in names:
                im = Image.open(CAMVID / folder / name)
                size = (round(im.width * prof["scale"]), round(im.height * prof["scale"]))
                im.resize(size, Image.Resampling.NEAREST if is_mask else Image.Resampling.BILINEAR).save(tmp / folder / name)
    desc["name"] = f"camvid x{prof['scale']}"
    (tmp / "dataset.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


# =========================================================================== runs
def _fast(prof: dict[str, Any], steps: int) -> dict[str, Any]:
    return {"train.max_steps": steps, "train.epochs": 10_000, "train.val_every": 10_000, "train.early_stopping": 0,
            "train.num_overlays": 0, "train.progress": False, "train.seed": SEED, "data.batch_size": prof["batch"],
            "data.crop_size": prof["crop"]}


def _row(kind: str, run_dir: Path, wall: float) -> dict[str, Any]:
    import yaml

    doc = json.loads((run_dir / "metrics.json").read_text())
    m, s = doc.get("metrics", doc), doc.get("summary", {})
    meta = yaml.safe_load((run_dir / "model.yaml").read_text())
    return {
        "kind": kind, "run": str(run_dir), "miou": m["miou"], "pixel_accuracy": m.get("pixel_acc"),
        "per_class": {c["name"]: c["iou"] for c in m.get("per_class", [])},
        "arch": meta["model"]["arch"], "encoder": meta["model"]["encoder"], "params": s.get("total_params"),
        "steps": s.get("steps"), "train_images": s.get("train_images"), "val_images": s.get("val_images"),
        "seconds": s.get("seconds"), "wall_seconds": round(wall, 1), "load": [_common.load_avg()],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_teacher(data: Path, out: Path, prof: dict[str, Any]) -> dict[str, Any]:
    import segtune

    cfg = {"data": {"root": str(data)}, "model": {"arch": TEACHER[0], "encoder": TEACHER[1]},
           "train": {"out": str(out), "name": "teacher", "overwrite": True}}
    t0 = time.perf_counter()
    run = segtune.train(cfg, overrides=_fast(prof, prof["teacher_steps"]))
    return _row("teacher", Path(run.dir), time.perf_counter() - t0)


def run_kd(teacher: Path, data: Path, out: Path, prof: dict[str, Any], student: tuple[str, str]) -> dict[str, Any]:
    from segtune.distill import distill

    name = f"kd-{student[0]}"
    shutil.rmtree(out / name, ignore_errors=True)
    t0 = time.perf_counter()
    run_dir = distill(teacher, data, student_arch=student[0], student_encoder=student[1],
                      unlabelled=data / "train", temperature=prof["temperature"], alpha=prof["alpha"],
                      overrides={**_fast(prof, prof["student_steps"]), "data.max_train_images": prof["labelled"]},
                      out=out, name=name, progress=False)
    row = _row("kd", run_dir, time.perf_counter() - t0)
    row["counts"] = _read_yaml(run_dir / "distill.yaml")["counts"]
    return row


def run_labels(teacher: Path, data: Path, out: Path, prof: dict[str, Any], student: tuple[str, str]) -> dict[str, Any]:
    """The student on its labels alone: the teacher's config, architecture and encoder replaced
    (exactly what ``distill`` starts from), the same labelled subset, budget and seed."""
    import segtune
    from segtune.config import Config

    cfg = Config.from_yaml(teacher / "config.yaml")
    cfg.model.arch, cfg.model.encoder = student
    cfg.train.name, cfg.train.out, cfg.train.overwrite = f"labels-{student[0]}", str(out), True
    cfg.train.cache_features = "off"  # as the distillation (its teacher needs the images)
    cfg.data.root = str(data)
    t0 = time.perf_counter()
    run = segtune.train(cfg, overrides={**_fast(prof, prof["student_steps"]), "data.max_train_images": prof["labelled"]})
    return _row("labels", Path(run.dir), time.perf_counter() - t0)


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(path.read_text())


# =========================================================================== report
def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def report(doc: dict[str, Any]) -> str:
    prof = doc["profile"]
    teacher = next((r for r in doc["rows"] if r["kind"] == "teacher"), None)
    students = [r for r in doc["rows"] if r["kind"] != "teacher"]
    archs = list(dict.fromkeys((r["arch"], r["encoder"]) for r in students))
    names = ", ".join(f"{a} + {e}" for a, e in archs)
    reused = " (trained by an earlier session of the same command and profile, reused)" if teacher and teacher.get("reused") else ""
    lines = [
        TITLE, "",
        f"Command: `{doc['meta']['command']}` (raw results `benchmarks/distill.json`, {doc['meta']['updated']}). "
        f"Machine: {doc['meta']['machine']}. {_common.load_sentence(doc['meta'].get('load'))}", "",
        f"CamVid x{prof['scale']} (train 367 / val 101 images unless the profile limits them), crop {prof['crop']}, "
        f"batch {prof['batch']}, seed {prof['seed']}, one run each. Teacher: {TEACHER[0]} + {TEACHER[1]} on all "
        f"train labels, {prof['teacher_steps']} steps{reused}. Students ({names}): {prof['student_steps']} steps "
        f"each, labels of {prof['labelled']} train images (seeded subset); the KD student also sees the other train "
        f"images without labels (T {prof['temperature']:g}, alpha {prof['alpha']:g}). Per student the two runs share "
        "the config (the teacher's: strategy, LR, loss, class weights), the labelled images, the budget and the "
        "seed; no validation during training (last weights), scored on the whole val split.", "",
        "| run | model | parameters | labelled / unlabelled train images | val mIoU | pixel acc. | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in ([teacher] if teacher else []) + students:
        imgs = (f"{r['counts']['labelled']} / {r['counts']['unlabelled']}" if r.get("counts")
                else f"{r['train_images']} / 0")
        lines.append(f"| {r['kind']} | {r['arch']} + {r['encoder']} | {r['params'] or 0:,} | {imgs} | "
                     f"{_pct(r['miou'])} | {_pct(r.get('pixel_accuracy'))} | {r['seconds']:.0f} |")
    lines.append("")
    for arch, enc in archs:
        pair = {r["kind"]: r for r in students if (r["arch"], r["encoder"]) == (arch, enc)}
        if "kd" in pair and "labels" in pair:
            d = 100 * (pair["kd"]["miou"] - pair["labels"]["miou"])
            line = f"- {arch} + {enc}: KD minus labels alone **{d:+.1f} points** of val mIoU"
            if teacher and teacher["miou"] < pair["labels"]["miou"]:
                line += (f"; the student on its labels alone ({_pct(pair['labels']['miou'])}) already scored above "
                         f"the teacher it would imitate ({_pct(teacher['miou'])})")
            lines.append(line + ".")
    lines += ["", "One seed: the seed-to-seed spread of a run at this size was about 2 points in the fair comparison, "
                  "so a difference below that is not established."]
    if students:
        names_c = list(students[0]["per_class"])
        lines += ["", "| run | " + " | ".join(names_c) + " |", "|---|" + "---|" * len(names_c)]
        for r in ([teacher] if teacher else []) + students:
            label = r["kind"] if r["kind"] == "teacher" else f"{r['kind']} ({r['arch']})"
            lines.append(f"| {label} | " + " | ".join(_pct(r["per_class"].get(n)) for n in names_c) + " |")
    return "\n".join(lines) + "\n"


# =========================================================================== main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny profile: an end-to-end check, not a measurement")
    p.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/distill.json; "
                   "--quick: a temp file)")
    p.add_argument("--workdir", type=Path, default=None, help="data copy and runs (default: a temp folder)")
    p.add_argument("--write-results", action="store_true", help="write the section of benchmarks/RESULTS.md")
    p.add_argument("--report-only", action="store_true", help="no runs: the report from the JSON")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--reuse-teacher", action="store_true",
                   help="reuse WORKDIR/runs/teacher when an earlier session trained it (same profile)")
    a = p.parse_args(argv)
    name = "quick" if a.quick else "full"
    prof = {**PROFILES[name], "name": name, "seed": SEED}
    json_path = a.json or (Path(tempfile.gettempdir()) / "distill-quick.json" if a.quick else JSON_DEFAULT)
    if a.report_only:
        doc = json.loads(json_path.read_text())
    else:
        doc = measure(prof, a, argv)
        _common.save_json(json_path, doc)
    text = report(doc)
    print(text)
    if a.write_results:
        _common.write_section(text, START, END)
    return doc


def measure(prof: dict[str, Any], a: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    _common.src_on_path()
    import torch

    from segtune import _log

    torch.set_num_threads(a.threads)
    _log.set_quiet(True)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="segtune-distill-"))
    load0 = _common.load_avg()
    data = scaled_camvid(work / f"camvid_x{prof['scale']}_{prof['name']}", prof)
    runs = work / "runs"
    if a.reuse_teacher and (runs / "teacher" / "model.yaml").is_file():
        teacher = _row("teacher", runs / "teacher", 0.0)  # trained by an earlier session with this workdir
        teacher["reused"] = True
    else:
        teacher = run_teacher(data, runs, prof)
    rows = [teacher]
    for student in STUDENTS:
        rows += [run_kd(Path(teacher["run"]), data, runs, prof, student),
                 run_labels(Path(teacher["run"]), data, runs, prof, student)]
    return {
        "profile": prof, "rows": rows,
        "meta": {"command": _common.command_line("distill.py", argv), "machine": _common.machine(a.threads),
                 "updated": _dt.date.today().isoformat(), "load": [load0, _common.load_avg()]},
    }


if __name__ == "__main__":
    main()
