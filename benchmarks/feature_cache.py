"""Frozen-encoder feature cache: the encoder's share of a head-strategy step, epoch-time speed-up, mIoU.

One process on the CPU (``--threads``, default 1: see ``benchmarks/overhead.py`` about
oversubscribed shared cores), EfficientNet-Lite0 encoder with its bundled ImageNet weights,
11 CamVid classes, ``head`` strategy (encoder frozen, its BatchNorm in eval mode), AdamW over
segtune's parameter groups, ce+dice loss, grad-norm clipping 1.0, NHWC (channels-last) weights
and inputs as segtune trains on a CPU.

(1) **Encoder share** for ``unet``, ``fpn`` and ``deeplabv3plus``: a batch of ``--batch``
    (default 8) CamVid-sized inputs (480x360 padded to 480x384). The *live* step is
    ``decode(encode(x))`` (exactly ``forward(x)``) + loss + backward + clip + optimiser step,
    with the encoder forward timed inside it; the *cached* step is the same from float16
    features upcast to float32. Live and cached alternate for ``--rounds`` rounds after one
    warm-up each; medians. share = encoder forward / live step; the cache can at best make a
    step 1 / (1 - share) times faster; the measured step speed-up is live / cached.

(2) **Epoch time** of real ``segtune.train`` runs on CamVid (``examples/camvid.yaml``; the
    first ``--images`` training images of a seeded subset, all 480x360, and ``--val`` val
    images), ``--augment flip`` (whole images, random flips), head strategy, batch 8, the same
    seed, ``--epochs`` epochs, with ``--cache-features on`` and ``off`` alternating
    (on, off, on, off, ...) for ``--train-rounds`` rounds. Epoch time = training only, from the
    epoch's start to the end of its last optimiser step (validation excluded; data loading
    included), median over all epochs of all rounds. The one-off cache build (both flips of
    every training image through the encoder) is timed apart, with the number of epochs after
    which it has paid for itself.

(3) **Val mIoU** of those runs (validated once, after the last epoch, on the ``--val`` images):
    the same seed gives both runs the same order and flips, so they differ only by the float16
    rounding of the decoder's inputs.

    python benchmarks/feature_cache.py --quick            # ~8 minutes on 2 shared cores
    python benchmarks/feature_cache.py                    # ~30 minutes
    python benchmarks/feature_cache.py --write-results    # also benchmarks/feature_cache.json + its RESULTS.md section
    python benchmarks/feature_cache.py --from-json benchmarks/feature_cache.json   # the section from the JSON alone
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
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

CAMVID_YAML = REPO / "examples" / "camvid.yaml"
MARK_START, MARK_END = "<!-- feature_cache:start -->", "<!-- feature_cache:end -->"
NUM_CLASSES, IGNORE = 11, 11
ARCHS = ("unet", "fpn", "deeplabv3plus")
PROFILES = {
    "quick": {"batch": 8, "rounds": 2, "images": 16, "val": 8, "epochs": 2, "train_rounds": 1},
    "default": {"batch": 8, "rounds": 3, "images": 64, "val": 32, "epochs": 3, "train_rounds": 2},
}


# ----------------------------------------------------------------------------- (1) share
def encoder_share(arch: str, batch: int, rounds: int, size: tuple[int, int] = (384, 480)) -> dict[str, Any]:
    """Median encoder-forward, live-step and cached-step seconds of a head-strategy step."""
    import torch

    from segtune.config import LossConfig, StrategyConfig
    from segtune.data.feature_cache import decoder_levels
    from segtune.losses import build_loss
    from segtune.models import create_model
    from segtune.strategies import build_strategy

    torch.manual_seed(0)
    model = create_model(arch, num_classes=NUM_CLASSES, weights="imagenet")
    strategy = build_strategy(model, StrategyConfig(name="head"), 3e-3)
    strategy.apply(model, 0)
    model.train()
    model.to(memory_format=torch.channels_last)
    loss_fn = build_loss(LossConfig(), NUM_CLASSES, IGNORE, None)
    opt = torch.optim.AdamW(strategy.param_groups(1e-4), lr=3e-3)
    cl = torch.channels_last
    x = torch.randn(batch, 3, *size).contiguous(memory_format=cl)
    y = torch.randint(0, NUM_CLASSES, (batch, *size))
    used = decoder_levels(model)
    with torch.no_grad():
        cached = [f.half() if u else f.new_empty((batch, 0, *f.shape[2:])).half()
                  for f, u in zip(model.encode(x), used, strict=True)]

    def finish(logits: Any) -> None:
        loss = loss_fn(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def live() -> tuple[float, float]:
        t0 = time.perf_counter()
        feats = model.encode(x)
        t1 = time.perf_counter()
        finish(model.decode(feats))
        return t1 - t0, time.perf_counter() - t0

    def from_cache() -> float:
        t0 = time.perf_counter()
        finish(model.decode([f.float().contiguous(memory_format=cl) for f in cached]))
        return time.perf_counter() - t0

    live()  # warm-up (oneDNN primitive creation, allocator)
    from_cache()
    enc, step, cstep = [], [], []
    for _ in range(rounds):
        e, s = live()
        enc.append(e)
        step.append(s)
        cstep.append(from_cache())
    e, s, c = _common.median(enc), _common.median(step), _common.median(cstep)
    share = e / s
    enc_ids = {id(q) for q in model.encoder.parameters()}
    enc_params = sum(q.numel() for q in model.parameters() if id(q) in enc_ids)
    head_params = sum(q.numel() for q in model.parameters() if id(q) not in enc_ids)
    return {"arch": arch, "encoder_s": e, "live_step_s": s, "cached_step_s": c, "share": share,
            "encoder_params": enc_params, "decoder_head_params": head_params,
            "bound": 1.0 / (1.0 - share), "speedup": s / c,
            "stored_levels": [k for k, u in enumerate(used) if u], "levels": len(used)}


# ----------------------------------------------------------------------------- (2)+(3) runs
def _train_module() -> Any:
    import importlib

    return importlib.import_module("segtune.engine.train")  # the module (segtune.engine.train is the function)


def _patched_train(epoch_times: list[float], build: list[float]) -> Any:
    """segtune.train with a HistoryCallback that also records training-only epoch times, and
    the feature-cache build timed (the real run path otherwise)."""
    T = _train_module()
    base_cb = T.HistoryCallback

    class TimedHistory(base_cb):  # type: ignore[misc, valid-type]
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            super().on_train_epoch_start(trainer, pl_module)
            self._train_t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
                epoch_times.append(time.perf_counter() - self._train_t0)

    # the one-off cache build: engine/train.py's helper in older trees, the data module's method now
    if hasattr(T, "_use_feature_cache"):
        owner, attr = T, "_use_feature_cache"
    else:
        from segtune.data import SegDataModule

        owner, attr = SegDataModule, "train_from_features"
    base_build = getattr(owner, attr)

    def timed_build(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = base_build(*args, **kw)
        build.append(time.perf_counter() - t0)
        return out

    T.HistoryCallback = TimedHistory
    setattr(owner, attr, timed_build)
    return base_cb, (owner, attr, base_build)


def train_run(cache: str, name: str, p: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import segtune

    T = _train_module()
    epoch_times: list[float] = []
    build: list[float] = []
    base_cb, base_build = _patched_train(epoch_times, build)
    cfg = {
        "data": {"root": str(CAMVID_YAML), "augment": "flip", "batch_size": 8, "val_batch_size": 4,
                 "max_train_images": p["images"], "max_val_images": p["val"]},
        "strategy": {"name": "head"},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"epochs": p["epochs"], "val_every": p["epochs"], "early_stopping": 0, "seed": 0,
                  "num_overlays": 0, "progress": False, "out": str(workdir), "name": name,
                  "cache_features": cache},
    }
    try:
        t0 = time.perf_counter()
        run = segtune.train(cfg)
        total = time.perf_counter() - t0
    finally:
        owner, attr, base = base_build
        T.HistoryCallback = base_cb
        setattr(owner, attr, base)
    return {"cache": cache, "epoch_s": epoch_times, "build_s": build[0] if build else 0.0,
            "miou": run.metrics["miou"], "total_s": total, "steps": run.summary.get("steps")}


# ----------------------------------------------------------------------------- report
def _add_long_run(res: dict[str, Any], epochs: int = 60) -> None:
    """Share of the training time the cache saves over ``epochs`` epochs, build included."""
    e = res.get("epochs")
    if e:
        off = epochs * e["off_epoch_s"]
        e["long_epochs"] = epochs
        e["long_saving"] = (off - (epochs * e["on_epoch_s"] + e["build_s"])) / off


JSON_DEFAULT = HERE / "feature_cache.json"


def _section(res: dict[str, Any], command: str, machine: str, json_path: Path | None = None) -> str:
    """The RESULTS.md section; every number in it comes from ``res`` (the JSON)."""
    s = res["share"]
    e = res["epochs"]
    src = f"; raw results `{_common.rel(json_path)}`" if json_path else ""
    lines = [
        "## Frozen-encoder feature cache",
        "",
        f"`{command}` ({res.get('date') or datetime.date.today().isoformat()}, {res['seconds'] / 60:.0f} min{src}). "
        f"Machine: {machine}. " + _common.load_sentence(res.get("load"))
        + " Encoder tf_efficientnet_lite0 (ImageNet), 11 classes, head strategy, AdamW + ce+dice + grad "
        "clipping, NHWC on the CPU.",
        "",
        f"**Share of a head-strategy training step spent in the encoder** (batch {res['batch']}, "
        f"480x384 = CamVid padded, median of {res.get('profile', {}).get('rounds', '?')} alternating live / cached "
        "steps). The cache removes the encoder forward, so a step can get at most 1 / (1 - share) times faster:",
        "",
        "| arch | encoder fwd (s) | live step (s) | encoder share | bound 1/(1-share) | cached step (s) | step speed-up | of the bound's gain |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s:
        gain = (r["speedup"] - 1) / (r["bound"] - 1) if r["bound"] > 1 else float("nan")
        lines.append(
            f"| {r['arch']} | {r['encoder_s']:.2f} | {r['live_step_s']:.2f} | {r['share']:.0%} | "
            f"{r['bound']:.2f}x | {r['cached_step_s']:.2f} | {r['speedup']:.2f}x | {gain:.0%} |"
        )
    lines += [
        "",
        "Levels cached per architecture (SMP's level 0 is the input itself, read by no decoder "
        "except for its shape): "
        + ", ".join(f"{r['arch']} {r['stored_levels']} of {r['levels']}" for r in s) + ".",
        "",
        f"**Epoch time, real `segtune train` runs** (Unet, CamVid: {e['images']} training images, "
        f"480x360 whole images padded to 480x384, `--augment flip`, batch 8, {e['epochs']} epochs, "
        f"same seed; cache on / off alternating, {e['train_rounds']} round(s); training time only, "
        "data loading included, validation excluded; median over all epochs):",
        "",
        "| | epoch (s) | epochs timed | cache build (s) | val mIoU |",
        "|---|---:|---:|---:|---:|",
        f"| cache off | {e['off_epoch_s']:.1f} | {e['off_n']} | - | {e['off_miou']:.4f} |",
        f"| cache on | {e['on_epoch_s']:.1f} | {e['on_n']} | {e['build_s']:.1f} | {e['on_miou']:.4f} |",
        "",
        f"Epoch-time speed-up **{e['speedup']:.2f}x** against the Unet bound of "
        f"{e['bound']:.2f}x from the step measurement ({e['of_bound']:.0%} of the possible gain); "
        f"the build (one encoder pass per image and flip) "
        + (f"is paid back after {e['break_even_epochs']:.1f} epoch(s)." if math.isfinite(e["break_even_epochs"])
           else "is never paid back here (cached epochs were not faster).")
        + f" Val mIoU ({e['val']} CamVid val images, validated after the last epoch) with / without the cache "
        f"differs by {e['miou_diff']:+.4f}: both runs see the same images in the same order with the same "
        "flips, so the only difference is the float16 rounding of the decoder's inputs.",
        "",
    ]
    reading = []
    unet = next((r for r in s if r["arch"] == "unet"), None)
    if unet and "encoder_params" in unet:
        reading.append(
            f"the Unet's encoder has {unet['encoder_params'] / 1e6:.1f} M parameters and its decoder + head "
            f"{unet['decoder_head_params'] / 1e6:.1f} M (running at full resolution), and the encoder took "
            f"{unet['share']:.0%} of a Unet step, which bounds the cache's saving")
    by_share = sorted(s, key=lambda r: r["share"])
    if len(by_share) > 1:
        reading.append("encoder shares from smallest to largest: "
                       + ", ".join(f"{r['arch']} {r['share']:.0%}" for r in by_share))
    over = [r["arch"] for r in s if r["speedup"] > r["bound"]]
    if over:
        reading.append(f"a measured step speed-up above its bound ({', '.join(over)}) is timing noise on shared cores")
    build_epochs = e["build_s"] / e["off_epoch_s"] if e["off_epoch_s"] else float("nan")
    reading.append(f"the build cost {build_epochs:.1f} uncached epoch(s) of time; over {e['long_epochs']} epochs "
                   f"(an example run length) the cache would save {e['long_saving']:.0%} of the training time, "
                   "build included, at these epoch times")
    lines.append("Reading it (computed from the rows above): " + "; ".join(reading) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds, images and epochs")
    ap.add_argument("--batch", type=int, help="batch of the step measurement (default 8)")
    ap.add_argument("--rounds", type=int, help="alternating rounds of the step measurement")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), help="architectures of the step measurement")
    ap.add_argument("--images", type=int, help="CamVid training images of the epoch runs")
    ap.add_argument("--val", type=int, help="CamVid val images of the epoch runs")
    ap.add_argument("--epochs", type=int, help="epochs per run")
    ap.add_argument("--train-rounds", type=int, help="alternating on/off run pairs")
    ap.add_argument("--skip-runs", action="store_true", help="only the step measurement")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--workdir", type=Path, help="where the runs go (default: a temp folder, deleted)")
    ap.add_argument("--write-results", action="store_true",
                    help="write the raw results JSON (--json, default benchmarks/feature_cache.json) and the "
                         "RESULTS.md section generated from it")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="measure nothing: rewrite the RESULTS.md section from a --json file of an earlier run")
    a = ap.parse_args(argv)
    if a.from_json:
        res = json.loads(a.from_json.read_text())
        _add_long_run(res)
        _common.write_section(_section(res, res["command"], res["machine"], a.from_json), MARK_START, MARK_END)
        return res

    import torch

    torch.set_num_threads(a.threads)
    src = str(REPO / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    from segtune import _log

    _log.set_quiet(True)
    p = dict(PROFILES["quick" if a.quick else "default"])
    for k in ("batch", "rounds", "images", "val", "epochs", "train_rounds"):
        if getattr(a, k) is not None:
            p[k] = getattr(a, k)
    t0 = time.perf_counter()
    machine = _common.machine(a.threads)
    print(machine, flush=True)
    res: dict[str, Any] = {"batch": p["batch"], "share": [], "load": [_common.load_avg()]}
    for arch in a.archs:
        r = encoder_share(arch, p["batch"], p["rounds"])
        res["share"].append(r)
        print(f"{arch:14s} encoder {r['encoder_s']:.2f} s of a {r['live_step_s']:.2f} s step = {r['share']:.0%}"
              f" -> bound {r['bound']:.2f}x; cached step {r['cached_step_s']:.2f} s = {r['speedup']:.2f}x", flush=True)
    if not a.skip_runs:
        if not CAMVID_YAML.is_file() or not (REPO.parent / "shared" / "data" / "camvid").is_dir():
            raise SystemExit("epoch runs need ../shared/data/camvid (or pass --skip-runs)")
        work = a.workdir or Path(tempfile.mkdtemp(prefix="segtune-fc-"))
        runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
        try:
            for i in range(p["train_rounds"]):
                for cache in ("on", "off"):
                    r = train_run(cache, f"{cache}{i}", p, work)
                    runs[cache].append(r)
                    print(f"run cache {cache}: epochs {[round(x, 1) for x in r['epoch_s']]} s, build "
                          f"{r['build_s']:.1f} s, val mIoU {r['miou']:.4f}, total {r['total_s']:.0f} s", flush=True)
        finally:
            if a.workdir is None:
                shutil.rmtree(work, ignore_errors=True)
        on_e = [x for r in runs["on"] for x in r["epoch_s"]]
        off_e = [x for r in runs["off"] for x in r["epoch_s"]]
        unet = next((r for r in res["share"] if r["arch"] == "unet"), None)
        bound = unet["bound"] if unet else float("nan")
        speed = _common.median(off_e) / _common.median(on_e)
        build_s = _common.median([r["build_s"] for r in runs["on"]])
        saved = _common.median(off_e) - _common.median(on_e)
        res["epochs"] = {
            "images": p["images"], "val": p["val"], "epochs": p["epochs"], "train_rounds": p["train_rounds"],
            "on_epoch_s": _common.median(on_e), "off_epoch_s": _common.median(off_e), "on_n": len(on_e), "off_n": len(off_e),
            "speedup": speed, "bound": bound, "of_bound": (speed - 1) / (bound - 1) if bound > 1 else float("nan"),
            "build_s": build_s, "break_even_epochs": build_s / saved if saved > 0 else float("inf"),
            "on_miou": _common.median([r["miou"] for r in runs["on"]]), "off_miou": _common.median([r["miou"] for r in runs["off"]]),
            "runs": runs,
        }
        res["epochs"]["miou_diff"] = res["epochs"]["on_miou"] - res["epochs"]["off_miou"]
        e = res["epochs"]
        print(f"epoch {e['off_epoch_s']:.1f} s -> {e['on_epoch_s']:.1f} s with the cache = {speed:.2f}x "
              f"(bound {bound:.2f}x); build {build_s:.1f} s; val mIoU {e['on_miou']:.4f} vs {e['off_miou']:.4f}", flush=True)
    command = _common.command_line("feature_cache.py", argv)
    res.update(machine=machine, threads=a.threads, seconds=time.perf_counter() - t0, profile=p,
               command=command, date=datetime.date.today().isoformat())
    res["load"].append(_common.load_avg())
    _add_long_run(res)
    print(f"total {res['seconds']:.0f} s", flush=True)
    if a.write_results and "epochs" not in res:
        raise SystemExit("--write-results needs the epoch runs (drop --skip-runs)")
    json_path = a.json or (JSON_DEFAULT if a.write_results else None)
    if json_path:
        _common.save_json(json_path, res)
    if a.write_results:
        _common.write_section(_section(json.loads(Path(json_path).read_text()), command, machine, json_path),
                              MARK_START, MARK_END)
    return res


if __name__ == "__main__":
    main()
