"""Sample efficiency: val mIoU vs number of labelled training images, per transfer strategy.

CamVid (``../shared/data/camvid``, 11 classes, label 11 ignored): seeded training subsets of
23, 46, 92, 184 and 367 images (nested: the seeded shuffle is the same for every size), always
scored on the whole val split (101 images). For every size, each segtune strategy (head,
partial, full, discriminative, gradual, scratch) trains the default model (Unet + ImageNet
EfficientNet-Lite0) through ``segtune.train()`` with the defaults a user gets with
``--strategy NAME`` and nothing else (loss, class weights, augmentation, the strategy's default
learning rate and schedule: read back from each run's config.yaml and stored with its row), for
the same number of optimiser steps at the same batch size and crop. ``strategy: auto``'s pick
for each size is marked in the table. In the same table, the loop users write by hand
(``benchmarks/bare_loop.py``: same SMP model and weights, AdamW + one-cycle, crop + flip only)
with plain cross-entropy (``bare-ce``) and with median-frequency-weighted CE + Dice
(``bare-wce+dice``), same steps, batch and crop. Ablations (``head+nocw``, ``head+aug``, ...)
show what each default is worth.

Fairness rules: one resolution for everything (images and masks downscaled once by ``scale``
into a cache folder outside the repository; val is scored at that resolution); no validation
during training and no best-epoch pick (the final weights are scored, for segtune and the bare
loop alike), so no run picks its epoch on val (but
segtune's defaults were themselves chosen from coarse ablations scored on this val split: see
RESULTS.md); one seed (``train.seed``) picks the subsets, the
initialisation and the data order. ``gradual`` unfreezes by epochs, so its schedule is scaled
to the budget: the head trains alone for the first ~20% of the steps, then one encoder stage
more every ~10% (segtune's defaults, 1 epoch each, would unfreeze everything within a few
steps on small subsets); the values used are stored with each row.

Outputs: a JSON of every row (``--json``, written after each run, so ``--resume`` continues an
interrupted grid), a plot (``--plot``: mIoU vs labelled images, one line per method), a
markdown table on stdout, and with ``--write-results`` the section "Sample efficiency (transfer
curve)" of ``benchmarks/RESULTS.md`` (replaced between its markers, other sections untouched).

    python benchmarks/transfer_curve.py --quick                     # end-to-end check, minutes
    python benchmarks/transfer_curve.py --resume --write-results    # the full grid
    python benchmarks/transfer_curve.py --report-only --write-results   # tables/plot from the JSON
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning. On a CPU shared with other jobs, spinning torch
# threads made training steps ~14x slower (measured: 2 threads, another training job running:
# 20 s/step spinning vs 1.5 s passive); results are unaffected. Only works before torch is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bare_loop.py, also when imported from the tests

CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"
RESULTS_MD = HERE / "RESULTS.md"
START, END = "<!-- transfer_curve:start -->", "<!-- transfer_curve:end -->"
SECTION_TITLE = "## Sample efficiency (transfer curve)"

STRATEGIES = ("head", "partial", "full", "discriminative", "gradual", "scratch")
BARE = {"bare-ce": "ce", "bare-wce+dice": "wce+dice"}
#: optional segtune variants (ablations), ``<strategy>+<flag>``: ``+nocw`` turns the default class
#: weights off (``loss.class_weights=none``); ``+aug`` adds the common heavier augmentation
#: (random rescale 0.5-2 + colour jitter 0.2, segtune's earlier default) to the default crop +
#: flip; everything else default
VARIANT_FLAGS = ("+nocw", "+aug")
VARIANTS = tuple(f"{s}{f}" for f in VARIANT_FLAGS for s in STRATEGIES)
METHODS = (*STRATEGIES, *VARIANTS, *BARE)


def auto_strategy(size: int) -> str:
    """The strategy segtune picks by itself (``strategy.name: auto``) for ``size`` training images."""
    from segtune.strategies.auto import choose_defaults

    return choose_defaults(size).strategy


PROFILES: dict[str, dict[str, Any]] = {
    # see RESULTS.md for how the budget was chosen (measured step times on 2 shared CPU cores)
    "full": {
        "sizes": [23, 46, 92, 184, 367],
        "methods": [*STRATEGIES, "head+nocw", "head+aug", *BARE],
        "scale": 0.5,  # 480x360 -> 240x180
        "crop": 128,  # 192 (the x0.5 analogue of segtune's default 384) costs 2.25x more per step
        "batch": 8,  # segtune's default
        "steps": 200,
        "max_val": None,  # always the full val split
    },
    "quick": {
        "sizes": [8, 23],
        "methods": ["head", "full", "scratch", "bare-ce"],
        "scale": 0.25,
        "crop": 96,
        "batch": 8,
        "steps": 10,
        "max_val": 16,
    },
}
SEED = 0
LR = 1e-3  # the bare loop's one-cycle max_lr (segtune runs use each strategy's default optim.lr)
# keys that must match for rows of an existing JSON to be reused or mixed in one table
PROFILE_KEYS = ("scale", "crop", "batch", "steps", "max_val", "seed", "lr")


# --------------------------------------------------------------------------- data
def prepare_data(src: Path, cache: Path, scale: float) -> Path:
    """A copy of the data set at ``scale`` (images bilinear + antialias, masks nearest), cached.

    Returns the dataset.yaml to train on (the source one when ``scale == 1``). The copy is
    built in a temporary folder and renamed, so an interrupted build is never reused.
    """
    from PIL import Image

    from segtune.data import find_pairs, load_dataset_spec

    if scale == 1:
        return src
    spec = load_dataset_spec(src)
    name = f"{spec.name or 'data'}-x{scale:g}"
    dest = cache / name
    if (dest / "dataset.yaml").is_file():
        return dest / "dataset.yaml"
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=cache))
    t0 = time.perf_counter()
    jobs: list[tuple[Path, Path, bool]] = []
    splits: dict[str, dict[str, str]] = {}
    for sname, split in spec.splits.items():
        if split.masks is None:
            continue
        pairs, _ = find_pairs(split.images, split.masks)
        splits[sname] = {"images": sname, "masks": f"{sname}annot"}
        (tmp / sname).mkdir()
        (tmp / f"{sname}annot").mkdir()
        for img, mask in pairs:
            img, mask = Path(img), Path(mask)
            jobs.append((img, tmp / sname / f"{img.stem}.png", False))
            jobs.append((mask, tmp / f"{sname}annot" / f"{img.stem}.png", True))

    def resize(job: tuple[Path, Path, bool]) -> None:
        path, out, is_mask = job
        with Image.open(path) as im:
            im.load()
            size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
            if is_mask:
                im.resize(size, Image.Resampling.NEAREST).save(out)
            else:
                im.convert("RGB").resize(size, Image.Resampling.BILINEAR).save(out)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(resize, jobs))
    import yaml

    desc = {
        "name": f"{spec.name or 'data'} (x{scale:g})",
        "classes": list(spec.classes),
        "colors": [list(c) for c in spec.colors] if spec.colors else None,
        "ignore_index": int(spec.ignore_index),
        "mask_format": spec.mask_format,
        "splits": splits,
    }
    if desc["colors"] is None:
        del desc["colors"]
    (tmp / "dataset.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
    try:
        tmp.rename(dest)
    except OSError:  # another process built it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"data: {len(jobs) // 2} pairs of {src} resized x{scale:g} into {dest} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return dest / "dataset.yaml"


# --------------------------------------------------------------------------- runs
def steps_per_epoch(n: int, batch: int) -> int:
    """Optimiser steps per epoch of segtune's training loader."""
    from segtune.strategies.auto import steps_per_epoch as per_epoch

    return per_epoch(n, batch)


