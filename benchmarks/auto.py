"""``auto`` against two well-written bare PyTorch loops, on two domains, chosen without peeking.

Domains (reduced resolution to fit a small CPU budget; the same for every contender):

* ``camvid``: CamVid (road scenes, close to ImageNet) downscaled x0.25 (480x360 -> 120x90), 11
  classes. Selection: CamVid train split once (seeded) into 267 selection-train / 100 held-out
  images (``fair_compare.selection_data``). Scoring: all 367 train images, CamVid val (101) untouched.
* ``membrane``: ISBI 2012 EM (30 grayscale 512x512 slices, 2 classes) downscaled x0.375 (192x192),
  masks 0/255 -> 0/1. Scoring: slices 0-23 train, the contiguous block 24-29 is the untouched test.
  Selection: slices 0-17 train, 18-23 held out.

Contenders (all: SMP Unet + ImageNet EfficientNet-Lite0 from ``segtune.models.create_model``, the
same optimiser steps ``--steps`` at the same batch ``--batch``, final weights scored):

* ``auto``: ``segtune.train`` with everything left to ``auto`` (strategy, LR, crop/augmentation
  from the data probe) except the step budget (the epoch count auto picks is not measured here).
* ``bare-frozen``: ``bare_loop.py``, encoder frozen (BatchNorm eval), class-weighted CE + SMP Dice
  (``wce+dice``), AdamW + one-cycle, random crop + flip; the crop is the default 384 scaled like
  the images (96 on CamVid, 144 on membrane).
* ``bare-ft``: the same loop fine-tuning everything, encoder LR 10x smaller.

Both bare loops' LR is swept over ``BARE_LRS`` on the selection split; auto's candidate recipes
(``head`` and ``discriminative`` at their LRs, crop/augmentation by auto) are measured on the same
selection split, which is the evidence auto's table follows (``SHIFTED_TABLE`` in
``segtune.strategies.auto``). Scoring: the selected settings on the untouched split, seeds 0-2.

    python benchmarks/auto.py --stage select      # selection runs (held-out parts of train)
    python benchmarks/auto.py --stage eval        # scoring runs (untouched splits), 3 seeds
    python benchmarks/auto.py --report-only --write-results
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # before torch loads
    os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402

_common.src_on_path()

START, END = "<!-- auto:start -->", "<!-- auto:end -->"
TITLE = "## auto: decisions from the data, against two bare loops"
JSON_DEFAULT = HERE / "auto.json"
SHARED = HERE.parents[1] / "shared/data"
DOMAINS = {
    "camvid": {"src": SHARED / "camvid", "scale": 0.25, "bare_crop": 96},
    "membrane": {"src": SHARED / "membrane", "scale": 0.375, "bare_crop": 144,
                 "test": list(range(24, 30)), "heldout": list(range(18, 24))},
}
BARE_LRS = (1e-3, 3e-3, 1e-2)
AUTO_CANDIDATES = (("head", 3e-3), ("discriminative", 1e-3), ("discriminative", 3e-3))
BARE = {"bare-frozen": {"strategy": "head"}, "bare-ft": {"strategy": "full", "encoder_lr_factor": 0.1}}
SEEDS = (0, 1, 2)
TABLE_SIZES = (10, 30, 100, 367, 2000)


# --------------------------------------------------------------------------- data
def _membrane_copy(src: Path, dest: Path, scale: float, train: list[int], val: list[int]) -> Path:
    """Downscaled membrane slices as index masks (0 membrane, 1 cell) split by slice number."""
    import numpy as np
    import yaml
    from PIL import Image

    if (dest / "dataset.yaml").is_file():
        return dest / "dataset.yaml"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for split, ids in (("train", train), ("val", val)):
        (tmp / split).mkdir()
        (tmp / f"{split}annot").mkdir()
        for i in ids:
            with Image.open(src / "images" / f"{i}.png") as im:
                size = (round(im.width * scale), round(im.height * scale))
                im.convert("L").resize(size, Image.Resampling.BILINEAR).save(tmp / split / f"{i:02d}.png")
            with Image.open(src / "masks" / f"{i}.png") as m:
                a = (np.array(m.convert("L").resize(size, Image.Resampling.NEAREST)) > 127).astype(np.uint8)
                Image.fromarray(a).save(tmp / f"{split}annot" / f"{i:02d}.png")
    desc = {"name": f"isbi2012-membrane x{scale:g} slices {train[0]}-{train[-1]} / {val[0]}-{val[-1]}",
            "classes": ["membrane", "cell"], "colors": [[0, 0, 0], [255, 255, 255]], "ignore_index": 255,
            "mask_format": "index",
            "splits": {"train": {"images": "train", "masks": "trainannot"},
                       "val": {"images": "val", "masks": "valannot"}}}
    (tmp / "dataset.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
    try:
        tmp.rename(dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "dataset.yaml"


def domain_data(domain: str, cache: Path) -> dict[str, Path]:
    """``{"select": yaml, "eval": yaml}``: the selection split and the scoring split."""
    d = DOMAINS[domain]
    if domain == "camvid":
        import fair_compare as fc
        import transfer_curve as tc

        data = Path(tc.prepare_data(d["src"], cache, d["scale"]))
        return {"select": Path(fc.selection_data(data)), "eval": data}
    test, held = d["test"], d["heldout"]
    first = min(test + held)
    train_eval = [i for i in range(30) if i not in test]
    train_sel = [i for i in range(first)]
    return {"select": _membrane_copy(d["src"], cache / f"membrane-x{d['scale']:g}-select", d["scale"], train_sel, held),
            "eval": _membrane_copy(d["src"], cache / f"membrane-x{d['scale']:g}-eval", d["scale"], train_eval, test)}


# --------------------------------------------------------------------------- runs
def run_segtune(data: Path, strategy: str, lr: float | None, seed: int, a: argparse.Namespace,
                runs: Path, name: str, tta: bool = False) -> dict[str, Any]:
    """One segtune run; ``strategy="auto"`` and ``lr=None`` leave the choice to auto. Crop and
    augmentation are always auto's; the step budget ends the run (no validation in between)."""
    import segtune
    from segtune.config import Config

    cfg = Config()
    cfg.data.root = str(data)
    cfg.data.batch_size = a.batch
    cfg.strategy.name = strategy
    cfg.optim.lr = lr
    cfg.train.seed = seed
    cfg.train.max_steps = a.steps
    cfg.train.epochs = 1_000_000
    cfg.train.val_every = 1_000_000
    cfg.train.early_stopping = 0
    cfg.train.num_overlays = 0
    cfg.train.memory = 0
    cfg.train.progress = False
    cfg.train.out = str(runs)
    cfg.train.name = name
    cfg.train.overwrite = True
    run = segtune.train(cfg)
    res = Config.from_yaml(run.dir / "config.yaml")
    extra = {}
    if tta:  # the same weights scored again with flip TTA (segtune evaluate --tta flip)
        m = segtune.evaluate(run.dir, data, progress=False, tta="flip")
        extra = {"miou_tta_flip": m["miou"], "miou_plain_recheck": m["tta"]["miou_plain"]}
    shutil.rmtree(run.dir, ignore_errors=True)
    return {**extra, "miou": run.metrics["miou"], "per_class": {c["name"]: c["iou"] for c in run.metrics["per_class"]},
            "settings": {"strategy": res.strategy.name, "lr": res.optim.lr, "augment": res.data.augment,
                         "crop": res.data.crop_size, "loss": res.loss.name, "class_weights": res.loss.class_weights,
                         "schedule": res.optim.schedule}}


