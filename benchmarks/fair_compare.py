"""Fair recipe-vs-library comparison: segtune's head default against bare loops that use the same recipe.

Question: when segtune's default (``head``: frozen encoder, ce+dice with median-frequency class
weights in the CE term, AdamW + warm-up + cosine) scores above a hand-written loop, how much of the
gain is the *library* and how much the *recipe* (strategy, loss, optimiser details)? And were the
recipe's knobs chosen without looking at the data they are scored on?

Two stages, both on CamVid downscaled x0.5 (the data preparation of ``transfer_curve.py``: 240x180
images), every run 200 optimiser steps at batch 8, crop 128, final weights scored (no validation
during training), 1 intra-op thread:

1. **Selection** (``stage: select``). CamVid *train* (367 images) is split once, seeded and fixed,
   into a selection-train part (267) and a held-out selection part (100). segtune ``head`` runs
   train on (seeded subsets of) the selection-train part (``--sel-sizes``, default all 267) and
   are scored on the held-out part only, for each head LR in {1e-3, 3e-3, 1e-2} x class weights
   {median, none}. The recipe with the best mean held-out mIoU over the selection sizes and
   seeds is *selected*. CamVid val is not read in this stage.
2. **Scoring** (``stage: eval``). On CamVid val (101 images, untouched by the selection), for
   each training size (``--sizes``, default 367 = all of CamVid train; seeded subsets for
   smaller sizes) and seed (``--seeds``, default 0 1 2):

   * ``segtune-head``: ``segtune.train`` with ``strategy head`` and the selected LR / class weights;
   * ``bare-head``: ``bare_loop.py`` with the same strategy (encoder frozen, its BatchNorm in eval
     mode, only decoder + head in the optimiser), the same loss definition (written out by hand)
     and the same optimiser details (AdamW, segtune's weight decay with no-decay groups, 20
     warm-up steps + cosine, grad clip 1.0), same LR: the difference to ``segtune-head`` is the
     library alone;
   * ``bare-head-altcw``: ``bare-head`` with the other class-weight choice (weights' effect);
   * ``bare-full``: ``bare-head``'s loss and optimiser details, everything trainable, at segtune's
     ``full`` default LR (1e-3): the strategy's effect;
   * ``user-full``: the loop users write (``bare_loop.py`` ``wce+dice``: SMP Dice, weighted CE,
     AdamW torch defaults, one-cycle) at max_lr 3e-3, its best value in RESULTS.md's LR sweep
     (a sweep scored on CamVid val, so this loop's LR had the advantage of peeking);
   * ``user-full-enc0.1``: ``user-full`` with a 10x smaller encoder LR;
   * ``segtune-head-current``: only when the selection differs from today's defaults (the LR
     and class weights ``strategy: auto`` gives ``head``).

The JSON (``benchmarks/fair_compare.json``) holds every row (held-out or val mIoU, per-class IoU,
settings, seconds, load average), the commands and the machine; it is written after each run,
so ``--resume`` continues an interrupted grid. ``--write-results`` replaces the section
"Fair comparison" of ``benchmarks/RESULTS.md``; every number there is computed from the JSON.

    python benchmarks/fair_compare.py --smoke                         # end-to-end check, ~2 min
    python benchmarks/fair_compare.py --resume --write-results        # the comparison
    python benchmarks/fair_compare.py --report-only --write-results   # section from the JSON
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # before torch loads: one OpenMP thread (main() also sets 1 intra-op thread)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import transfer_curve as tc  # noqa: E402  (data preparation, segtune runner, machine, JSON I/O)

START, END = "<!-- fair_compare:start -->", "<!-- fair_compare:end -->"
TITLE = "## Fair comparison: segtune's head default vs bare loops with the same recipe"
JSON_DEFAULT = HERE / "fair_compare.json"

SEL_LRS = (1e-3, 3e-3, 1e-2)
SEL_CW = ("median", "none")
SPLIT = {"train": 267, "heldout": 100, "seed": 0}
USER_LR = 3e-3  # the user loop's best one-cycle max_lr (RESULTS.md, "Robustness")
PROFILE = {"scale": 0.5, "crop": 128, "batch": 8, "steps": 200, "max_val": None}
PROFILE_KEYS = ("scale", "crop", "batch", "steps", "max_val", "split")

# in run order within a (size, seed): the library pair first, then the user loop, then the attributions
CONTENDERS = ("segtune-head", "bare-head", "user-full", "bare-full", "bare-head-altcw",
              "user-full-enc0.1", "segtune-head-current")
#: (name, minuend, subtrahend, what the difference isolates)
DIFFS = (
    ("library", "segtune-head", "bare-head",
     "segtune vs the same recipe written by hand (same strategy, loss, optimiser, LR)"),
    ("class weights", "bare-head", "bare-head-altcw", "selected class weights vs the other choice (bare head loop)"),
    ("strategy", "bare-head", "bare-full",
     "frozen encoder vs full fine-tuning, same loss and optimiser details (each at segtune's LR for it)"),
    ("full-FT recipe", "bare-full", "user-full",
     "segtune's loss + optimiser details vs the user loop's (SMP Dice, wd 0.01 everywhere, one-cycle 3e-3, no clip), both full"),
    ("encoder LR x0.1", "user-full-enc0.1", "user-full", "user loop: 10x smaller encoder LR vs one LR"),
    ("total vs user loop", "segtune-head", "user-full", "segtune's selected default vs the user loop at its best LR"),
    ("total vs user loop, enc x0.1", "segtune-head", "user-full-enc0.1", "segtune's selected default vs the discriminative user loop"),
    ("selected vs current default", "segtune-head", "segtune-head-current", "only when the selection differs from today's defaults"),
)


# --------------------------------------------------------------------------- data
def selection_data(data_yaml: Path) -> Path:
    """A data set whose ``train`` is the selection-train part of CamVid train and whose ``val`` is
    the held-out selection part (hard links to the downscaled files; CamVid val not included)."""
    import random

    import yaml

    root = data_yaml.parent
    desc = yaml.safe_load(data_yaml.read_text())
    tr = desc["splits"]["train"]
    dest = root.parent / f"{root.name}-select{SPLIT['train']}-{SPLIT['heldout']}-s{SPLIT['seed']}"
    if (dest / "dataset.yaml").is_file():
        return dest / "dataset.yaml"
    stems = sorted(p.name for p in (root / tr["images"]).iterdir() if p.suffix == ".png")
    if len(stems) != SPLIT["train"] + SPLIT["heldout"]:
        raise SystemExit(f"{root / tr['images']}: {len(stems)} images, expected {SPLIT['train'] + SPLIT['heldout']}")
    random.Random(SPLIT["seed"]).shuffle(stems)
    parts = {"train": sorted(stems[SPLIT["heldout"]:]), "val": sorted(stems[:SPLIT["heldout"]])}
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=root.parent))
    for split, names in parts.items():
        for sub, src in ((split, tr["images"]), (f"{split}annot", tr["masks"])):
            (tmp / sub).mkdir()
            for n in names:
                try:
                    os.link(root / src / n, tmp / sub / n)
                except OSError:
                    shutil.copy2(root / src / n, tmp / sub / n)
    desc["name"] = f"{desc.get('name', 'data')} selection split {SPLIT['train']}/{SPLIT['heldout']} of train"
    desc["splits"] = {"train": {"images": "train", "masks": "trainannot"},
                      "val": {"images": "val", "masks": "valannot"}}
    (tmp / "dataset.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
    (tmp / "heldout.txt").write_text("\n".join(parts["val"]) + "\n")
    try:
        tmp.rename(dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest / "dataset.yaml"


# --------------------------------------------------------------------------- runs
def segtune_source() -> str:
    """Where ``import segtune`` came from: this checkout, or a snapshot (with its commit when known)."""
    import segtune

    src = Path(segtune.__file__).resolve().parents[1]
    if src == (tc.HERE.parent / "src").resolve():
        return "this checkout's src/"
    commit = src.parent / "COMMIT"
    return f"{src} (snapshot of commit {commit.read_text().strip()[:12]})" if commit.is_file() else str(src)


def default_lr(strategy: str, n: int = 367) -> float:
    """The LR a user gets for ``--strategy STRATEGY`` and nothing else (``resolve_auto``)."""
    from segtune.config import Config
    from segtune.strategies.auto import resolve_auto

    cfg = Config()
    cfg.strategy.name = strategy
    resolve_auto(cfg, n)
    return float(cfg.optim.lr)


def current_default() -> tuple[float, str]:
    """The head LR and class weights a user gets today (``--strategy head`` / ``strategy: auto``)."""
    from segtune.config import Config

    return default_lr("head"), Config().loss.class_weights


def run_one(data: Path, kind: str, size: int, seed: int, prof: dict[str, Any], runs: Path,
            lr: float, cw: str) -> dict[str, Any]:
    """One training run; ``kind`` is a contender name (selection runs use ``segtune-head``)."""
    import torch

    torch.set_num_threads(1)
    rp = {**prof, "seed": seed}
    if kind.startswith("segtune-head"):
        row = tc.run_segtune(data, size, "head", rp, runs, False,
                             [f"optim.lr={lr!r}", f"loss.class_weights={cw}"])
    else:
        from bare_loop import train_bare

        common = {"steps": prof["steps"], "batch_size": prof["batch"], "crop_size": prof["crop"], "seed": seed,
                  "max_train_images": size, "max_val_images": prof["max_val"],
                  "log": lambda m: print(m, file=sys.stderr, flush=True)}
        other = "none" if cw == "median" else "median"
        kw = {
            "bare-head": {"strategy": "head", "loss": "ce+dice", "class_weights": cw, "schedule": "warmup-cosine", "lr": lr},
            "bare-head-altcw": {"strategy": "head", "loss": "ce+dice", "class_weights": other,
                                "schedule": "warmup-cosine", "lr": lr},
            "bare-full": {"strategy": "full", "loss": "ce+dice", "class_weights": cw, "schedule": "warmup-cosine",
                          "lr": default_lr("full")},
            "user-full": {"strategy": "full", "loss": "wce+dice", "schedule": "one-cycle", "lr": USER_LR},
            "user-full-enc0.1": {"strategy": "full", "loss": "wce+dice", "schedule": "one-cycle", "lr": USER_LR,
                                 "encoder_lr_factor": 0.1},
        }[kind]
        r = train_bare(data, **common, **kw)
        row = {"kind": "bare", "miou": r["metrics"]["miou"], "pixel_acc": r["metrics"].get("pixel_acc"),
               "per_class": {c["name"]: c["iou"] for c in r["metrics"]["per_class"]}, "steps": r["steps"],
               "train_images": r["train_images"], "val_images": r["val_images"],
               "trainable_params": r["trainable_params"], "settings": r["settings"]}
    row["threads"] = torch.get_num_threads()
    return row


# --------------------------------------------------------------------------- selection
def _sel_name(lr: float, cw: str) -> str:
    return f"head lr {lr:g} cw {cw}"


def selection_scores(rows: list[dict[str, Any]], plan: dict[str, list[int]] | None = None) -> dict[str, dict[str, Any]]:
    """Per candidate recipe: held-out mIoU per (size, seed) of the selection plan and the mean.

    Rows outside ``plan`` (e.g. from a grid that was cut) are not used for the choice.
    """
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["stage"] != "select":
            continue
        if plan is not None and (r["size"] not in plan["sizes"] or r["seed"] not in plan["seeds"]):
            continue
        d = out.setdefault(r["contender"], {"lr": r["lr"], "class_weights": r["cw"], "scores": {}})
        d["scores"][f"{r['size']}/{r['seed']}"] = r["miou"]
    for d in out.values():
        d["mean"] = statistics.fmean(d["scores"].values())
    return out


def pick(rows: list[dict[str, Any]], plan: dict[str, list[int]]) -> dict[str, Any] | None:
    """The candidate with the best mean held-out mIoU, once every candidate has all its runs."""
    sc = selection_scores(rows, plan)
    expected = len(plan["sizes"]) * len(plan["seeds"])
    if len(sc) < len(SEL_LRS) * len(SEL_CW) or any(len(d["scores"]) < expected for d in sc.values()):
        return None
    name = max(sc, key=lambda k: sc[k]["mean"])
    return {"candidate": name, "lr": sc[name]["lr"], "class_weights": sc[name]["class_weights"],
            "heldout_miou": sc[name]["mean"]}


# --------------------------------------------------------------------------- report
def plan_cells(doc: dict[str, Any]) -> list[list[Any]]:
    """``[size, seed, contender]`` of every planned scoring run (older JSONs: sizes x seeds x contenders)."""
    plan = doc.get("plan") or {}
    if "cells" in plan:
        return [list(c) for c in plan["cells"]]
    return [[n, s, c] for n in plan.get("sizes", []) for s in plan.get("seeds", []) for c in plan.get("contenders", [])]


def _mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


# two-sided 95% Student t quantiles by degrees of freedom
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def paired(rows: list[dict[str, Any]], a: str, b: str, size: int | None) -> list[tuple[int, int, float]]:
    """``(size, seed, miou_a - miou_b)`` for every (size, seed) where both contenders ran."""
    idx = {(r["contender"], r["size"], r["seed"]): r["miou"] for r in rows if r["stage"] == "eval"}
    out = []
    for (c, n, s), v in sorted(idx.items(), key=lambda kv: (kv[0][1], kv[0][2])):
        if c == a and (b, n, s) in idx and (size is None or n == size):
            out.append((n, s, v - idx[(b, n, s)]))
    return out


def verdict(diffs: list[float], a: str = "the first", b: str = "the second") -> str:
    """A sentence from the paired differences: mean, 95% t interval, and what it supports."""
    n = len(diffs)
    m = statistics.fmean(diffs)
    if n < 2:
        return f"{100 * m:+.1f} points (one pair: no noise estimate)"
    sd = statistics.stdev(diffs)
    half = _T95.get(n - 1, 1.96) * sd / math.sqrt(n)
    pos = sum(d > 0 for d in diffs)
    lo, hi = 100 * (m - half), 100 * (m + half)
    if lo <= 0 <= hi:
        what = "no difference detectable at this noise (the interval includes 0)"
    elif m > 0:
        what = f"`{a}` ahead of `{b}`" if a != "the first" else "the first is ahead"
    else:
        what = f"`{b}` ahead of `{a}`" if a != "the first" else "the first is behind"
    return (f"{100 * m:+.1f} points (95% t interval {lo:+.1f} to {hi:+.1f}; {pos} of {n} pairs positive): {what}")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def contender_text(doc: dict[str, Any], c: str) -> str:
    """What a contender used, read from one of its rows' settings."""
    r = next((r for r in doc["rows"] if r["stage"] == "eval" and r["contender"] == c), None)
    if r is None:
        return ""
    st = r["settings"]
    if r["kind"] == "segtune":
        lo, hi = st["scale"]
        aug = "crop + flip" if lo == hi == 1 and not st.get("color_jitter") else f"rescale {lo:g}-{hi:g}, jitter {st.get('color_jitter')}"
        return (f"segtune.train, strategy head, loss {st['loss']} (class weights {st['class_weights']}, CE term), "
                f"AdamW lr {st['lr']:g} (wd 1e-4, no decay on biases/norms), {st['schedule']} with "
                f"{st['warmup_steps']} warm-up steps, grad clip 1.0, {aug}")
    loss = {"ce+dice": "CE + present-class batch Dice (segtune's definition, by hand)",
            "wce+dice": "CE + SMP DiceLoss (mean over all classes)", "ce": "CE"}[st["loss"]]
    if st["schedule"] == "warmup-cosine":
        opt = (f"AdamW lr {st['lr']:g} (wd {st['weight_decay']:g}, none on biases/norms), {st['warmup_steps']} "
               f"warm-up steps + cosine, grad clip {st['grad_clip']:g}")
    else:
        opt = f"AdamW (wd 0.01 on all) + one-cycle max_lr {st['lr']:g}, no clip"
    if st.get("encoder_lr_factor", 1.0) != 1.0:
        opt += f", encoder LR x{st['encoder_lr_factor']:g}"
    strat = "encoder frozen (BN eval), decoder + head trained" if st["strategy"] == "head" else "everything trained"
    return f"bare_loop.py, {strat}, {loss}, class weights {st['class_weights']} (CE), {opt}, crop + flip"