def gradual_schedule(n: int, batch: int, steps: int) -> dict[str, int]:
    """``head_epochs`` / ``unfreeze_every`` spanning ~20% / ~10% of the step budget."""
    epochs = steps / steps_per_epoch(n, batch)
    return {"head_epochs": max(1, round(0.2 * epochs)), "unfreeze_every": max(1, round(0.1 * epochs))}


def _per_class(metrics: dict[str, Any]) -> dict[str, float | None]:
    return {c["name"]: c["iou"] for c in metrics["per_class"]}


def run_segtune(data: Path, size: int, method: str, prof: dict[str, Any], runs: Path,
                keep: bool, overrides: list[str] | None = None) -> dict[str, Any]:
    import segtune
    from segtune.config import Config, apply_overrides

    strategy, *flags = method.split("+")
    cfg = Config()
    if "nocw" in flags:
        cfg.loss.class_weights = "none"
    if "aug" in flags:
        cfg.data.scale_min, cfg.data.scale_max, cfg.data.color_jitter = 0.5, 2.0, 0.2
    cfg.data.root = str(data)
    cfg.data.crop_size = prof["crop"]
    cfg.data.batch_size = prof["batch"]
    cfg.data.max_train_images = size
    cfg.data.max_val_images = prof["max_val"]
    cfg.strategy.name = strategy
    settings: dict[str, Any] = {}
    if strategy == "gradual":
        g = gradual_schedule(size, prof["batch"], prof["steps"])
        cfg.strategy.head_epochs, cfg.strategy.unfreeze_every = g["head_epochs"], g["unfreeze_every"]
        settings.update(g)
    elif strategy == "partial":
        settings["freeze_stages"] = cfg.strategy.freeze_stages
    elif strategy == "discriminative":
        settings["encoder_lr_factor"] = cfg.strategy.encoder_lr_factor
    cfg.optim.lr = None  # the strategy's default learning rate, as a user gets it
    cfg.train.seed = prof["seed"]
    cfg.train.max_steps = prof["steps"]
    cfg.train.epochs = 1_000_000  # the step budget ends every run
    cfg.train.val_every = 1_000_000  # no validation during training: final weights are scored
    cfg.train.early_stopping = 0
    cfg.train.num_overlays = 0
    cfg.train.progress = False
    cfg.train.out = str(runs)
    cfg.train.name = f"{size}-{method.replace('+', '-')}"
    cfg.train.overwrite = True
    if overrides:  # exploration: --set applies to every segtune run of this invocation
        apply_overrides(cfg, overrides)
        settings["overrides"] = list(overrides)
    run = segtune.train(cfg)
    resolved = Config.from_yaml(run.dir / "config.yaml")  # what the run really used
    settings = {"loss": resolved.loss.name, "class_weights": resolved.loss.class_weights,
                "scale": [resolved.data.scale_min, resolved.data.scale_max],
                "color_jitter": resolved.data.color_jitter, "lr": resolved.optim.lr,
                "schedule": resolved.optim.schedule, "warmup_steps": resolved.optim.warmup_steps,
                **settings}
    if not keep:
        shutil.rmtree(run.dir / "checkpoints", ignore_errors=True)
        (run.dir / "model.safetensors").unlink(missing_ok=True)
    s = run.summary
    return {
        "kind": "segtune",
        "miou": run.metrics["miou"],
        "pixel_acc": run.metrics.get("pixel_acc"),
        "per_class": _per_class(run.metrics),
        "steps": s.get("steps"),
        "train_images": s.get("train_images"),
        "val_images": s.get("val_images"),
        "trainable_params": s.get("trainable_params"),
        "settings": settings,
    }