def run_bare(data: Path, kind: str, lr: float, seed: int, crop: int, a: argparse.Namespace) -> dict[str, Any]:
    from bare_loop import train_bare

    r = train_bare(data, loss="wce+dice", schedule="one-cycle", steps=a.steps, batch_size=a.batch, crop_size=crop,
                   lr=lr, seed=seed, log=lambda m: print(m, file=sys.stderr, flush=True), **BARE[kind])
    return {"miou": r["metrics"]["miou"], "per_class": {c["name"]: c["iou"] for c in r["metrics"]["per_class"]},
            "settings": r["settings"]}


def probe_domain(data: Path, full_res: Path | None = None) -> dict[str, Any]:
    """The data probe of a domain's scoring split (and of the full-resolution source)."""
    from segtune.data import find_pairs, load_dataset_spec
    from segtune.models import create_model
    from segtune.strategies.probe import probe_data

    model = create_model("unet", "tf_efficientnet_lite0", num_classes=2, weights="imagenet")
    out = {}
    for key, root in (("bench", data), ("full", full_res)):
        if root is None:
            continue
        spec = load_dataset_spec(root)
        tr = spec.splits["train"]
        pairs, _ = find_pairs(tr.images, tr.masks)
        p = probe_data([Path(i) for i, _ in pairs], model)
        out[key] = {"num_images": p.num_images, "sizes": sorted(set(p.sizes)), "shift": p.shift}
    return out


