"""Training overhead of segtune's loop against a bare PyTorch loop, data-pipeline wait, peak RSS.

Three measurements, one process each time on the CPU (``--threads``, default 1: on a machine
whose cores are shared with other jobs, more intra-op threads than free cores makes OpenMP
spin-wait and steps become 5-50x slower and erratic; set ``--threads 2`` on an idle 2-core box):

(a) **Loop overhead.** The same Unet + EfficientNet-Lite0 (11 classes), batch size, crop,
    AdamW parameter groups, ce+dice loss, grad-norm clipping (1.0) and per-step LR schedule,
    on ``--steps`` batches already in memory (synthetic tensors; speed does not depend on the
    pixel values), served by the same list-of-batches ``DataLoader``:

    * *bare*: ``for b in loader: zero_grad; loss(model(x), y).backward(); clip; opt.step();
      sched.step()`` timed around the loop;
    * *segtune*: :class:`~segtune.engine.module.SegTuneModule` in a ``lightning.Trainer`` built
      with the callbacks, plugins and Trainer arguments of :func:`segtune.engine.train.train`
      (StrategyCallback, HistoryCallback, best/last ``ModelCheckpoint``, ``ResumeCallback``,
      the epoch printer, ``AtomicCheckpointIO``, ``deterministic="warn"``,
      ``log_every_n_steps=1``, no progress bar as without a terminal), one epoch of the same
      batches and no validation; timed from ``on_train_start`` to ``on_train_end``, so the
      epoch-end ``last.ckpt`` save is included; Trainer construction and ``fit`` set-up are
      reported separately.

    Contenders alternate (bare, segtune, bare, segtune, ...) for ``--rounds`` rounds, each
    from the same initial weights; the ratio is the median of the per-round ratios
    (segtune images/s / bare images/s). Global flags Lightning sets (deterministic
    algorithms) are restored after each segtune round, so the bare loop runs plain.

(b) **Data wait.** Real CamVid (``examples/camvid.yaml``) through ``SegDataModule`` with the
    heavier training augmentation (default crop 384, batch 8, plus random rescale 0.5-2 and colour
    jitter 0.2 on top of the default crop + flip: the loader's worst case),
    training the real model with the bare loop: the time blocked in ``next(iterator)`` over
    the total step time, for ``num_workers`` 0, 1 and 2. The first step (worker start-up) is
    excluded and reported apart. *warm*: decoded images already in the RAM cache (as in every
    epoch after the first); *cold* (num_workers 0 only): the first steps of a run, decoding
    PNGs as they come. Without ``../shared/data/camvid`` a generated 480x360 data set is used.

(c) **Peak RSS** (``VmHWM``) of a short ``segtune.train`` run on CamVid at full resolution
    (scale 1.0, so 480x360 images are cropped to 384x384 without rescaling; the default
    crop/batch 384/8; validation and final evaluation on whole 480x360 images, padded to
    480x384) in a fresh process, with the decoded-image RAM cache already filled for all
    train and val images (what a run holds after its first epoch).

    python benchmarks/overhead.py --quick                  # ~1-2 minutes
    python benchmarks/overhead.py                          # ~10 minutes
    python benchmarks/overhead.py --write-results          # also benchmarks/overhead.json + its RESULTS.md section
    python benchmarks/overhead.py --from-json benchmarks/overhead.json   # the section from the JSON alone
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _common, also when loaded from the tests
import _common  # noqa: E402
from _common import REPO, RESULTS, machine, rss_mb  # noqa: E402

CAMVID_YAML = REPO / "examples" / "camvid.yaml"
CAMVID_DIR = REPO.parent / "shared" / "data" / "camvid"
MARK_START, MARK_END = "<!-- overhead:start -->", "<!-- overhead:end -->"
NUM_CLASSES, IGNORE = 11, 11

PROFILES = {
    # loop: batch, crop, steps, rounds; data: batch, crop, steps per worker count; rss: steps, crop, batch
    "quick": {"batch": 2, "crop": 256, "steps": 6, "rounds": 3,
              "data_batch": 4, "data_crop": 256, "data_steps": 4, "workers": (0, 1, 2),
              "rss_steps": 2, "rss_crop": 384, "rss_batch": 8, "max_images": 24},
    "default": {"batch": 4, "crop": 256, "steps": 12, "rounds": 5,
                "data_batch": 8, "data_crop": 384, "data_steps": 8, "workers": (0, 1, 2),
                "rss_steps": 3, "rss_crop": 384, "rss_batch": 8, "max_images": None},
}


# ----------------------------------------------------------------------------- helpers
def write_section(body: str, start: str = MARK_START, end: str = MARK_END, path: Path = RESULTS) -> None:
    """This script's RESULTS.md section (see :func:`_common.write_section`)."""
    _common.write_section(body, start, end, path)