def run_bare(data: Path, size: int, method: str, prof: dict[str, Any]) -> dict[str, Any]:
    from bare_loop import train_bare

    r = train_bare(data, loss=BARE[method], steps=prof["steps"], batch_size=prof["batch"],
                   crop_size=prof["crop"], lr=prof["lr"], seed=prof["seed"], max_train_images=size,
                   max_val_images=prof["max_val"], log=lambda m: print(m, file=sys.stderr, flush=True))
    return {
        "kind": "bare",
        "miou": r["metrics"]["miou"],
        "pixel_acc": r["metrics"].get("pixel_acc"),
        "per_class": _per_class(r["metrics"]),
        "steps": r["steps"],
        "train_images": r["train_images"],
        "val_images": r["val_images"],
        "settings": {"loss": BARE[method], "optimizer": "adamw (wd 0.01)",
                     "schedule": "one-cycle", "max_lr": prof["lr"], "augmentation": "crop + hflip"},
    }


# --------------------------------------------------------------------------- JSON
def machine() -> dict[str, Any]:
    import torch

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu_cores": os.cpu_count(), "mem_gib": mem, "gpu": gpu, "arch": platform.machine(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def describe_machine(m: dict[str, Any]) -> str:
    gpu = f"GPU {m['gpu']}" if m.get("gpu") else "no GPU"
    return (f"{m['arch']}, {m['cpu_cores']} CPU cores, {m['mem_gib']:g} GiB RAM, {gpu}, {m['os']}, "
            f"Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads, "
            f"OMP_WAIT_POLICY={m.get('omp_wait_policy') or 'unset'})")