def decision_table(probe: dict[str, Any]) -> list[dict[str, Any]]:
    """What auto decides for this domain's images and shift at several data set sizes."""
    from segtune.config import Config
    from segtune.strategies.auto import resolve_auto
    from segtune.strategies.probe import DataProbe

    rows = []
    for res, p in probe.items():
        for n in TABLE_SIZES:
            cfg = Config()
            resolve_auto(cfg, n, DataProbe(n, tuple(tuple(s) for s in p["sizes"]), p["shift"]))
            rows.append({"resolution": res, "size": n, "shift": p["shift"], "image": "x".join(map(str, p["sizes"][0])),
                         "strategy": cfg.strategy.name, "lr": cfg.optim.lr, "epochs": cfg.train.epochs,
                         "augment": cfg.data.augment, "crop": cfg.data.crop_size})
    return rows


# --------------------------------------------------------------------------- selection
def selected(doc: dict[str, Any], domain: str, kind: str) -> float | None:
    """The LR with the best held-out mIoU among the selection runs of a bare loop."""
    rows = [r for r in doc["rows"] if r["stage"] == "select" and r["domain"] == domain and r["contender"] == kind]
    return max(rows, key=lambda r: r["miou"])["lr"] if len(rows) == len(BARE_LRS) else None


def _mean_sd(xs: list[float]) -> str:
    if not xs:
        return "-"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):.1f} ± {100 * sd:.1f}"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def section(doc: dict[str, Any]) -> str:
    """The RESULTS.md section, every number from the JSON."""
    p = doc["profile"]
    out = [TITLE, "",
           f"Every contender: SMP Unet + ImageNet EfficientNet-Lite0, {p['steps']} optimiser steps at batch "
           f"{p['batch']} (a small budget to fit ~25 CPU minutes for the whole table on a shared 2-core machine), "
           "final weights scored, 1 intra-op thread. CamVid downscaled x0.25 (120x90), membrane (ISBI 2012 EM) "
           "x0.375 (192x192). Selection on held-out parts of the training data only (CamVid: 267/100 split of "
           "train; membrane: slices 0-17 / 18-23); scoring on the untouched split (CamVid val, 101 images; "
           "membrane slices 24-29), seeds " + ", ".join(map(str, SEEDS)) + ".", ""]
    out += ["Contenders: `auto` = `segtune.train` with the strategy, LR, crop and augmentation left to auto "
            "(only the step budget fixed; the epoch count auto picks is not measured here; its `head` runs use "
            "segtune's float16 frozen-encoder feature cache, on by default there); `bare-frozen` and "
            "`bare-ft` = `benchmarks/bare_loop.py` with the same model and weights, class-weighted CE + SMP Dice, "
            "AdamW + one-cycle, random crop + flip with the crop = the usual 384 scaled like the images (96 on "
            "CamVid, 144 on membrane), the encoder frozen (BatchNorm in eval) or everything fine-tuned with a 10x "
            "smaller encoder LR; each bare loop's LR swept over " + ", ".join(f"{v:g}" for v in BARE_LRS)
            + " on the selection split. auto's own candidates (" + ", ".join(f"`{s}` at {lr:g}" for s, lr in AUTO_CANDIDATES)
            + ", crop/augmentation by auto) were measured on the same split; the far-domain row of auto's table "
            "follows them. Same steps and batch for all; auto's whole images hold more pixels per step than the "
            "bare loops' crops (CPU seconds per run are in the table).", ""]
    out += ["**What auto decides** (from the data probe: image sizes from the headers, domain shift = median "
            "over the encoder's BatchNorm layers of KL(data statistics || stored ImageNet statistics), 8 "
            "training images):", "",
            "| domain | resolution | images | image size | shift | strategy | LR | crop / augmentation | epochs |",
            "|---|---|---:|---|---:|---|---:|---|---:|"]
    for dom, probe in doc.get("probes", {}).items():  # by today's auto code (pure: no model, no data)
        for r in decision_table(probe):
            shape = "whole images + flips" if r["augment"] == "flip" else f"crop {r['crop']} + flips"
            out.append(f"| {dom} | {r['resolution']} | {r['size']} | {r['image']} | {r['shift']:.2f} | "
                       f"`{r['strategy']}` | {r['lr']:g} | {shape} | {r['epochs']} |")
    out += ["", "**Selection** (held-out mIoU %, seed 0, one run per candidate):", "",
            "| domain | contender | LR | held-out mIoU |", "|---|---|---:|---:|"]
    for r in sorted((r for r in doc["rows"] if r["stage"] == "select"),
                    key=lambda r: (r["domain"], r["contender"], r["lr"])):
        out.append(f"| {r['domain']} | {r['contender']} | {r['lr']:g} | {_fmt(r['miou'])} |")
    out += ["", "**Scoring on the untouched split** (mIoU %, mean ± sd over seeds " + ", ".join(map(str, SEEDS))
            + "; each bare loop at its selected LR; `auto + TTA` = the same auto weights scored again with "
            "`segtune evaluate --tta flip`, which the bare loops were not given):", "",
            "| domain | auto | auto + TTA | bare-frozen | bare-ft (encoder LR x0.1) | auto - better bare loop, per seed "
            "| CPU s per run (auto / frozen / ft) |", "|---|---:|---:|---:|---:|---|---|"]
    for dom in DOMAINS:
        out += _score_rows(doc, dom)
    out += ["", goal_text(doc), ""] + selection_notes(doc)
    out += ["", "Commands:", "", "```"] + doc["meta"]["commands"] + ["```", "",
            f"Machine: {doc['meta'].get('machine', '?')}. Raw rows: `benchmarks/auto.json`."]
    return "\n".join(out)