@contextlib.contextmanager
def _torch_flags() -> Any:
    """Restore the global torch flags Lightning's Trainer changes (deterministic algorithms)."""
    import torch

    det = torch.are_deterministic_algorithms_enabled()
    warn = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn)
        torch.utils.deterministic.fill_uninitialized_memory = fill


# ----------------------------------------------------------------------------- (a) loop
def _setup_parts(model_template: Any, lr: float = 1e-3) -> tuple[Any, Any, Any, Any]:
    """A fresh copy of the model, its 'full' strategy, the ce+dice loss and the optimiser config."""
    from segtune.config import LossConfig, OptimConfig, StrategyConfig
    from segtune.losses import build_loss
    from segtune.strategies import build_strategy

    model = copy.deepcopy(model_template)
    strategy = build_strategy(model, StrategyConfig(name="full"), lr)
    loss = build_loss(LossConfig(), NUM_CLASSES, IGNORE, None)
    optim = OptimConfig(lr=lr)
    return model, strategy, loss, optim


def _batches(n: int, batch: int, crop: int, seed: int = 0) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, crop, crop, generator=g)
        y = torch.randint(0, NUM_CLASSES + 1, (batch, crop, crop), generator=g)  # 11 = ignore
        out.append({"image": x, "mask": y})
    return out


def run_bare(model_template: Any, loader: Any, steps: int, channels_last: bool = False) -> dict[str, float]:
    """Plain loop with the same optimiser groups, clipping and LR schedule as segtune.

    ``channels_last``: weights and inputs in NHWC, as segtune trains on a CPU.
    """
    import torch

    from segtune.engine.module import lr_lambda

    model, strategy, loss_fn, optim = _setup_parts(model_template)
    strategy.apply(model, 0)
    model.train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(strategy.param_groups(optim.weight_decay), lr=optim.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim.schedule, optim.warmup_steps, steps))
    params = [p for p in model.parameters() if p.requires_grad]
    n_img = 0
    t0 = time.perf_counter()
    for batch in loader:
        x, y = batch["image"], batch["mask"]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        opt.step()
        sched.step()
        n_img += x.shape[0]
    dt = time.perf_counter() - t0
    return {"seconds": dt, "images": n_img, "ips": n_img / dt}