def load_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def save_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def same_profile(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in PROFILE_KEYS)


# --------------------------------------------------------------------------- report
def _fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}"


def _index(rows: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    return {(r["size"], r["method"]): r for r in rows}


def _order(rows: list[dict[str, Any]]) -> tuple[list[int], list[str]]:
    sizes = sorted({r["size"] for r in rows})
    present = {r["method"] for r in rows}
    methods = [m for m in METHODS if m in present]
    return sizes, methods


def best_segtune(rows: list[dict[str, Any]], size: int) -> dict[str, Any] | None:
    cands = [r for r in rows if r["size"] == size and r["kind"] == "segtune" and r["miou"] is not None]
    return max(cands, key=lambda r: r["miou"]) if cands else None


def tables(doc: dict[str, Any]) -> str:
    """Markdown: mIoU grid, wall-time grid, best strategy per size with per-class IoU."""
    rows = doc["rows"]
    if not rows:
        return "(no results yet)"
    idx = _index(rows)
    sizes, methods = _order(rows)
    out = ["val mIoU (%) on the full val split; **bold** = best segtune strategy at that size, "
           "*italic* = a bare loop beating it, † = the strategy segtune picks by itself "
           "(`strategy: auto`) for that many images.", ""]
    out.append("| labelled images | " + " | ".join(methods) + " |")
    out.append("|---:|" + "---:|" * len(methods))
    for n in sizes:
        best = best_segtune(rows, n)
        cells = []
        for m in methods:
            r = idx.get((n, m))
            if r is None:
                cells.append("")
                continue
            c = _fmt(r["miou"])
            if m == auto_strategy(n):
                c += "†"
            if best is not None and r is best:
                c = f"**{c}**"
            elif best is not None and r["kind"] == "bare" and (r["miou"] or 0) > best["miou"]:
                c = f"*{c}*"
            cells.append(c)
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    out += ["", "Wall time per run (s; training + final evaluation of the val split, as measured "
            "on the shared machine, see the load column of the JSON):", ""]
    out.append("| labelled images | " + " | ".join(methods) + " |")
    out.append("|---:|" + "---:|" * len(methods))
    for n in sizes:
        cells = [f"{idx[(n, m)]['seconds']:.0f}" if (n, m) in idx else "" for m in methods]
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    classes = list(next(iter(rows))["per_class"])
    out += ["", "Best segtune strategy per size: per-class val IoU (%):", ""]
    out.append("| images | strategy | mIoU | " + " | ".join(classes) + " | wall s |")
    out.append("|---:|---|---:|" + "---:|" * len(classes) + "---:|")
    for n in sizes:
        b = best_segtune(rows, n)
        if b is None:
            continue
        pcs = " | ".join(_fmt(b["per_class"].get(c), 0) for c in classes)
        out.append(f"| {n} | {b['method']} | {_fmt(b['miou'])} | {pcs} | {b['seconds']:.0f} |")
    return "\n".join(out)


def findings(doc: dict[str, Any]) -> list[str]:
    """Plain sentences: winners, transfer vs scratch, segtune vs the bare loops, recommendation."""
    rows = doc["rows"]
    idx = _index(rows)
    sizes, _ = _order(rows)
    lines: list[str] = []
    for n in sizes:
        b = best_segtune(rows, n)
        if b is None:
            continue
        parts = [f"{n} images: best {b['method']} {_fmt(b['miou'])}"]
        sc = idx.get((n, "scratch"))
        pre = [r for r in rows if r["size"] == n and r["method"] in STRATEGIES and r["method"] != "scratch"]
        if sc is not None and pre:
            bp = max(pre, key=lambda r: r["miou"])
            gain = bp["miou"] - sc["miou"]
            if gain > 0:
                parts.append(f"transfer helped: {bp['method']} +{100 * gain:.1f} points over scratch")
            else:
                parts.append(f"transfer did NOT help: scratch {_fmt(sc['miou'])} >= best pretrained "
                             f"({bp['method']} {_fmt(bp['miou'])})")
            worse = [r["method"] for r in pre if r["miou"] <= sc["miou"]]
            if worse and gain > 0:
                parts.append("not better than scratch: " + ", ".join(worse))
        for m in VARIANTS:
            r, base = idx.get((n, m)), idx.get((n, m.split("+")[0]))
            if r is not None and base is not None:
                parts.append(f"{m} {_fmt(r['miou'])} ({100 * (r['miou'] - base['miou']):+.1f} vs "
                             f"{base['method']})")
        auto = auto_strategy(n)
        d = idx.get((n, auto))
        for m in BARE:
            r = idx.get((n, m))
            if r is None:
                continue
            vs = []
            if d is not None:
                vs.append(f"segtune default ({auto}) {100 * (d['miou'] - r['miou']):+.1f}")
            vs.append(f"best {100 * (b['miou'] - r['miou']):+.1f}")
            parts.append(f"vs {m} ({_fmt(r['miou'])}): " + ", ".join(vs) + " points")
        lines.append("; ".join(parts) + ".")
    return lines


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    if not rows:
        return
    sizes, methods = _order(rows)
    idx = _index(rows)
    fig, ax = plt.subplots(figsize=(9, 5))
    for m in methods:
        pts = [(n, idx[(n, m)]["miou"]) for n in sizes if (n, m) in idx and idx[(n, m)]["miou"] is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        style = {"linestyle": "--", "marker": "s"} if m in BARE else {"linestyle": "-", "marker": "o"}
        if m == "scratch":
            style = {"linestyle": ":", "marker": "x", "color": "black"}
        ax.plot(xs, [100 * y for y in ys], label=m, **style)
    ax.set_xscale("log")
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(n) for n in sizes])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images (CamVid subsets)")
    ax.set_ylabel("val mIoU (%)")
    p = doc["profile"]
    ax.set_title(f"Unet + EfficientNet-Lite0, {p['steps']} steps x batch {p['batch']}, "
                 f"crop {p['crop']}, images x{p['scale']:g}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def deviation(doc: dict[str, Any]) -> list[str]:
    """A paragraph naming where these results differ from the full profile (or the grid is partial)."""
    p, full = doc["profile"], PROFILES["full"]
    diffs = [f"{k} {p.get(k)} instead of {full[k]}" for k in ("scale", "crop", "batch", "steps", "max_val")
             if p.get(k) != full[k]]
    have_sizes = sorted({r["size"] for r in doc["rows"]})
    have_methods = {r["method"] for r in doc["rows"]}
    if have_sizes != sorted(full["sizes"]):
        diffs.append(f"sizes {', '.join(map(str, have_sizes))} of {', '.join(map(str, full['sizes']))}")
    missing = [m for m in full["methods"] if m not in have_methods]
    if missing:
        diffs.append("no " + ", ".join(missing))
    if not diffs:
        return []
    return [f"**Smaller than the full profile** ({PROFILES['full']['steps']} steps, all sizes and methods): "
            + "; ".join(diffs) + ".", ""]


def segtune_settings_text(rows: list[dict[str, Any]]) -> str:
    """The settings the segtune rows really used (read back from each run's config.yaml)."""
    plain = [r for r in rows if r["kind"] == "segtune" and r["method"] in STRATEGIES and "loss" in r.get("settings", {})]
    if not plain:
        return "see the JSON"
    st = plain[0]["settings"]
    lrs: dict[float, list[str]] = {}
    for r in plain:
        ms = lrs.setdefault(r["settings"]["lr"], [])
        if r["method"] not in ms:
            ms.append(r["method"])
    lr_txt = "; ".join(f"{lr:g} for {', '.join(ms)}" for lr, ms in sorted(lrs.items()))
    lo, hi = st["scale"]
    aug = "crop + flip" if lo == hi == 1 else f"rescale {lo:g}-{hi:g} + crop + flip"
    if st.get("color_jitter"):
        aug += f" + colour jitter {st['color_jitter']:g}"
    return (f"loss {st['loss']}, class weights {st['class_weights']} (CE term), AdamW lr {lr_txt}, "
            f"{st['schedule']} with {st['warmup_steps']} warm-up steps, {aug}")


def section(doc: dict[str, Any], plot_path: Path) -> str:
    p, meta = doc["profile"], doc["meta"]
    rows = doc["rows"]
    n_expected = len(p.get("sizes", [])) * len(p.get("methods", []))
    total = sum(r["seconds"] for r in rows)
    loads = [r["load"][0] for r in rows if r.get("load")]
    rel = os.path.relpath(plot_path, RESULTS_MD.parent) if plot_path.is_absolute() else str(plot_path)
    cmds = "\n".join(f"    {c}" for c in meta.get("commands", []))
    parts = [
        SECTION_TITLE,
        "",
        f"Generated by `benchmarks/transfer_curve.py` ({len(rows)} of {n_expected} runs of the grid; "
        f"{total / 60:.0f} min of runs; last update {meta.get('updated', '?')}). Commands:",
        "",
        cmds,
        "",
        f"Machine: {describe_machine(meta['machine'])}. The 2 cores were shared with other jobs "
        f"while this ran (1-min load average at the start of the runs: median "
        f"{sorted(loads)[len(loads) // 2] if loads else float('nan'):.1f}, max "
        f"{max(loads) if loads else float('nan'):.1f}), so wall times are upper bounds.",
        "",
        f"Setup: CamVid train subsets (seed {p['seed']}, nested), scored on all "
        f"{'101' if p['max_val'] is None else p['max_val']} val images; images and masks downscaled "
        f"x{p['scale']:g} once{' (240x180 from 480x360)' if p['scale'] == 0.5 else ''}; every run "
        f"{p['steps']} optimiser steps "
        f"at batch {p['batch']}, crop {p['crop']}; no validation during training, the final weights "
        f"are scored (no best-epoch pick on val); one seed ({p['seed']}): for the spread between seeds see "
        "the fair comparison and the robustness section (three seeds each). segtune runs use its "
        "defaults as a user gets them, only the budget fixed "
        f"({segtune_settings_text(rows)}); `gradual`'s "
        "schedule is scaled to the budget (head alone for ~20% of the steps, then one stage more "
        "every ~10%). Bare loops (`benchmarks/bare_loop.py`): same model and ImageNet weights, "
        f"everything trainable, AdamW (wd 0.01) + one-cycle max_lr {p['lr']:g}, random crop "
        f"{p['crop']} + flip only; `bare-ce` plain cross-entropy, `bare-wce+dice` median-frequency "
        "weighted CE + SMP Dice.",
        "",
        "**Chosen and scored on the same split.** segtune's defaults used in this grid (class weights, "
        "crop + flip only, head LR 3e-3, `head` as the automatic strategy) were chosen from ablations "
        "scored on this same CamVid val split (see \"How segtune's defaults were chosen\" below), and "
        "the bare loops here were not tuned (one-cycle max_lr as listed, SMP's Dice, no class-weight "
        "choice). The table is kept as measured, but its gaps between segtune and the bare loops are "
        "not a fair test of the library: for that, see \"Fair comparison\" above "
        "(`benchmarks/fair_compare.json`), where the recipe was chosen on a split of CamVid train and the "
        "bare loops use the same strategy, loss and optimiser details.",
        "",
        *deviation(doc),
        tables(doc),
        "",
        f"![mIoU vs labelled images]({rel})",
        "",
        "Per size (points are mIoU x 100):",
        "",
        *[f"- {line}" for line in findings(doc)],
    ]
    return "\n".join(parts)


def write_results(doc: dict[str, Any], plot_path: Path, md: Path = RESULTS_MD) -> None:
    """Replace this benchmark's section of ``md`` (between its markers; the rest is kept)."""
    from _common import write_section

    write_section(section(doc, plot_path), START, END, md)


# --------------------------------------------------------------------------- main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="end-to-end check: sizes 8 23, head/full/scratch/bare-ce, 10 steps, x0.25, 16 val images")
    p.add_argument("--sizes", type=int, nargs="+", help="training subset sizes")
    p.add_argument("--strategies", nargs="+", choices=METHODS, metavar="METHOD",
                   help=f"methods to run: {', '.join(METHODS)}")
    p.add_argument("--steps", type=int, help="optimiser steps per run")
    p.add_argument("--scale", type=float, help="downscale factor of images and masks (full: 0.5)")
    p.add_argument("--crop", type=int, help="training crop side, a multiple of 32 (full: 128)")
    p.add_argument("--batch", type=int, help="training batch size (full: 8)")
    p.add_argument("--max-val", type=int, help="(--quick only) score on this many val images")
    p.add_argument("--resume", action="store_true",
                   help="skip (size, method) pairs already in the JSON")
    p.add_argument("--jobs", type=int, default=1, help="parallel runs (only 1: runs share 2 cores)")
    p.add_argument("--data", type=Path, default=CAMVID, help="data set (default ../shared/data/camvid)")
    p.add_argument("--json", type=Path, help="results JSON (default benchmarks/transfer_curve.json; "
                   "quick: <workdir>/quick/transfer_curve.json)")
    p.add_argument("--plot", type=Path, help="plot PNG (default next to the JSON, transfer_curve.png)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segtune-transfer-curve",
                   help="run folders (outside the repository)")
    p.add_argument("--data-cache", type=Path, default=Path(tempfile.gettempdir()) / "segtune-transfer-curve",
                   help="where the downscaled data set copy is kept")
    p.add_argument("--seed", type=int, default=SEED,
                   help=f"seed of the subsets, initialisation and data order (default {SEED}; another needs its own --json)")
    p.add_argument("--bare-lr", type=float, default=LR,
                   help=f"the bare loops' one-cycle max_lr (default {LR:g}; another value needs its own --json)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra segtune config override for every segtune run (exploration; recorded "
                        "in each row's settings; use a separate --json)")
    p.add_argument("--keep-runs", action="store_true", help="keep weights and checkpoints of each run")
    p.add_argument("--report-only", action="store_true", help="train nothing: tables and plot from the JSON")
    p.add_argument("--write-results", action="store_true", help="update the section in benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if a.jobs != 1:
        p.error("--jobs: only 1 is supported (each run already uses every core)")
    if a.max_val is not None and not a.quick:
        p.error("--max-val is only allowed with --quick (the benchmark always scores the full val split)")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    name = "quick" if a.quick else "full"
    base = PROFILES[name]
    prof = {
        "name": name,
        "sizes": a.sizes or base["sizes"],
        "methods": a.strategies or base["methods"],
        "scale": a.scale or base["scale"],
        "crop": a.crop or base["crop"],
        "batch": a.batch or base["batch"],
        "steps": a.steps or base["steps"],
        "max_val": a.max_val if a.max_val is not None else base["max_val"],
        "seed": a.seed,
        "lr": a.bare_lr,
    }
    json_path = a.json or (a.workdir / "quick" / "transfer_curve.json" if a.quick else HERE / "transfer_curve.json")
    plot_path = a.plot or json_path.with_name("transfer_curve.png")
    doc = load_json(json_path)
    if doc is not None and not same_profile(doc["profile"], prof):
        if a.report_only:
            prof = doc["profile"]
        else:
            raise SystemExit(
                f"{json_path} holds results of another profile "
                f"({ {k: doc['profile'].get(k) for k in PROFILE_KEYS} }); pass --json elsewhere or remove it")
    if doc is None:
        if a.report_only:
            raise SystemExit(f"{json_path}: no results to report")
        doc = {"profile": prof, "meta": {"commands": []}, "rows": []}
    elif not a.report_only:  # the union of the requested grids
        old = doc["profile"]
        prof["sizes"] = sorted(set(old.get("sizes", [])) | set(prof["sizes"]))
        prof["methods"] = [m for m in METHODS if m in set(old.get("methods", [])) | set(prof["methods"])]
    meta = doc["meta"]
    if not a.report_only:  # a report shows the machine the rows were measured on
        meta["machine"] = machine()
    if a.quick:
        print(f"quick profile: scored on {prof['max_val']} val images only, images x{prof['scale']:g}, "
              f"{prof['steps']} steps: checks the script end to end; the numbers mean nothing", flush=True)

    if not a.report_only:
        cmd = "python benchmarks/transfer_curve.py " + " ".join(sys.argv[1:] if argv is None else argv)
        if cmd not in meta["commands"]:
            meta["commands"].append(cmd)
        data = prepare_data(a.data, a.data_cache, prof["scale"])
        runs = a.workdir / "runs" / f"{name}-x{prof['scale']:g}-c{prof['crop']}-b{prof['batch']}-s{prof['steps']}"
        todo = [(n, m) for n in (a.sizes or base["sizes"]) for m in (a.strategies or base["methods"])]
        done = {(r["size"], r["method"]) for r in doc["rows"]}
        if a.resume:
            skipped = [t for t in todo if t in done]
            todo = [t for t in todo if t not in done]
            if skipped:
                print(f"--resume: {len(skipped)} run(s) already in {json_path}, {len(todo)} to go", flush=True)
        t_all = time.perf_counter()
        for i, (n, m) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {n} images, {m} ...", flush=True)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            if m in BARE:
                row = run_bare(data, n, m, prof)
            else:
                row = run_segtune(data, n, m, prof, runs, a.keep_runs, a.set)
            row = {"size": n, "method": m, **row, "seconds": round(time.perf_counter() - t0, 1),
                   "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
                   "date": _dt.datetime.now().isoformat(timespec="seconds")}
            doc["rows"] = [r for r in doc["rows"] if (r["size"], r["method"]) != (n, m)] + [row]
            doc["rows"].sort(key=lambda r: (r["size"], METHODS.index(r["method"])))
            doc["profile"] = prof
            meta["updated"] = _dt.date.today().isoformat()
            save_json(json_path, doc)
            try:
                plot(doc, plot_path)
            except Exception as e:  # noqa: BLE001 - a plot never loses results
                print(f"warning: could not draw {plot_path} ({e})", file=sys.stderr)
            el = time.perf_counter() - t_all
            print(f"[{i}/{len(todo)}] {n} images, {m}: val mIoU {_fmt(row['miou'], 2)} in "
                  f"{row['seconds']:.0f} s (load {load0:.1f}); {el / 60:.0f} min so far, "
                  f"~{el / i * (len(todo) - i) / 60:.0f} min to go", flush=True)
    plot(doc, plot_path)
    print()
    print(tables(doc))
    print()
    for line in findings(doc):
        print("- " + line)
    print(f"\nresults: {json_path}\nplot: {plot_path}")
    if a.write_results:
        write_results(doc, plot_path)
        print(f"updated: {RESULTS_MD}")
    return doc


if __name__ == "__main__":
    main()