def paired_gaps(doc: dict[str, Any], dom: str) -> tuple[str | None, list[float]]:
    """The better bare loop (by mean) and auto minus it per seed, in mIoU points."""
    ev = [r for r in doc["rows"] if r["stage"] == "eval" and r["domain"] == dom]
    by = {c: {r["seed"]: r["miou"] for r in ev if r["contender"] == c} for c in ("auto", *BARE)}
    means = {c: statistics.fmean(by[c].values()) for c in BARE if by[c]}
    if not means:
        return None, []
    best = max(means, key=means.get)
    return best, [100 * (by["auto"][s] - by[best][s]) for s in SEEDS if s in by["auto"] and s in by[best]]


def selection_notes(doc: dict[str, Any]) -> list[str]:
    """What the selection stage showed, from the rows: the gap between auto's candidates, and
    bare-loop LRs selected at the edge of the swept range."""
    out = []
    for dom in DOMAINS:
        sel = {(r["contender"], r["lr"]): r["miou"] for r in doc["rows"] if r["stage"] == "select" and r["domain"] == dom}
        cands = sorted(((v, k) for k, v in sel.items() if k[0].startswith("auto-")), reverse=True)
        if len(cands) >= 2:
            (v1, k1), (v2, k2) = cands[:2]
            out.append(f"- {dom}, selection: auto's best candidate `{k1[0][5:]}` at LR {k1[1]:g} was "
                       f"{100 * (v1 - v2):.2f} points above `{k2[0][5:]}` at LR {k2[1]:g} (one seed each).")
        edge = [k for k in BARE if selected(doc, dom, k) == max(BARE_LRS)]
        if edge:
            out.append(f"- {dom}, selection: {' and '.join(edge)} selected LR {max(BARE_LRS):g}, the largest swept: "
                       "at this short budget a larger LR might have scored higher for them.")
    return out