def section(doc: dict[str, Any]) -> str:
    p, meta, rows = doc["profile"], doc["meta"], doc["rows"]
    sel = doc.get("selection")
    ev = [r for r in rows if r["stage"] == "eval"]
    sizes = sorted({r["size"] for r in ev})
    present = [c for c in CONTENDERS if any(r["contender"] == c for r in ev)]
    seeds_by_size = {n: sorted({r["seed"] for r in ev if r["size"] == n}) for n in sizes}
    total = sum(r["seconds"] for r in rows)
    cmds = "\n".join(f"    {c}" for c in meta.get("commands", []))
    loads = sorted(r["load"][0] for r in rows if r.get("load"))
    lines = [
        TITLE, "",
        f"Generated by `benchmarks/fair_compare.py` from `benchmarks/fair_compare.json` ({len(rows)} runs, "
        f"{total / 60:.0f} min of runs; last update {meta.get('updated', '?')}). Commands:", "",
        cmds, "",
        f"Machine: {tc.describe_machine(meta['machine'])}; 1-min load average at run starts: median "
        f"{loads[len(loads) // 2] if loads else float('nan'):.1f}, max {loads[-1] if loads else float('nan'):.1f}"
        + (" (the cores were shared with other jobs, so wall times are upper bounds)" if loads and loads[-1] > 0.5 else "")
        + f". segtune imported from: {meta.get('segtune_source', 'not recorded')}"
        + (" (the commands above ran with `PYTHONPATH` pointing at that snapshot, taken with "
           "`git archive <commit> src | tar -x -C DIR` while src/ was being refactored; the snapshot's "
           "commit is also recorded in the JSON)" if "snapshot" in meta.get("segtune_source", "") else "")
        + ".", "",
        f"Profile: CamVid images and masks downscaled x{p['scale']:g} (240x180), every run {p['steps']} optimiser "
        f"steps at batch {p['batch']}, random crop {p['crop']} + flip, no validation during training, the final "
        "weights scored; mIoU in % (macro over present classes, segtune's confusion matrix for every contender).",
        "",
    ]
    # ---- selection
    sc = selection_scores(rows, doc.get("selection_plan"))
    if sc:
        cols = sorted({k for d in sc.values() for k in d["scores"]}, key=lambda k: tuple(map(int, k.split("/"))))
        lines += [
            "**Selection, without CamVid val.** CamVid train was split once (seed "
            f"{p['split']['seed']}) into {p['split']['train']} selection-train and {p['split']['heldout']} held-out "
            "images; segtune `head` runs trained on seeded subsets of the selection-train part and were scored on "
            "the held-out part only (held-out mIoU %, columns = training images / seed):", "",
            "| candidate | " + " | ".join(cols) + " | mean |",
            "|---|" + "---:|" * (len(cols) + 1),
        ]
        best = max(sc, key=lambda k: sc[k]["mean"])
        for name in sorted(sc, key=lambda k: (sc[k]["class_weights"], sc[k]["lr"])):
            d = sc[name]
            cells = [_fmt(d["scores"].get(k)) for k in cols]
            mean = f"**{100 * d['mean']:.1f}**" if name == best else f"{100 * d['mean']:.1f}"
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
        lines.append("")
        extra = [r for r in rows if r["stage"] == "select" and doc.get("selection_plan")
                 and (r["size"] not in doc["selection_plan"]["sizes"] or r["seed"] not in doc["selection_plan"]["seeds"])]
        if extra:
            lines += [f"({len(extra)} selection run(s) outside this plan, from a grid that was cut for time, stay in "
                      "the JSON and were not used for the choice.)", ""]
        if sel:
            cur = doc.get("current_default", {})
            same = cur and cur.get("lr") == sel["lr"] and cur.get("class_weights") == sel["class_weights"]
            ranked = sorted(sc.values(), key=lambda d: -d["mean"])
            gap = 100 * (ranked[0]["mean"] - ranked[1]["mean"]) if len(ranked) > 1 else float("nan")
            by_cw = []
            for lr in SEL_LRS:
                m = next((d["mean"] for d in sc.values() if d["lr"] == lr and d["class_weights"] == "median"), None)
                n0 = next((d["mean"] for d in sc.values() if d["lr"] == lr and d["class_weights"] == "none"), None)
                if m is not None and n0 is not None:
                    by_cw.append(f"{100 * (m - n0):+.1f} at LR {lr:g}")
            if by_cw:
                lines += [f"Median-frequency class weights vs none, same LR (held-out): {', '.join(by_cw)} points.", ""]
            lines += [
                f"Selected: head LR {sel['lr']:g}, class weights {sel['class_weights']} (held-out mean "
                f"{100 * sel['heldout_miou']:.1f}, {gap:.1f} points above the runner-up). Today's default for `head` "
                f"is LR {cur.get('lr', float('nan')):g}, class weights {cur.get('class_weights')}: the selection "
                + ("**agrees** with it." if same else "**differs** from it.")
                + f" Caveats: one split and {len(cols)} training run(s) per candidate, so the gaps between "
                "candidates carry seed noise (the sd of the scoring runs below shows its size); CamVid's frames "
                "come from a few video sequences and the random split puts neighbouring frames on both sides, so "
                "held-out scores may be higher than on a new sequence (not measured; CamVid val is not involved).",
                ""]
    # ---- scoring
    if ev:
        lines += [
            "**Scoring on CamVid val (101 images, not used by the selection).** Contenders:", "",
            *[f"- `{c}`: {contender_text(doc, c)}." for c in present], "",
            "Val mIoU %, mean ± sd over seeds (n = seeds); per-seed values in the JSON:", "",
            "| contender | " + " | ".join(f"{n} images (seeds {', '.join(map(str, seeds_by_size[n]))})" for n in sizes)
            + " | s per run |",
            "|---|" + "---:|" * (len(sizes) + 1),
        ]
        for c in present:
            cells = []
            for n in sizes:
                xs = [r["miou"] for r in ev if r["contender"] == c and r["size"] == n]
                if not xs:
                    cells.append("-")
                    continue
                m, sd = _mean_sd(xs)
                cells.append(f"{100 * m:.1f} ± {100 * sd:.1f} (n={len(xs)})" if len(xs) > 1 else f"{100 * m:.1f} (n=1)")
            secs = statistics.median(r["seconds"] for r in ev if r["contender"] == c)
            lines.append(f"| {c} | " + " | ".join(cells) + f" | {secs:.0f} |")
        lines += ["", "Paired differences (same size and seed, so the same training subset; points of mIoU), "
                  "mean ± sd and 95% t interval over the pairs:", "",
                  "| difference | isolates | " + " | ".join(f"{n} images" for n in sizes) + " | all pairs |",
                  "|---|---|" + "---:|" * (len(sizes) + 1)]
        found: list[tuple[str, str]] = []
        for name, a, b, what in DIFFS:
            if not paired(rows, a, b, None):
                continue
            cells = []
            for n in sizes:
                d = [x for _, _, x in paired(rows, a, b, n)]
                cells.append("-" if not d else (f"{100 * statistics.fmean(d):+.1f} ± {100 * statistics.stdev(d):.1f}"
                                                if len(d) > 1 else f"{100 * d[0]:+.1f}"))
            alld = [x for _, _, x in paired(rows, a, b, None)]
            cells.append(f"{100 * statistics.fmean(alld):+.1f}" + (f" ± {100 * statistics.stdev(alld):.1f}" if len(alld) > 1 else ""))
            lines.append(f"| {name}: `{a}` - `{b}` | {what} | " + " | ".join(cells) + " |")
            found.append((name, verdict(alld, a, b) + f" (`{a}` - `{b}`, {len(alld)} pairs)"))
        lines += ["", f"Reading the pairs (95% t interval over all pairs, sizes {', '.join(map(str, sizes))}; with "
                  "this few seeds an interval that includes 0 means no detectable difference, not proof of "
                  "equality):", ""]
        lines += [f"- {name}: {txt}." for name, txt in found]
        # the total gain over the user loop telescopes into library + strategy + loss/optimiser details
        parts = [("library", "segtune-head", "bare-head"), ("strategy", "bare-head", "bare-full"),
                 ("loss + optimiser details + LR of full fine-tuning", "bare-full", "user-full")]
        if all(paired(rows, a, b, None) for _, a, b in parts):
            keys = set.intersection(*[{(n, sd) for n, sd, _ in paired(rows, a, b, None)} for _, a, b in parts])
            if keys:
                means = [(name, statistics.fmean(x for n, sd, x in paired(rows, a, b, None) if (n, sd) in keys))
                         for name, a, b in parts]
                total = sum(m for _, m in means)
                lines += ["", f"**Where the gain over the user loop comes from** ({len(keys)} size/seed pairs, "
                          f"{', '.join(f'{n} images' for n in sorted({n for n, _ in keys}))}, where all four "
                          "contenders ran; "
                          "the three steps add up exactly): `segtune-head` - `user-full` = "
                          f"{100 * total:+.1f} points = "
                          + " + ".join(f"{name} {100 * m:+.1f}" for name, m in means) + "."]
        have = {(r["size"], r["seed"], r["contender"]) for r in ev}
        missing = [tuple(c) for c in plan_cells(doc) if tuple(c) not in have]
        if missing:
            lines += ["", f"**Incomplete:** {len(missing)} planned run(s) missing (e.g. {missing[0][2]} at "
                      f"{missing[0][0]} images, seed {missing[0][1]}); resume with "
                      "`python benchmarks/fair_compare.py --resume --write-results`."]
    return "\n".join(lines)