def run_segtune(model_template: Any, loader: Any, batch: int, workdir: Path) -> dict[str, float]:
    """segtune's Lightning loop, built like :func:`segtune.engine.train.train` builds it."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from segtune.engine.callbacks import AtomicCheckpointIO, HistoryCallback, StrategyCallback
    from segtune.engine.module import SegTuneModule
    from segtune.engine.resume import InterruptHandler, ResumeCallback
    from segtune.engine.train import _EpochPrinter, _quiet_lightning

    _quiet_lightning()
    t_build = time.perf_counter()
    model, strategy, loss_fn, optim = _setup_parts(model_template)
    module = SegTuneModule(model, strategy, loss_fn, optim, NUM_CLASSES, IGNORE, [f"c{i}" for i in range(NUM_CLASSES)])
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    ckpt_dir = run_dir / "checkpoints"
    best_cb = ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor="val_miou", mode="max", save_top_k=1,
        save_last=True, auto_insert_metric_name=False, enable_version_counter=False,
    )
    dm_stub = SimpleNamespace(cfg=SimpleNamespace(batch_size=batch), set_train_position=lambda *a: None)
    resume_cb = ResumeCallback(ckpt_dir / "last.ckpt", dm_stub, 0, {}, InterruptHandler())

    class Timer(L.Callback):
        t0 = t1 = 0.0
        images = 0

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.images += int(batch["image"].shape[0])

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.t1 = time.perf_counter()

    timer = Timer()
    callbacks = [StrategyCallback(), HistoryCallback(run_dir), best_cb, resume_cb, _EpochPrinter(1), timer]
    import warnings

    with _torch_flags(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = L.Trainer(  # the arguments of engine/train.py (CPU, one process, no terminal)
            max_epochs=1, max_steps=-1, accelerator="cpu", devices=1, num_nodes=1, precision="32",
            callbacks=callbacks, logger=False, default_root_dir=str(run_dir),
            gradient_clip_val=optim.grad_clip or None, check_val_every_n_epoch=1,
            num_sanity_val_steps=0, enable_model_summary=False, enable_progress_bar=False,
            strategy="auto", plugins=[AtomicCheckpointIO()], deterministic="warn", log_every_n_steps=1,
        )
        t_fit = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        t_end = time.perf_counter()
    dt = timer.t1 - timer.t0
    return {"seconds": dt, "images": timer.images, "ips": timer.images / dt,
            "setup_s": (t_fit - t_build) + (timer.t0 - t_fit) + (t_end - timer.t1)}


def bench_loop(batch: int, crop: int, steps: int, rounds: int, log: Any = print) -> dict[str, Any]:
    """Alternate bare (NCHW), bare (NHWC) and segtune; the order rotates from round to round."""
    from torch.utils.data import DataLoader

    from segtune.models import create_model

    template = create_model("unet", "tf_efficientnet_lite0", num_classes=NUM_CLASSES, weights="none")
    batches = _batches(steps, batch, crop)
    loader = DataLoader(batches, batch_size=None, shuffle=False)  # a list of ready batches
    workdir = Path(tempfile.mkdtemp(prefix="segtune-overhead-"))
    one = DataLoader(batches[:1], batch_size=None)
    run_bare(template, one, 1)  # warm-up (allocator, kernels)
    run_bare(template, one, 1, channels_last=True)
    contenders = {
        "bare": lambda: run_bare(template, loader, steps),
        "bare_nhwc": lambda: run_bare(template, loader, steps, channels_last=True),
        "segtune": lambda: run_segtune(template, loader, batch, workdir),
    }
    names = list(contenders)
    rows = []
    log(f"(a) loop: batch {batch}, crop {crop}, {steps} steps per contender, {rounds} rounds")
    log(f"    {'round':>5} {'bare img/s':>11} {'bare NHWC':>10} {'segtune':>8} {'seg/bare':>9} {'seg/NHWC':>9} {'setup s':>8}")
    for r in range(rounds):
        order = names[r % 3:] + names[: r % 3]
        got = {name: contenders[name]() for name in order}
        a, n, b = got["bare"], got["bare_nhwc"], got["segtune"]
        row = {"round": r + 1, "bare_ips": a["ips"], "bare_nhwc_ips": n["ips"], "segtune_ips": b["ips"],
               "ratio": b["ips"] / a["ips"], "ratio_nhwc": b["ips"] / n["ips"], "setup_s": b["setup_s"]}
        rows.append(row)
        log(f"    {r + 1:>5} {a['ips']:>11.3f} {n['ips']:>10.3f} {b['ips']:>8.3f} {row['ratio']:>9.3f} "
            f"{row['ratio_nhwc']:>9.3f} {b['setup_s']:>8.2f}")
    res: dict[str, Any] = {"batch": batch, "crop": crop, "steps": steps, "rounds": rows}
    for k in ("bare_ips", "bare_nhwc_ips", "segtune_ips", "ratio", "ratio_nhwc", "setup_s"):
        res[k] = _common.median([r[k] for r in rows])
    log(f"    {'median':>5} {res['bare_ips']:>11.3f} {res['bare_nhwc_ips']:>10.3f} {res['segtune_ips']:>8.3f} "
        f"{res['ratio']:>9.3f} {res['ratio_nhwc']:>9.3f} {res['setup_s']:>8.2f}")
    shutil.rmtree(workdir, ignore_errors=True)  # run folders with checkpoints
    return res


# ----------------------------------------------------------------------------- (b) data
def _data_root(workdir: Path) -> tuple[Path, str]:
    """CamVid's dataset.yaml when present, else a generated 480x360 11-class stand-in."""
    if CAMVID_DIR.is_dir() and CAMVID_YAML.is_file():
        return CAMVID_YAML, "CamVid"
    import numpy as np
    from PIL import Image

    root = workdir / "camvid-like"
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / (split + "annot")).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = rng.integers(0, 255, (360, 480, 3), dtype=np.uint8)
            mask = rng.integers(0, NUM_CLASSES + 1, (360, 480), dtype=np.uint8)
            Image.fromarray(img).save(root / split / f"{i:04d}.png")
            Image.fromarray(mask).save(root / (split + "annot") / f"{i:04d}.png")
    classes = ", ".join(f"c{i}" for i in range(NUM_CLASSES))
    (root / "dataset.yaml").write_text(
        f"name: camvid-like\nclasses: [{classes}]\nignore_index: {IGNORE}\nmask_format: index\n"
        "splits:\n  train: {images: train, masks: trainannot}\n  val: {images: val, masks: valannot}\n"
    )
    return root / "dataset.yaml", "generated 480x360 stand-in (no ../shared/data/camvid)"