def goal_text(doc: dict[str, Any]) -> str:
    """Whether auto beat the better bare loop by >= 3 points on both domains and was never below it."""
    parts, met = [], True
    for dom in DOMAINS:
        best, gaps = paired_gaps(doc, dom)
        if not gaps:
            return "Goal: not evaluated yet (scoring runs missing)."
        m = statistics.fmean(gaps)
        met = met and m >= 3 and min(gaps) >= 0
        parts.append(f"{dom}: auto - {best} = {m:+.1f} points on average (per seed "
                     + ", ".join(f"{g:+.1f}" for g in gaps) + ")")
    return ("**Goal (auto at least 3 points above the better bare loop on both domains, never below it): "
            + ("met" if met else "not met") + ".** " + "; ".join(parts) + ".")


def _score_rows(doc: dict[str, Any], dom: str) -> list[str]:
    ev = [r for r in doc["rows"] if r["stage"] == "eval" and r["domain"] == dom]
    if not ev:
        return []
    by = {c: {r["seed"]: r for r in ev if r["contender"] == c} for c in ("auto", *BARE)}
    best, diffs = paired_gaps(doc, dom)
    cpu = " / ".join(f"{statistics.fmean(r.get('cpu_s', r['seconds']) for r in by[c].values()):.0f}" if by[c] else "-"
                     for c in ("auto", *BARE))
    lr = {c: f" (LR {next(iter(by[c].values()))['lr']:g})" if by[c] else "" for c in BARE}
    tta = [r["miou_tta_flip"] for r in by["auto"].values() if "miou_tta_flip" in r]
    st = next(iter(by["auto"].values()))["settings"] if by["auto"] else {}
    shape = "whole images + flips" if st.get("augment") == "flip" else f"crop {st.get('crop')} + flips"
    return [f"| {dom} (auto: `{st.get('strategy')}`, LR {st.get('lr')}, {shape}) | "
            f"{_mean_sd([r['miou'] for r in by['auto'].values()])} | {_mean_sd(tta)} | "
            f"{_mean_sd([r['miou'] for r in by['bare-frozen'].values()])}{lr['bare-frozen']} | "
            f"{_mean_sd([r['miou'] for r in by['bare-ft'].values()])}{lr['bare-ft']} | "
            f"{', '.join(f'{d:+.1f}' for d in diffs)} (vs {best}) | {cpu} |"]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", choices=("probe", "select", "eval", "all"), default="all")
    p.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=list(DOMAINS))
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--json", type=Path, default=JSON_DEFAULT)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "segtune-auto-bench")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--write-results", action="store_true")
    return p.parse_args(argv)


def _record(doc: dict[str, Any], path: Path, row: dict[str, Any], t0: float, c0: float) -> None:
    key = ("stage", "domain", "contender", "lr", "seed")
    row = {**row, "seconds": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1),
           "load": _common.load_avg(),
           "date": _dt.datetime.now().isoformat(timespec="seconds")}
    doc["rows"] = [r for r in doc["rows"] if tuple(r.get(k) for k in key) != tuple(row.get(k) for k in key)] + [row]
    _common.save_json(path, doc)
    print(f"  -> {row['stage']} {row['domain']} {row['contender']} lr {row['lr']} seed {row['seed']}: "
          f"mIoU {100 * row['miou']:.2f} in {row['seconds']:.0f} s", flush=True)