def write_results(doc: dict[str, Any], md: Path = tc.RESULTS_MD) -> None:
    from _common import write_section

    write_section(section(doc), START, END, md)


# --------------------------------------------------------------------------- main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help="end-to-end check: 5 steps, 8 images, 8 scored images, seed 0, a JSON under --workdir")
    p.add_argument("--sel-sizes", type=int, nargs="+", default=[267],
                   help="selection-train subset sizes (of the 267)")
    p.add_argument("--sel-seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[367],
                   help="scoring sizes, in run order (default 367 only: at ~2-3 min per run on the shared 2 cores, "
                        "23 too did not fit the time budget; add it with --sizes 367 23 --resume)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS[:-1]),
                   help="scoring contenders (segtune-head-current is added when the selection differs)")
    p.add_argument("--steps", type=int, default=PROFILE["steps"])
    p.add_argument("--max-val", type=int, help="(--smoke / another --json only) score on this many images")
    p.add_argument("--stage", choices=("all", "select", "eval"), default="all")
    p.add_argument("--resume", action="store_true", help="skip runs already in the JSON")
    p.add_argument("--json", type=Path, help=f"results JSON (default {JSON_DEFAULT.relative_to(tc.HERE.parent)})")
    p.add_argument("--data", type=Path, default=tc.CAMVID)
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segtune-fair-compare")
    p.add_argument("--data-cache", type=Path, default=Path(tempfile.gettempdir()) / "segtune-transfer-curve")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--write-results", action="store_true")
    a = p.parse_args(argv)
    if a.smoke:
        a.steps, a.sizes, a.sel_sizes, a.seeds, a.sel_seeds = 5, [8], [8], [0], [0]
        a.max_val = 8 if a.max_val is None else a.max_val
        a.json = a.json or a.workdir / "smoke" / "fair_compare.json"
    if (a.max_val is not None or a.steps != PROFILE["steps"]) and (a.json is None or a.json.resolve() == JSON_DEFAULT):
        p.error("--max-val / --steps other than the profile need their own --json")
    if a.smoke and a.write_results:
        p.error("--smoke results are not written to RESULTS.md")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    import torch

    torch.set_num_threads(1)
    json_path = a.json or JSON_DEFAULT
    prof = {**PROFILE, "steps": a.steps, "max_val": a.max_val, "split": dict(SPLIT)}
    doc = tc.load_json(json_path)
    if doc is not None and any(doc["profile"].get(k) != prof.get(k) for k in PROFILE_KEYS):
        raise SystemExit(f"{json_path} holds another profile ({doc['profile']}); use another --json")
    if doc is None:
        if a.report_only:
            raise SystemExit(f"{json_path}: no results")
        doc = {"profile": prof, "meta": {"commands": []}, "rows": []}
    meta = doc["meta"]
    if not a.report_only:
        meta["machine"] = tc.machine()
        meta["segtune_source"] = segtune_source()
        cmd = "python benchmarks/fair_compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
        if cmd not in meta["commands"]:
            meta["commands"].append(cmd)
        lr0, cw0 = current_default()
        doc["current_default"] = {"lr": lr0, "class_weights": cw0,
                                  "source": "segtune.strategies.auto (head LR) and segtune.config (loss.class_weights)"}
        data = tc.prepare_data(a.data, a.data_cache, prof["scale"])
        sel_data = selection_data(Path(data))
        runs = a.workdir / "runs"
        done = {(r["stage"], r["contender"], r["size"], r["seed"]) for r in doc["rows"]}

        def record(stage: str, contender: str, size: int, seed: int, row: dict[str, Any], t0: float,
                   load0: float, extra: dict[str, Any]) -> None:
            row = {"stage": stage, "contender": contender, "size": size, "seed": seed, **extra, **row,
                   "seconds": round(time.perf_counter() - t0, 1), "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
                   "date": _dt.datetime.now().isoformat(timespec="seconds")}
            doc["rows"] = [r for r in doc["rows"]
                           if (r["stage"], r["contender"], r["size"], r["seed"]) != (stage, contender, size, seed)] + [row]
            meta["updated"] = _dt.date.today().isoformat()
            tc.save_json(json_path, doc)
            print(f"  -> {stage} {contender} {size} images seed {seed}: mIoU {100 * row['miou']:.2f} "
                  f"in {row['seconds']:.0f} s (load {load0:.1f})", flush=True)

        t_all, n_run = time.perf_counter(), 0
        if a.stage in ("all", "select"):
            todo = [(n, s, lr, cw) for s in a.sel_seeds for n in a.sel_sizes for cw in SEL_CW for lr in SEL_LRS]
            for i, (n, s, lr, cw) in enumerate(todo, 1):
                key = ("select", _sel_name(lr, cw), n, s)
                if a.resume and key in done:
                    continue
                print(f"[select {i}/{len(todo)}] {key[1]}, {n} of the selection-train images, seed {s}", flush=True)
                load0, t0 = os.getloadavg()[0], time.perf_counter()
                row = run_one(sel_data, "segtune-head", n, s, prof, runs, lr, cw)
                record("select", key[1], n, s, row, t0, load0, {"lr": lr, "cw": cw})
                n_run += 1
        if a.stage in ("all", "select"):
            doc["selection_plan"] = {"sizes": a.sel_sizes, "seeds": a.sel_seeds}
        sel = pick(doc["rows"], doc.get("selection_plan", {"sizes": a.sel_sizes, "seeds": a.sel_seeds}))
        if sel is not None:
            doc["selection"] = sel
            tc.save_json(json_path, doc)
            print(f"selected: {sel}", flush=True)
        if a.stage in ("all", "eval"):
            sel = doc.get("selection")
            if sel is None:
                raise SystemExit("no complete selection in the JSON: run the select stage first")
            contenders = list(a.contenders)
            if (sel["lr"], sel["class_weights"]) != (lr0, cw0) and "segtune-head-current" not in contenders:
                contenders.append("segtune-head-current")
            todo = [(n, s, c) for n in a.sizes for s in a.seeds for c in contenders]
            cells = {tuple(c) for c in plan_cells(doc)} | set(todo)  # the union of every invocation's grid
            doc["plan"] = {"cells": sorted([list(c) for c in cells], key=lambda c: (-c[0], c[1], CONTENDERS.index(c[2])))}
            if a.resume:
                todo = [t for t in todo if ("eval", t[2], t[0], t[1]) not in done]
            t_ev = time.perf_counter()
            for i, (n, s, c) in enumerate(todo, 1):
                lr, cw = (lr0, cw0) if c == "segtune-head-current" else (sel["lr"], sel["class_weights"])
                print(f"[eval {i}/{len(todo)}] {c}, {n} images, seed {s}", flush=True)
                load0, t0 = os.getloadavg()[0], time.perf_counter()
                row = run_one(Path(data), c, n, s, prof, runs, lr, cw)
                record("eval", c, n, s, row, t0, load0, {})
                el = time.perf_counter() - t_ev
                print(f"  {el / 60:.1f} min of scoring runs so far, ~{el / i * (len(todo) - i) / 60:.0f} min to go",
                      flush=True)
        print(f"done: {(time.perf_counter() - t_all) / 60:.1f} min", flush=True)
    print(section(doc))
    if a.write_results:
        write_results(doc)
        print(f"updated: {tc.RESULTS_MD}")
    return doc


if __name__ == "__main__":
    main()