def _data_run(data: Path, workers: int, batch: int, crop: int, steps: int, warm: bool, model_template: Any,
              max_images: int | None = None) -> dict[str, Any]:
    import torch

    from segtune.config import DataConfig
    from segtune.data import SegDataModule, load_dataset_spec
    try:
        from segtune._tensor import cpu_channels_last
    except ImportError:  # before the helpers moved to segtune._tensor
        from segtune.inference.predictor import cpu_channels_last

    spec = load_dataset_spec(data)
    # the heavier augmentation (random rescale + colour jitter on top of segtune's default crop +
    # flip): the worst case for the loader
    cfg = DataConfig(root=str(data), batch_size=batch, crop_size=crop, num_workers=workers, cache="ram",
                     max_train_images=max_images, max_val_images=max_images,
                     scale_min=0.5, scale_max=2.0, color_jitter=0.2)
    model, strategy, loss_fn, optim = _setup_parts(model_template)
    dm = SegDataModule(spec, cfg, model.mean, model.std, seed=0)
    dm.setup()
    if warm:
        dm.train_dataset.preload(progress=False)  # before the workers fork: they share it
    strategy.apply(model, 0)
    model.train()
    cpu_channels_last(model, "cpu")  # the layout segtune trains in on a CPU
    opt = torch.optim.AdamW(strategy.param_groups(optim.weight_decay), lr=optim.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    loader = dm.train_dataloader()
    waits, computes = [], []
    it = iter(loader)
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        b = next(it)
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(b["image"].contiguous(memory_format=torch.channels_last)), b["mask"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
        opt.step()
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        computes.append(t2 - t1)
    del it, loader  # stops the (persistent) workers
    w, c = sum(waits[1:]), sum(computes[1:])
    return {"workers": workers, "warm": warm, "first_wait_s": waits[0], "wait_s": w, "step_s": (w + c) / steps,
            "wait_frac": w / (w + c), "wait_per_step_s": w / steps}


def bench_data(batch: int, crop: int, steps: int, workers: tuple[int, ...], log: Any = print,
               max_images: int | None = None) -> dict[str, Any]:
    from segtune.models import create_model

    workdir = Path(tempfile.mkdtemp(prefix="segtune-datawait-"))
    data, label = _data_root(workdir)
    template = create_model("unet", "tf_efficientnet_lite0", num_classes=NUM_CLASSES, weights="none")
    log(f"(b) data wait: {label}, crop {crop}, batch {batch}, real train augmentation, {steps} steps each "
        "(+1 excluded: worker start-up)")
    log(f"    {'workers':>7} {'cache':>5} {'wait/step s':>11} {'step s':>7} {'wait %':>7} {'1st wait s':>10}")
    rows = []
    plan = [(w, True) for w in workers] + [(0, False)]
    for w, warm in plan:
        r = _data_run(data, w, batch, crop, steps, warm, template, max_images)
        rows.append(r)
        log(f"    {w:>7} {'warm' if warm else 'cold':>5} {r['wait_per_step_s']:>11.3f} {r['step_s']:>7.2f} "
            f"{100 * r['wait_frac']:>6.1f}% {r['first_wait_s']:>10.2f}")
    shutil.rmtree(workdir, ignore_errors=True)
    return {"data": label, "batch": batch, "crop": crop, "steps": steps, "rows": rows,
            "augmentation": "rescale 0.5-2 + crop + flip + colour jitter 0.2"}


# ----------------------------------------------------------------------------- (c) RSS
def _child_rss(data: str, steps: int, crop: int, batch: int, max_images: int | None, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    _common.src_on_path()
    import segtune
    from segtune import _log
    from segtune.data import SegDataModule

    _log.set_quiet(True)
    setup = SegDataModule.setup

    def setup_and_fill(self: Any, stage: str | None = None) -> None:
        setup(self, stage)
        if not getattr(self, "_bench_filled", False):
            self._bench_filled = True
            self.preload(progress=False)  # the cache as it is after a first epoch

    SegDataModule.setup = setup_and_fill  # type: ignore[method-assign]
    out = tempfile.mkdtemp(prefix="segtune-rss-")
    cfg = {
        "data": {"root": data, "scale_min": 1.0, "scale_max": 1.0, "crop_size": crop, "batch_size": batch,
                 "max_train_images": max_images, "max_val_images": max_images},
        "train": {"max_steps": steps, "epochs": 1, "out": out, "name": "rss", "progress": False},
    }
    t0 = time.perf_counter()
    run = segtune.train(cfg)
    res = {"peak_mb": rss_mb("VmHWM"), "seconds": time.perf_counter() - t0,
           "train_images": run.summary.get("train_images"), "val_images": run.summary.get("val_images")}
    shutil.rmtree(out, ignore_errors=True)
    return res


def bench_rss(steps: int, crop: int, batch: int, max_images: int | None, threads: int, log: Any = print) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="segtune-rssdata-"))
    data, label = _data_root(workdir)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    args = [sys.executable, str(Path(__file__).resolve()), "--child-rss", str(data), str(steps), str(crop),
            str(batch), str(max_images or 0), str(threads)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    shutil.rmtree(workdir, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"RSS child failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    res.update(data=label, steps=steps, crop=crop, batch=batch, children_maxrss_mb=children_mb)
    log(f"(c) peak RSS: segtune.train on {label}, full resolution (scale 1.0, crop {crop}, batch {batch}), "
        f"{steps} steps + validation + final evaluation on {res['val_images']} val images, cache filled: "
        f"{res['peak_mb']:.0f} MB VmHWM ({res['seconds']:.0f} s)")
    return res


# ----------------------------------------------------------------------------- main
JSON_DEFAULT = HERE / "overhead.json"


def _section(res: dict[str, Any], json_path: Path | None = None) -> str:
    """The RESULTS.md section; every number in it comes from ``res`` (the JSON)."""
    src = f"; raw results `{_common.rel(json_path)}`" if json_path else ""
    lines = [
        "## Training overhead and data pipeline",
        "",
        f"`{res['command']}` ({res['seconds']:.0f} s; {res['machine']}; {res.get('date', '?')}{src}). "
        + _common.load_sentence(res.get("load")),
        "",
    ]
    lp = res.get("loop")
    if lp:
        nhwc_gain = _common.median([r["bare_nhwc_ips"] / r["bare_ips"] for r in lp["rounds"]])

        def rel_word(x: float) -> str:
            return "faster than it" if x > 1.02 else ("slower than it" if x < 0.98 else "about as fast as it, within 2%")

        lines += [
            f"**Loop overhead** (Unet + EfficientNet-Lite0, 11 classes, batch {lp['batch']}, crop {lp['crop']}, "
            f"AdamW, ce+dice, grad clip 1.0, cosine LR per step; {lp['steps']} in-memory batches per contender "
            f"per round, {len(lp['rounds'])} rounds, order rotating; segtune = SegTuneModule in the Trainer "
            "engine/train.py builds, with its callbacks, epoch-end `last.ckpt` save included, no validation):",
            "",
            "| round | bare loop img/s | bare loop NHWC img/s | segtune img/s | segtune / bare | segtune / bare NHWC | segtune fit set-up s |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in lp["rounds"]:
            lines.append(f"| {r['round']} | {r['bare_ips']:.3f} | {r['bare_nhwc_ips']:.3f} | {r['segtune_ips']:.3f} | "
                         f"{r['ratio']:.3f} | {r['ratio_nhwc']:.3f} | {r['setup_s']:.2f} |")
        lines += [
            f"| **median** | {lp['bare_ips']:.3f} | {lp['bare_nhwc_ips']:.3f} | {lp['segtune_ips']:.3f} | "
            f"**{lp['ratio']:.3f}** | **{lp['ratio_nhwc']:.3f}** | {lp['setup_s']:.2f} |",
            "",
            f"Both sides named: segtune trained at **{lp['ratio']:.2f}x** the speed of the plain bare loop "
            f"(NCHW tensors, as written by hand: segtune {rel_word(lp['ratio'])}) and at "
            f"**{lp['ratio_nhwc']:.2f}x** the speed of the same bare loop with weights and inputs in "
            f"channels-last (NHWC) layout, which segtune uses on a CPU (segtune {rel_word(lp['ratio_nhwc'])}); "
            f"the NHWC bare loop itself ran at {nhwc_gain:.2f}x the NCHW one (medians of per-round ratios). "
            "So segtune / bare is what a user sees against a hand-written NCHW loop, and segtune / bare NHWC "
            "is the cost or gain of the Lightning loop, callbacks and checkpoint alone, with the layout "
            "difference taken out. Set-up (Trainer construction, `fit` start and end) is paid once per run "
            "and is not in the rates.",
            "",
        ]
    dp = res.get("data")
    if dp:
        fr = [r["wait_frac"] for r in dp["rows"]]
        lines += [
            f"**Data wait** ({dp['data']}, `SegDataModule` train loader, crop {dp['crop']}, batch {dp['batch']}, "
            f"{dp.get('augmentation', 'rescale 0.5-2 + crop + flip + colour jitter 0.2')}, heavier than the default "
            f"crop + flip; the real model trains meanwhile; {dp['steps']} steps after the first; *warm* = decoded "
            "images in the RAM cache, *cold* = decoding PNGs as they come, as in a run's first epoch):",
            "",
            "| num_workers | cache | wait per step s | step s | wait fraction | first batch s |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for r in dp["rows"]:
            lines.append(f"| {r['workers']} | {'warm' if r['warm'] else 'cold'} | {r['wait_per_step_s']:.3f} | "
                         f"{r['step_s']:.2f} | {100 * r['wait_frac']:.1f}% | {r['first_wait_s']:.2f} |")
        lines += [
            "",
            f"Waiting for data took {100 * min(fr):.1f}-{100 * max(fr):.1f}% of a training step across these rows. "
            "The rows run one after another (not alternated), so their step times also differ by the machine's "
            "load; the wait fraction is the comparable number.",
            "",
        ]
    rp = res.get("rss")
    if rp:
        lines += [
            f"**Peak RSS** of `segtune.train` on {rp['data']} at full resolution (scale 1.0: 480x360 images "
            f"cropped to {rp['crop']}x{rp['crop']}, batch {rp['batch']}; {rp['steps']} steps, validation and final "
            f"evaluation on {rp['val_images']} whole val images padded to 480x384; decoded-image cache filled for all "
            f"{rp['train_images']} + {rp['val_images']} images): **{rp['peak_mb']:.0f} MB** (VmHWM, fresh process).",
            "",
        ]
    lines += [
        f"Threads: every number above uses {res['threads']} intra-op thread(s). With more threads than free cores, "
        "OpenMP threads spin-wait for cores that are taken; on a shared machine use `OMP_NUM_THREADS` / "
        "`torch.set_num_threads` no larger than the number of free cores (the size of that slow-down was a "
        "separate probe: no raw data kept, not reproduced here).",
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small settings (about 1-2 minutes)")
    ap.add_argument("--rounds", type=int, help="alternating rounds of the loop comparison")
    ap.add_argument("--steps", type=int, help="batches per contender and round (loop), per worker count (data), "
                    "at most this many in the RSS run")
    ap.add_argument("--batch", type=int, help="batch size of every part (default: loop 4, data and RSS 8)")
    ap.add_argument("--crop", type=int, help="crop size of every part (default: loop 256, data and RSS 384)")
    ap.add_argument("--max-images", type=int, help="use at most this many train and val images (data, RSS)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1; see the docstring)")
    ap.add_argument("--workers", type=str, help="data-wait worker counts, e.g. 0,1,2")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: loop,data,rss")
    ap.add_argument("--write-results", action="store_true",
                    help="write the raw results JSON (--json, default benchmarks/overhead.json) and the "
                         "RESULTS.md section generated from it")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--from-json", type=Path, metavar="FILE",
                    help="measure nothing: rewrite the RESULTS.md section from a JSON of an earlier run")
    ap.add_argument("--child-rss", nargs=6, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_rss:
        data, steps, crop, batch, max_images, threads = a.child_rss
        print(json.dumps(_child_rss(data, int(steps), int(crop), int(batch), int(max_images) or None, int(threads))))
        return {}
    if a.from_json:
        res = json.loads(a.from_json.read_text())
        write_section(_section(res, a.from_json))
        return res

    import torch

    torch.set_num_threads(a.threads)
    _common.src_on_path()
    from segtune import _log

    _log.set_quiet(True)
    p = dict(PROFILES["quick" if a.quick else "default"])
    if a.rounds is not None:
        p["rounds"] = a.rounds
    if a.steps is not None:
        p["steps"] = p["data_steps"] = a.steps
        p["rss_steps"] = min(p["rss_steps"], a.steps)
    if a.batch is not None:
        p["batch"] = p["data_batch"] = p["rss_batch"] = a.batch
    if a.crop is not None:
        p["crop"] = p["data_crop"] = p["rss_crop"] = a.crop
    if a.max_images is not None:
        p["max_images"] = a.max_images
    if a.workers:
        p["workers"] = tuple(int(w) for w in a.workers.split(","))
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    t0 = time.perf_counter()
    res: dict[str, Any] = {"profile": "quick" if a.quick else "default", "settings": p, "threads": a.threads,
                           "machine": machine(a.threads), "command": _common.command_line("overhead.py", argv),
                           "date": time.strftime("%Y-%m-%d"), "load": [_common.load_avg()]}
    print(res["machine"], flush=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    if "loop" not in skip:
        res["loop"] = bench_loop(p["batch"], p["crop"], p["steps"], p["rounds"], log)
    if "data" not in skip:
        res["data"] = bench_data(p["data_batch"], p["data_crop"], p["data_steps"], p["workers"], log, p["max_images"])
    if "rss" not in skip:
        res["rss"] = bench_rss(p["rss_steps"], p["rss_crop"], p["rss_batch"], p["max_images"], a.threads, log)
    res["seconds"] = time.perf_counter() - t0
    res["load"].append(_common.load_avg())
    print(f"total {res['seconds']:.0f} s", flush=True)
    json_path = a.json or (JSON_DEFAULT if a.write_results else None)
    if json_path:
        _common.save_json(json_path, res)
    if a.write_results:
        write_section(_section(json.loads(Path(json_path).read_text()), json_path))
    return res


if __name__ == "__main__":
    main()