def _todo(doc: dict[str, Any], a: argparse.Namespace, dom: str) -> list[tuple[str, str, float | None, int]]:
    """(stage, contender, lr, seed) runs not yet in the JSON."""
    jobs: list[tuple[str, str, float | None, int]] = []
    if a.stage in ("select", "all"):
        jobs += [("select", f"auto-{s}", lr, 0) for s, lr in AUTO_CANDIDATES]
        jobs += [("select", k, lr, 0) for k in BARE for lr in BARE_LRS]
    if a.stage in ("eval", "all"):
        for s in a.seeds:
            jobs += [("eval", "auto", None, s)] + [("eval", k, selected(doc, dom, k), s) for k in BARE]
    done = {(r["stage"], r["contender"], r["lr"], r["seed"]) for r in doc["rows"] if r["domain"] == dom}
    return [j for j in jobs if j not in done]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    import torch

    torch.set_num_threads(1)
    doc = (_load(a.json) if a.json.is_file() else None) or {"profile": {"steps": a.steps, "batch": a.batch},
                                                           "meta": {"commands": []}, "rows": []}
    if doc["profile"] != {"steps": a.steps, "batch": a.batch}:
        raise SystemExit(f"{a.json} holds another profile ({doc['profile']}); use another --json")
    if not a.report_only:
        doc["meta"]["machine"] = _common.machine(1)
        cmd = _common.command_line("auto.py", argv)
        if cmd not in doc["meta"]["commands"]:
            doc["meta"]["commands"].append(cmd)
        data = {dom: domain_data(dom, a.cache) for dom in a.domains}
        for dom in a.domains:
            if a.stage in ("probe", "all") or dom not in doc.get("probes", {}):
                doc.setdefault("probes", {})[dom] = probe_domain(data[dom]["eval"], DOMAINS[dom]["src"])
                _common.save_json(a.json, doc)
        # selection before scoring; scoring seed by seed across domains (an interrupted run leaves
        # complete seeds on both domains)
        jobs = sorted(((dom, *j) for dom in a.domains for j in _todo(doc, a, dom)),
                      key=lambda j: (j[1] != "select", j[4] if j[1] == "eval" else 0, a.domains.index(j[0])))
        for dom, stage, c, lr, seed in jobs:
            _run_job(doc, a, data[dom], dom, stage, c, lr, seed)
    text = section(doc)
    print(text)
    if a.write_results:
        _common.write_section(text, START, END)
    return doc


def _run_job(doc: dict[str, Any], a: argparse.Namespace, data: dict[str, Path], dom: str, stage: str, c: str,
             lr: float | None, seed: int) -> None:
    """One run of the grid, recorded in the JSON (a bare loop's scoring LR = its selected one)."""
    if stage == "eval" and c != "auto":
        lr = selected(doc, dom, c)  # after this invocation's selection runs
        if lr is None:
            raise SystemExit(f"{dom}: no complete selection for {c}: run --stage select first")
        if any((r["stage"], r["domain"], r["contender"], r["lr"], r["seed"]) == (stage, dom, c, lr, seed)
               for r in doc["rows"]):
            return
    print(f"[{dom} {stage}] {c} lr {lr} seed {seed}", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    if c.startswith("auto"):
        strat = "auto" if c == "auto" else c.split("-", 1)[1]
        r = run_segtune(data[stage], strat, lr, seed, a, a.cache / "runs", f"{dom}-{stage}-{c}", tta=stage == "eval")
    else:
        r = run_bare(data[stage], c, lr, seed, DOMAINS[dom]["bare_crop"], a)
    _record(doc, a.json, {"stage": stage, "domain": dom, "contender": c, "lr": lr, "seed": seed, **r}, t0, c0)


def _load(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())


if __name__ == "__main__":
    main()
