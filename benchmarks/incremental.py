"""Incremental updates (``segtune update``): class-incremental CamVid, data-incremental CamVid and EM membranes.

Four protocols, each a sequence of real ``segtune.train`` / ``segtune.update`` runs:

* ``6-5`` and ``6-1``: CamVid class-incremental, **overlapped** (docs/incremental.md section 1):
  classes 0-5 (Sky .. Tree) first, then 6-10 in one step (``6-5``) or one class per step
  (``6-1``, five updates). The images of a step are the CamVid train images that contain at
  least one of the step's classes (MiB's filter; an image can recur in later steps). Methods
  ``ft``, ``lwf``, ``mib``, ``plop``, ``ssul`` without replay, then one of them with replay
  (``--replay-method``; default ``best``: the best of those by final all-class mIoU, i.e.
  chosen on the val split it is scored on, which the report says), and **joint** training on all
  classes with the same model and the same total optimiser steps (the upper bound).
* ``data``: CamVid data-incremental: train on a seeded half of train, then update with the other
  half in 1 step and as a stream of 4 steps; ``lwf`` + replay (segtune's ``auto`` for new
  images) vs fine-tuning only (``ft``, no replay) vs retraining on all of train.
* ``membrane``: the same stream on ``../shared/data/membrane`` (ISBI 2012 EM): slices 0-11
  first, then 12-17, then 18-23; slices 24-29 are the held-out val (and forgetting guard) set
  of every run.

**Labels of the class-incremental steps** (CamVid has no background class: every labelled pixel
is one of the 11 classes, label 11 is void):

* step 0 is a plain ``segtune.train`` run on classes ``[background, Sky .. Tree]``: CamVid
  classes 0-5 keep their label (+1), pixels of classes 6-10 become ``background`` (0, "not a
  class of this step", as in MiB's step 0), void stays ignored. So the model has a *natural*
  background from step 0 and no synthetic one is added later.
* the data set of update step t lists ``[background, Sky .. <last class of step t>]`` (the run's
  classes in order, then the step's new ones: ``_kind`` in update.py) and labels every class seen
  so far; future classes are 0, void ignored. ``segtune update`` itself turns the old classes
  into background for training (overlapped protocol) and keeps full labels in the replay memory.
* val of every step: CamVid val listing all classes ``[background, Sky .. Bicyclist]`` passed
  as ``val=``; ``segtune update`` ignores the classes not learned yet. Label 0 never occurs in
  these masks (no CamVid pixel is background), so background predictions count as errors.
  Step 0's own val split labels classes 0-5 and ignores the rest, the same convention.
* joint: one ``segtune.train`` on the 11 CamVid classes as they are (no background class: no
  pixel would carry it), with the same total optimiser steps as the incremental sequence.
* metric convention (segtune's incremental.json): background excluded from old / new / all
  (as in MiB); classes not learned yet ignored. The protocol-level table uses old = classes
  0-5 and new = every class added after step 0 (the papers' 15-5 / 15-1 convention), computed
  from each final step's per-class IoU. As docs/incremental.md section 7 recommends suppressing
  background at inference once all classes are learned, the final model of every sequence is
  also scored with background suppressed (an extra evaluation, stored next to segtune's own).

**Budget**: every ``segtune.train`` (step 0, the data-incremental base and retrain, the
membrane base and retrain) runs ``--steps`` optimiser steps; every update runs
``--update-steps`` (default a third of ``--steps``: segtune's default budget for a first update,
pinned for every later update instead of shrinking along the chain). Joint gets step 0's steps
plus every update's. The time of "retraining on all data so far" is measured: a retrain uses
the same ``--steps`` whatever the data size, so for the class-incremental protocols it is the
step-0 run's time (a real ``--steps`` run of the same recipe on ~all train images), for data
and membrane the ``retrain`` run. Times are segtune's own (incremental.json ``seconds`` for
updates, metrics.json ``summary.seconds`` for trainings); wall times are stored too.

Everything else is segtune's defaults as a user gets them (``strategy: auto`` and its learning
rate at step 0, each update inheriting its parent's recipe, kd weight 10), one seed, no
validation during training (the final weights are scored), images and masks of CamVid
downscaled x0.5 once (the cache of ``transfer_curve.py``).

Outputs: ``benchmarks/incremental.json`` (every run's numbers, the commands, the machine, the
profile; written after each run, so ``--resume`` continues an interrupted session) and, with
``--write-results``, the section "Incremental updates" of ``benchmarks/RESULTS.md`` generated
from the JSON.

    python benchmarks/incremental.py --quick --only 6-1 --max-increments 2   # end-to-end check
    python benchmarks/incremental.py --resume --write-results                 # the full benchmark
    python benchmarks/incremental.py --report-only --write-results            # section from the JSON
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# see transfer_curve.py: idle OpenMP threads sleep instead of spinning on shared cores
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
CAMVID = SHARED / "camvid"
MEMBRANE = SHARED / "membrane"
RESULTS_MD = HERE / "RESULTS.md"
JSON_DEFAULT = HERE / "incremental.json"
START, END = "<!-- incremental:start -->", "<!-- incremental:end -->"
SECTION_TITLE = "## Incremental updates (class- and data-incremental)"

BACKGROUND = "background"
IGNORE = 255
CI_METHODS = ("ft", "lwf", "mib", "plop", "ssul")
#: CamVid's classes in index order (the report's names; the data sets read them from dataset.yaml)
CAMVID_NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                "Pedestrian", "Bicyclist"]
#: class-incremental protocols: the CamVid class indices learned at each step
CI_PROTOCOLS: dict[str, list[list[int]]] = {
    "6-5": [list(range(6)), list(range(6, 11))],
    "6-1": [list(range(6)), *[[c] for c in range(6, 11)]],
}
PROTOCOLS = ("6-5", "6-1", "data", "membrane")
DATA_STREAM = 4  # steps of the data-incremental CamVid stream
MEMBRANE_SLICES = {"base": range(0, 12), "stream": [range(12, 18), range(18, 24)], "val": range(24, 30)}
#: the issue's goals
GOAL_65, GOAL_61 = 0.95, 0.90  # best all-class mIoU >= this x joint
GOAL_TIME = 1 / 3  # each update <= this x the time of retraining on all data so far
GOAL_POINTS = 0.01  # data-incremental: update within 1 point of retrain
FT_FAR = 0.10  # "ft far below": at least 10 points under the best method (our reading of "far")

PROFILES: dict[str, dict[str, Any]] = {
    "full": {
        "scale": 0.5,  # CamVid 480x360 -> 240x180, as transfer_curve.py / fair_compare.py
        "crop": 128,
        "batch": 8,
        "steps": 600,  # every segtune.train run
        "update_steps": 200,  # every update (a third of a training run)
        "memory": 20,  # segtune's default replay memory
        "membrane_scale": 1.0,  # 512x512 slices as they are (membranes are 1-3 px thin)
        "membrane_memory": 4,  # a third of the 12 base slices (20 would replay all of them)
        "max_step_images": None,
        "max_val": None,
        "max_increments": None,
    },
    "quick": {
        "scale": 0.25,
        "crop": 64,
        "batch": 4,
        "steps": 3,
        "update_steps": 2,
        "memory": 2,
        "membrane_scale": 0.25,
        "membrane_memory": 2,
        "max_step_images": 6,  # per step (and 12 for the data-incremental split)
        "max_val": 4,
        "max_increments": None,
    },
}
SEED = 0
#: keys that must match for rows of an existing JSON to be reused or mixed in one report
PROFILE_KEYS = ("scale", "crop", "batch", "steps", "update_steps", "memory", "membrane_scale",
                "membrane_memory", "max_step_images", "max_val", "max_increments", "seed")


# =========================================================================== data
def _atomic_dir(dest: Path, build: Callable[[Path], None]) -> Path:
    """``dest``, built by ``build(tmp)`` in a temporary sibling and renamed (never half-built)."""
    if (dest / "dataset.yaml").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        build(tmp)
        try:
            tmp.rename(dest)
        except OSError:  # built by another process meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _yaml(path: Path, doc: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def _read_mask(path: Path) -> Any:
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        return np.array(im)


def _write_mask(path: Path, mask: Any) -> None:
    import numpy as np
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def _lut(mapping: dict[int, int]) -> Any:
    import numpy as np

    lut = np.full(256, IGNORE, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut


class CamVid:
    """The downscaled CamVid copy: file lists and per-image class presence (read once)."""

    def __init__(self, root: Path) -> None:
        import numpy as np
        import yaml

        self.root = root
        d = yaml.safe_load((root / "dataset.yaml").read_text())
        self.classes: list[str] = list(d["classes"])
        self.colors: list[list[int]] | None = d.get("colors")
        self.ignore = int(d["ignore_index"])
        self.splits = {s: (root / v["images"], root / v["masks"]) for s, v in d["splits"].items()}
        self.stems = {s: sorted(p.stem for p in self.splits[s][0].glob("*.png")) for s in ("train", "val")}
        self._present: dict[str, set[int]] = {}
        for stem in self.stems["train"]:
            m = _read_mask(self.mask("train", stem))
            self._present[stem] = {int(v) for v in np.unique(m) if int(v) < len(self.classes)}

    def image(self, split: str, stem: str) -> Path:
        return self.splits[split][0] / f"{stem}.png"

    def mask(self, split: str, stem: str) -> Path:
        return self.splits[split][1] / f"{stem}.png"

    def with_any(self, classes: list[int]) -> list[str]:
        """Train images containing at least one pixel of one of ``classes`` (MiB's filter)."""
        want = set(classes)
        return [s for s in self.stems["train"] if self._present[s] & want]


def _seeded(items: list[str], seed: int) -> list[str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [items[i] for i in rng.permutation(len(items))]


def _limit(items: list[str], n: int | None, seed: int) -> list[str]:
    """All of ``items``, or the first ``n`` of a seeded shuffle (kept in file order)."""
    if n is None or n >= len(items):
        return list(items)
    keep = set(_seeded(items, seed)[:n])
    return [s for s in items if s in keep]


def _write_split(cv: CamVid, tmp: Path, name: str, split: str, stems: list[str], lut: Any | None) -> None:
    """``tmp/<name>/{images,masks}``: images linked; masks through ``lut`` (None: linked as they are)."""
    (tmp / name / "images").mkdir(parents=True)
    (tmp / name / "masks").mkdir(parents=True)
    for s in stems:
        _link(cv.image(split, s), tmp / name / "images" / f"{s}.png")
        if lut is None:
            _link(cv.mask(split, s), tmp / name / "masks" / f"{s}.png")
        else:
            _write_mask(tmp / name / "masks" / f"{s}.png", lut[_read_mask(cv.mask(split, s))])


def _desc(name: str, classes: list[str], colors: list[list[int]] | None, ignore: int,
          splits: dict[str, str], mask_format: str = "index") -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "classes": classes}
    if colors is not None:
        d["colors"] = colors
    d.update({"ignore_index": ignore, "mask_format": mask_format,
              "splits": {s: {"images": f"{f}/images", "masks": f"{f}/masks"} for s, f in splits.items()}})
    return d


class ClassIncrementalData:
    """Per-step data sets of the class-incremental protocols (built once, cached)."""

    def __init__(self, cv: CamVid, cache: Path, prof: dict[str, Any]) -> None:
        self.cv, self.prof = cv, prof
        self.root = cache / (f"ci-x{prof['scale']:g}-n{prof['max_step_images']}-v{prof['max_val']}"
                             f"-s{prof['seed']}")
        self.val_stems = _limit(cv.stems["val"], prof["max_val"], prof["seed"])
        self.names = cv.classes
        self.colors = [[0, 0, 0], *cv.colors] if cv.colors else None

    def step_stems(self, proto: str, t: int) -> list[str]:
        classes = CI_PROTOCOLS[proto][t]
        return _limit(self.cv.with_any(classes), self.prof["max_step_images"], self.prof["seed"] + t)

    def _bg_lut(self, seen: int, future_to: int) -> Any:
        """CamVid index v -> v + 1 for v < seen, ``future_to`` for later classes, void ignored."""
        m = {v: v + 1 for v in range(seen)}
        m.update({v: future_to for v in range(seen, len(self.names))})
        return _lut(m)

    def step0(self) -> Path:
        """Step 0: ``[background, classes 0-5]``; classes 6-10 are background in train, ignored in val."""
        k = len(CI_PROTOCOLS["6-5"][0])
        assert all(CI_PROTOCOLS[p][0] == CI_PROTOCOLS["6-5"][0] for p in CI_PROTOCOLS)

        def build(tmp: Path) -> None:
            _write_split(self.cv, tmp, "train", "train", self.step_stems("6-5", 0), self._bg_lut(k, 0))
            _write_split(self.cv, tmp, "val", "val", self.val_stems, self._bg_lut(k, IGNORE))
            _yaml(tmp / "dataset.yaml", _desc("camvid classes 0-5 (step 0)", [BACKGROUND, *self.names[:k]],
                                              self.colors[: k + 1] if self.colors else None, IGNORE,
                                              {"train": "train", "val": "val"}))

        return _atomic_dir(self.root / "step0", build)

    def val_all(self) -> Path:
        """CamVid val with every class ``[background, 0..10]`` (label 0 never occurs)."""
        n = len(self.names)

        def build(tmp: Path) -> None:
            _write_split(self.cv, tmp, "val", "val", self.val_stems, self._bg_lut(n, IGNORE))
            # segtune's data check wants a train split in every data set: the same val pairs
            _yaml(tmp / "dataset.yaml", _desc("camvid val, all classes", [BACKGROUND, *self.names],
                                              self.colors, IGNORE, {"train": "val", "val": "val"}))

        return _atomic_dir(self.root / "val-all", build)

    def step(self, proto: str, t: int) -> Path:
        """Update step ``t`` (>= 1): every class seen so far labelled, future classes 0."""
        seen = max(CI_PROTOCOLS[proto][t]) + 1

        def build(tmp: Path) -> None:
            _write_split(self.cv, tmp, "train", "train", self.step_stems(proto, t), self._bg_lut(seen, 0))
            _yaml(tmp / "dataset.yaml", _desc(f"camvid {proto} step {t}", [BACKGROUND, *self.names[:seen]],
                                              self.colors[: seen + 1] if self.colors else None, IGNORE,
                                              {"train": "train"}))

        return _atomic_dir(self.root / f"{proto}-step{t}", build)

    def joint(self, proto: str, last: int) -> Path:
        """All classes up to step ``last``, as CamVid labels them (no background), on the union of
        the steps' images."""
        seen = max(CI_PROTOCOLS[proto][last]) + 1
        stems = sorted({s for t in range(last + 1) for s in self.step_stems(proto, t)})
        lut = _lut({v: v for v in range(seen)})

        def build(tmp: Path) -> None:
            _write_split(self.cv, tmp, "train", "train", stems, lut)
            _write_split(self.cv, tmp, "val", "val", self.val_stems, lut)
            _yaml(tmp / "dataset.yaml", _desc(f"camvid {proto} joint", self.names[:seen],
                                              self.cv.colors[:seen] if self.cv.colors else None, IGNORE,
                                              {"train": "train", "val": "val"}))

        return _atomic_dir(self.root / f"{proto}-joint-k{seen}", build)


class DataIncrementalData:
    """CamVid split in a seeded half (base) and the other half (1 chunk, or a stream of 4)."""

    def __init__(self, cv: CamVid, cache: Path, prof: dict[str, Any]) -> None:
        self.cv, self.prof = cv, prof
        n = None if prof["max_step_images"] is None else 2 * prof["max_step_images"]
        pool = _seeded(_limit(cv.stems["train"], n, prof["seed"]), prof["seed"])
        half = (len(pool) + 1) // 2
        self.base_stems, self.rest_stems = sorted(pool[:half]), pool[half:]
        k = len(self.rest_stems)
        bounds = [round(i * k / DATA_STREAM) for i in range(DATA_STREAM + 1)]
        self.chunks = [sorted(self.rest_stems[bounds[i]:bounds[i + 1]]) for i in range(DATA_STREAM)]
        self.val_stems = _limit(cv.stems["val"], prof["max_val"], prof["seed"])
        self.root = cache / (f"data-x{prof['scale']:g}-n{prof['max_step_images']}-v{prof['max_val']}"
                             f"-s{prof['seed']}")

    def folder(self, name: str, stems: list[str]) -> Path:
        def build(tmp: Path) -> None:
            _write_split(self.cv, tmp, "train", "train", sorted(stems), None)
            _write_split(self.cv, tmp, "val", "val", self.val_stems, None)
            _yaml(tmp / "dataset.yaml", _desc(f"camvid {name}", self.cv.classes, self.cv.colors,
                                              self.cv.ignore, {"train": "train", "val": "val"}))

        return _atomic_dir(self.root / name, build)

    def base(self) -> Path:
        return self.folder("base", self.base_stems)

    def rest(self) -> Path:
        return self.folder("rest", self.rest_stems)

    def chunk(self, i: int) -> Path:
        return self.folder(f"rest-{i + 1}of{DATA_STREAM}", self.chunks[i])

    def all(self) -> Path:
        return self.folder("all", self.base_stems + self.rest_stems)


class MembraneData:
    """ISBI 2012 slices by index: 0-11 base, 12-17 and 18-23 the stream, 24-29 val."""

    def __init__(self, src: Path, cache: Path, prof: dict[str, Any]) -> None:
        import yaml

        self.src, self.prof = src, prof
        self.desc = yaml.safe_load((src / "dataset.yaml").read_text())
        sp = self.desc["splits"]["train"]
        self.images, self.masks = src / sp["images"], src / sp["masks"]
        self.scale = float(prof["membrane_scale"])
        self.root = cache / f"membrane-x{self.scale:g}"

    def _put(self, src: Path, dst: Path, is_mask: bool) -> None:
        if self.scale == 1:
            _link(src, dst)
            return
        from PIL import Image

        with Image.open(src) as im:
            size = (max(1, round(im.width * self.scale)), max(1, round(im.height * self.scale)))
            (im.resize(size, Image.Resampling.NEAREST) if is_mask
             else im.resize(size, Image.Resampling.BILINEAR)).save(dst)

    def folder(self, name: str, slices: range | list[int]) -> Path:
        def build(tmp: Path) -> None:
            for split, ids in (("train", list(slices)), ("val", list(MEMBRANE_SLICES["val"]))):
                (tmp / split / "images").mkdir(parents=True)
                (tmp / split / "masks").mkdir(parents=True)
                for i in ids:
                    self._put(self.images / f"{i}.png", tmp / split / "images" / f"{i}.png", False)
                    self._put(self.masks / f"{i}.png", tmp / split / "masks" / f"{i}.png", True)
            d = {k: v for k, v in self.desc.items() if k != "splits"}
            d["name"] = f"{self.desc.get('name', 'membrane')} {name}"
            d["splits"] = {"train": {"images": "train/images", "masks": "train/masks"},
                           "val": {"images": "val/images", "masks": "val/masks"}}
            _yaml(tmp / "dataset.yaml", d)

        return _atomic_dir(self.root / name, build)

    def base(self) -> Path:
        return self.folder("slices-0-11", MEMBRANE_SLICES["base"])

    def chunk(self, i: int) -> Path:
        r = MEMBRANE_SLICES["stream"][i]
        return self.folder(f"slices-{r.start}-{r.stop - 1}", r)

    def all(self) -> Path:
        return self.folder("slices-0-23", range(0, 24))


# =========================================================================== runs
FAST = {"train.epochs": 1_000_000, "train.val_every": 1_000_000, "train.early_stopping": 0,
        "train.num_overlays": 0, "train.progress": False}


def _per_class(metrics: dict[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for c in metrics.get("per_class", []):
        v = c.get("iou")
        out[str(c["name"])] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return out


def _has_model(run: str | None) -> bool:
    return bool(run) and (Path(run) / "model.safetensors").is_file() and (Path(run) / "model.yaml").is_file()


def _clean(run_dir: Path) -> None:
    """Drop the checkpoints (the weights stay: later updates start from them)."""
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def train_run(data: Path, out: Path, name: str, steps: int, prof: dict[str, Any]) -> dict[str, Any]:
    """A plain ``segtune.train`` run with segtune's defaults and a fixed step budget."""
    import segtune
    from segtune.config import Config

    shutil.rmtree(out / name, ignore_errors=True)
    cfg = Config()
    cfg.data.root = str(data)
    cfg.data.crop_size = prof["crop"]
    cfg.data.batch_size = prof["batch"]
    cfg.train.seed = prof["seed"]
    cfg.train.max_steps = steps
    cfg.train.epochs = FAST["train.epochs"]
    cfg.train.val_every = FAST["train.val_every"]
    cfg.train.early_stopping = 0
    cfg.train.num_overlays = 0
    cfg.train.progress = False
    cfg.train.out = str(out)
    cfg.train.name = name
    cfg.train.overwrite = True
    t0 = time.perf_counter()
    run = segtune.train(cfg)
    wall = time.perf_counter() - t0
    resolved = Config.from_yaml(run.dir / "config.yaml")
    _clean(run.dir)
    s = run.summary
    return {
        "kind": "train", "run": str(run.dir), "data": str(data),
        "miou": run.metrics["miou"], "per_class": _per_class(run.metrics),
        "seconds": float(s.get("seconds") or wall), "wall_seconds": round(wall, 1),
        "steps": s.get("steps"), "train_images": s.get("train_images"), "val_images": s.get("val_images"),
        "settings": {"strategy": resolved.strategy.name, "lr": resolved.optim.lr, "loss": resolved.loss.name,
                     "class_weights": resolved.loss.class_weights, "schedule": resolved.optim.schedule,
                     "feature_cache": s.get("feature_cache")},
    }


def update_run(parent: str | Path, data: Path, out: Path, name: str, method: str, memory: int,
               prof: dict[str, Any], val: Path | None = None, old_data: Path | None = None) -> dict[str, Any]:
    """One ``segtune.update`` step with the benchmark's budget; its incremental.json numbers."""
    import segtune

    shutil.rmtree(out / name, ignore_errors=True)
    overrides = {**FAST, "train.max_steps": prof["update_steps"]}
    t0 = time.perf_counter()
    run = segtune.update(parent, data, method=method, memory=memory, val=val, old_data=old_data,
                         out=out, name=name, overrides=overrides, progress=False)
    wall = time.perf_counter() - t0
    _clean(run.dir)
    inc = json.loads((run.dir / "incremental.json").read_text())
    s = run.summary
    return {
        "kind": "update", "run": str(run.dir), "parent": str(parent), "data": str(data),
        "method_used": method, "memory": memory, "counts": inc.get("counts"),
        "miou": run.metrics["miou"], "per_class": _per_class(run.metrics),
        "old": inc.get("old"), "new": inc.get("new"), "all": inc.get("all"), "hiou": inc.get("hiou"),
        "background_iou": inc.get("background"), "mean_forgetting": inc.get("mean_forgetting"),
        "convention": inc.get("convention"),
        "seconds": float(inc.get("seconds") or wall), "wall_seconds": round(wall, 1),
        "steps": s.get("steps"), "train_images": s.get("train_images"), "val_images": s.get("val_images"),
    }


def eval_suppressed(run_dir: str | Path) -> dict[str, float | None]:
    """Per-class IoU of ``run_dir``'s model on its own step's val data with background never predicted."""
    from torch.utils.data import DataLoader

    from segtune.data import SegDataset, eval_transforms, find_pairs, load_dataset_spec, pad_collate
    from segtune.engine.evaluate import evaluate_model
    from segtune.models.modelfile import load_model

    model, meta = load_model(run_dir)
    spec = load_dataset_spec(Path(run_dir) / "step_data")
    s = spec.splits["val"]
    pairs, _ = find_pairs(s.images, s.masks)
    norm = meta["normalization"]
    ds = SegDataset(pairs, spec, eval_transforms(norm["mean"], norm["std"], spec.ignore_index), cache=False)
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=lambda b: pad_collate(b, spec.ignore_index))
    m = evaluate_model(model, loader, spec.num_classes, spec.ignore_index, list(spec.classes), "cpu", suppress=[0])
    return _per_class(m)


def protocol_scores(per_class: dict[str, float | None], old: list[str], new: list[str]) -> dict[str, float | None]:
    """Old (step-0 classes) / new (every later class) / all mIoU and hIoU, background excluded."""
    from segtune.incremental.report import step_scores

    s = step_scores(per_class, old, new, background=BACKGROUND)
    return {k: s[k] for k in ("old", "new", "all", "hiou")}


# =========================================================================== JSON
def machine() -> dict[str, Any]:
    from transfer_curve import machine as tc_machine

    return tc_machine()


def load_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def same_profile(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in PROFILE_KEYS)


class Bench:
    """The JSON document, the run folders and the resume rules of one invocation."""

    def __init__(self, doc: dict[str, Any], json_path: Path, runs: Path, resume: bool) -> None:
        self.doc, self.json_path, self.runs, self.resume = doc, json_path, runs, resume
        self.prof = doc["profile"]
        self.fresh: set[tuple[str, str, int]] = set()  # rows (re)computed by this invocation
        self.count = 0
        self.t0 = time.perf_counter()

    def row(self, proto: str, method: str, step: int) -> dict[str, Any] | None:
        for r in self.doc["rows"]:
            if (r["protocol"], r["method"], r["step"]) == (proto, method, step):
                return r
        return None

    def put(self, proto: str, method: str, step: int, row: dict[str, Any], load0: float) -> dict[str, Any]:
        row = {"protocol": proto, "method": method, "step": step, **row,
               "load": [round(load0, 2), round(_load(), 2)], "date": _dt.datetime.now().isoformat(timespec="seconds")}
        self.doc["rows"] = [r for r in self.doc["rows"] if (r["protocol"], r["method"], r["step"]) != (proto, method, step)]
        self.doc["rows"].append(row)
        self.doc["meta"]["updated"] = _dt.date.today().isoformat()
        from _common import save_json

        save_json(self.json_path, self.doc)
        self.fresh.add((proto, method, step))
        self.count += 1
        el = time.perf_counter() - self.t0
        ci = "protocol_scores" in row
        score = row["protocol_scores"]["all"] if ci else row.get("miou")
        print(f"[{self.count}] {proto} {method} step {step}: {_pct(score)} "
              f"({'all-class, background excluded' if ci else 'val'} mIoU) in {row['seconds']:.0f} s; "
              f"{el / 60:.1f} min so far", flush=True)
        return row

    def reusable(self, proto: str, method: str, step: int, need_model: bool) -> dict[str, Any] | None:
        """The stored row when it need not be run again (this invocation, or ``--resume``)."""
        r = self.row(proto, method, step)
        if r is None or ((proto, method, step) not in self.fresh and not self.resume):
            return None
        if need_model and not _has_model(r.get("run")):
            return None
        return r

    def ensure_train(self, proto: str, method: str, data: Callable[[], Path], steps: int,
                     need_model: bool = True) -> dict[str, Any]:
        r = self.reusable(proto, method, 0, need_model)
        if r is not None:
            return r
        print(f"--- {proto} {method}: segtune.train, {steps} steps", flush=True)
        load0 = _load()
        row = train_run(data(), self.runs / proto, method, steps, self.prof)
        return self.put(proto, method, 0, row, load0)

    def chain(self, proto: str, method: str, n: int, base: Callable[[], dict[str, Any]],
              step: Callable[[int, str], dict[str, Any]]) -> None:
        """Steps 1..n of one update sequence; continues from the last step whose row (and, when a
        later step still has to run, whose run folder) is there."""
        have = 0
        while have < n and self.reusable(proto, method, have + 1, need_model=False) is not None:
            have += 1
        if have == n:
            return
        while have > 0 and not _has_model(self.row(proto, method, have)["run"]):
            have -= 1  # its weights are gone: redo it (CPU runs with one seed repeat exactly)
        parent = self.row(proto, method, have)["run"] if have else base()["run"]
        for t in range(have + 1, n + 1):
            print(f"--- {proto} {method}: update step {t} of {n}", flush=True)
            load0 = _load()
            row = self.put(proto, method, t, step(t, parent), load0)
            parent = row["run"]


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("nan")


# =========================================================================== protocols
def n_increments(proto: str, prof: dict[str, Any]) -> int:
    n = len(CI_PROTOCOLS[proto]) - 1
    return n if prof.get("max_increments") is None else min(n, int(prof["max_increments"]))


def ci_budget(proto: str, prof: dict[str, Any]) -> int:
    return prof["steps"] + n_increments(proto, prof) * prof["update_steps"]


def run_class_incremental(b: Bench, proto: str, ci: ClassIncrementalData, methods: list[str],
                          replay: str) -> None:
    prof = b.prof
    n = n_increments(proto, prof)
    base = lambda: b.ensure_train("ci-base", "base", ci.step0, prof["steps"])  # noqa: E731
    b.ensure_train(proto, "joint", lambda: ci.joint(proto, n), ci_budget(proto, prof), need_model=False)
    val = ci.val_all()
    out = b.runs / proto
    names = ci.names
    old = names[: len(CI_PROTOCOLS[proto][0])]
    new = [names[c] for t in range(1, n + 1) for c in CI_PROTOCOLS[proto][t]]

    def make(method: str, label: str, memory: int) -> Callable[[int, str], dict[str, Any]]:
        def step(t: int, parent: str) -> dict[str, Any]:
            row = update_run(parent, ci.step(proto, t), out, f"{label}-s{t}", method, memory, prof, val=val,
                             old_data=ci.step0() if (memory and t == 1) else None)
            row["classes_added"] = [names[c] for c in CI_PROTOCOLS[proto][t]]
            row["protocol_scores"] = protocol_scores(row["per_class"], old, [c for c in new if c in row["per_class"]])
            if t == n:
                sup = eval_suppressed(row["run"])
                row["suppressed"] = {"per_class": sup, **protocol_scores(sup, old, new)}
            return row
        return step

    for m in methods:
        b.chain(proto, m, n, base, make(m, m, 0))
    if replay == "none":
        return
    if replay == "best":
        finals = [(r["protocol_scores"]["all"], r["method"]) for r in b.doc["rows"]
                  if r["protocol"] == proto and r["method"] in CI_METHODS and r["step"] == n
                  and r.get("protocol_scores", {}).get("all") is not None]
        if not finals:
            print(f"{proto}: no finished method to add replay to", flush=True)
            return
        chosen = max(finals)[1]
        how = "best of the methods without replay by final all-class val mIoU (chosen on the val split it is scored on)"
    else:
        chosen, how = replay, "fixed before the run (--replay-method)"
    label = f"{chosen}+replay"
    b.chain(proto, label, n, base, make(chosen, label, prof["memory"]))
    for t in range(1, n + 1):
        r = b.row(proto, label, t)
        if r is not None and r.get("replay_choice") != how:
            r["replay_choice"] = how
    from _common import save_json

    save_json(b.json_path, b.doc)


def run_data_incremental(b: Bench, di: DataIncrementalData) -> None:
    prof, proto = b.prof, "data"
    out = b.runs / proto
    base = lambda: b.ensure_train(proto, "base", di.base, prof["steps"])  # noqa: E731
    b.ensure_train(proto, "retrain", di.all, prof["steps"], need_model=False)

    def make(method: str, label: str, memory: int, chunk: Callable[[int], Path]) -> Callable[[int, str], dict[str, Any]]:
        def step(t: int, parent: str) -> dict[str, Any]:
            return update_run(parent, chunk(t), out, f"{label}-s{t}", method, memory, prof,
                              old_data=di.base() if (memory and t == 1) else None)
        return step

    b.chain(proto, "update-1step", 1, base, make("lwf", "update-1step", prof["memory"], lambda t: di.rest()))
    b.chain(proto, "ft-1step", 1, base, make("ft", "ft-1step", 0, lambda t: di.rest()))
    b.chain(proto, "update-stream", DATA_STREAM, base,
            make("lwf", "update-stream", prof["memory"], lambda t: di.chunk(t - 1)))
    b.chain(proto, "ft-stream", DATA_STREAM, base, make("ft", "ft-stream", 0, lambda t: di.chunk(t - 1)))


def run_membrane(b: Bench, md: MembraneData) -> None:
    prof, proto = b.prof, "membrane"
    out = b.runs / proto
    base = lambda: b.ensure_train(proto, "base", md.base, prof["steps"])  # noqa: E731
    b.ensure_train(proto, "retrain", md.all, prof["steps"], need_model=False)
    n = len(MEMBRANE_SLICES["stream"])

    def make(method: str, label: str, memory: int) -> Callable[[int, str], dict[str, Any]]:
        def step(t: int, parent: str) -> dict[str, Any]:
            return update_run(parent, md.chunk(t - 1), out, f"{label}-s{t}", method, memory, prof,
                              old_data=md.base() if (memory and t == 1) else None)
        return step

    b.chain(proto, "update-stream", n, base, make("lwf", "update-stream", prof["membrane_memory"]))
    b.chain(proto, "ft-stream", n, base, make("ft", "ft-stream", 0))


# =========================================================================== report
def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _pts(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:+.1f}"


def _r(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _rows(doc: dict[str, Any], proto: str, method: str) -> list[dict[str, Any]]:
    return sorted((r for r in doc["rows"] if r["protocol"] == proto and r["method"] == method), key=lambda r: r["step"])


def _get(doc: dict[str, Any], proto: str, method: str, step: int) -> dict[str, Any] | None:
    for r in doc["rows"]:
        if (r["protocol"], r["method"], r["step"]) == (proto, method, step):
            return r
    return None


def ci_summary(doc: dict[str, Any], proto: str) -> dict[str, Any]:
    """Per chain: final protocol scores, ratio to joint, per-step all, max update time ratio."""
    prof = doc["profile"]
    n = n_increments(proto, prof)
    joint = _get(doc, proto, "joint", 0)
    base = _get(doc, "ci-base", "base", 0)
    retrain_s = base["seconds"] if base else None
    jscores = None
    if joint is not None:
        names = list(joint["per_class"])
        k0 = len(CI_PROTOCOLS[proto][0])
        jscores = protocol_scores(joint["per_class"], names[:k0], names[k0:])
    chains = []
    labels = [m for m in CI_METHODS] + sorted({r["method"] for r in doc["rows"]
                                                if r["protocol"] == proto and r["method"].endswith("+replay")})
    for m in labels:
        rows = _rows(doc, proto, m)
        if not rows:
            continue
        final = rows[-1] if rows[-1]["step"] == n else None
        ps = final["protocol_scores"] if final else {}
        ratios = [_ratio(r["seconds"], retrain_s) for r in rows]
        chains.append({
            "method": m, "complete": final is not None, "steps_done": len(rows),
            "old": ps.get("old"), "new": ps.get("new"), "all": ps.get("all"), "hiou": ps.get("hiou"),
            "all_vs_joint": _ratio(ps.get("all"), jscores["all"] if jscores else None),
            "suppressed_all": (final or {}).get("suppressed", {}).get("all"),
            "all_by_step": [r.get("all") for r in rows],
            "max_update_s": max(r["seconds"] for r in rows),
            "max_time_ratio": max((x for x in ratios if x is not None), default=None),
            "memory": rows[0].get("memory"), "replay_choice": rows[0].get("replay_choice"),
        })
    return {"n": n, "joint": joint, "joint_scores": jscores, "base": base, "retrain_s": retrain_s, "chains": chains}


def ci_table(doc: dict[str, Any], proto: str) -> list[str]:
    s = ci_summary(doc, proto)
    names = CAMVID_NAMES
    k0 = len(CI_PROTOCOLS[proto][0])
    last = max(CI_PROTOCOLS[proto][s["n"]]) if s["n"] else k0 - 1
    out = [f"**{proto}** ({s['n']} update step{'s' if s['n'] != 1 else ''} after step 0; old = "
           f"{names[0]}..{names[k0 - 1]}, new = {names[k0]}..{names[last]}; mIoU x 100 on CamVid val):", "",
           "| method | replay memory | old | new | all | hIoU | all / joint | all, background suppressed | "
           "all after each step | slowest update s | update / retrain time |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for c in s["chains"]:
        steps = " / ".join(_pct(v) for v in c["all_by_step"])
        if not c["complete"]:
            steps += f" (incomplete: {c['steps_done']} of {s['n']})"
        out.append(f"| {c['method']} | {c['memory']} | {_pct(c['old'])} | {_pct(c['new'])} | {_pct(c['all'])} | "
                   f"{_pct(c['hiou'])} | {_r(c['all_vs_joint'])} | {_pct(c['suppressed_all'])} | {steps} | "
                   f"{c['max_update_s']:.0f} | {_r(c['max_time_ratio'])} |")
    j, js = s["joint"], s["joint_scores"]
    if j is not None and js is not None:
        out.append(f"| joint ({j['steps']} steps) | - | {_pct(js['old'])} | {_pct(js['new'])} | {_pct(js['all'])} | "
                   f"{_pct(js['hiou'])} | 1.00 | - | - | {j['seconds']:.0f} (training) | - |")
    return out


def ci_findings(doc: dict[str, Any], proto: str) -> list[str]:
    s = ci_summary(doc, proto)
    goal = GOAL_65 if proto == "6-5" else GOAL_61
    done = [c for c in s["chains"] if c["complete"] and c["all"] is not None]
    js = s["joint_scores"]
    if not done or js is None:
        return [f"{proto}: not complete yet (no finished sequence or no joint run); goals not assessed."]
    best = max(done, key=lambda c: c["all"])
    lines = []
    r = best["all_vs_joint"]
    lines.append(
        f"{proto}, accuracy goal (best all-class mIoU >= {goal:.2f}x joint): best {best['method']} "
        f"{_pct(best['all'])} vs joint {_pct(js['all'])} = {_r(r)}x: "
        + ("**met**." if r is not None and r >= goal else "**not met**.")
        + (" (Its replay method was chosen on the same val split, see the table.)"
           if best["method"].endswith("+replay") and "val split" in (best.get("replay_choice") or "") else ""))
    sup = [c for c in done if c["suppressed_all"] is not None]
    if sup:
        bs = max(sup, key=lambda c: c["suppressed_all"])
        rs = _ratio(bs["suppressed_all"], js["all"])
        lines.append(f"{proto}, with background suppressed at inference (docs/incremental.md section 7; not what "
                     f"segtune does for a natural background): best {bs['method']} {_pct(bs['suppressed_all'])} = "
                     f"{_r(rs)}x joint: goal " + ("met." if rs is not None and rs >= goal else "not met."))
    ft = next((c for c in done if c["method"] == "ft"), None)
    if ft is not None and ft is not best:
        gap = best["all"] - ft["all"]
        lines.append(f"{proto}, ft: {_pct(ft['all'])} = {_r(ft['all_vs_joint'])}x joint, {100 * gap:.1f} points "
                     f"below the best: " + (f"far below (>= {100 * FT_FAR:.0f} points)." if gap >= FT_FAR
                                             else f"NOT far below (< {100 * FT_FAR:.0f} points)."))
    if s["retrain_s"]:
        ok = [c["method"] for c in s["chains"] if c["max_time_ratio"] is not None and c["max_time_ratio"] <= GOAL_TIME]
        no = [f"{c['method']} ({_r(c['max_time_ratio'])})" for c in s["chains"]
              if c["max_time_ratio"] is not None and c["max_time_ratio"] > GOAL_TIME]
        lines.append(
            f"{proto}, time goal (every update <= 1/3 of retraining on all data so far; retrain = the measured "
            f"step-0 run, {s['base']['steps']} steps, {s['retrain_s']:.0f} s): best {best['method']}: slowest update "
            f"{best['max_update_s']:.0f} s = {_r(best['max_time_ratio'])}x: "
            + ("**met**" if best["max_time_ratio"] is not None and best["max_time_ratio"] <= GOAL_TIME else "**not met**")
            + f"; met by: {', '.join(ok) or 'none'}; not met by: {', '.join(no) or 'none'}.")
    return lines


def stream_summary(doc: dict[str, Any], proto: str) -> dict[str, Any]:
    retrain = _get(doc, proto, "retrain", 0)
    base = _get(doc, proto, "base", 0)
    out = []
    for label in ("update-1step", "ft-1step", "update-stream", "ft-stream"):
        rows = _rows(doc, proto, label)
        if not rows:
            continue
        total = sum(r["seconds"] for r in rows)
        rs = retrain["seconds"] if retrain else None
        out.append({
            "label": label, "method": rows[0].get("method_used"), "memory": rows[0].get("memory"),
            "steps_done": len(rows), "miou": rows[-1]["miou"], "by_step": [r["miou"] for r in rows],
            "delta": None if retrain is None else rows[-1]["miou"] - retrain["miou"],
            "max_s": max(r["seconds"] for r in rows), "total_s": total,
            "max_ratio": _ratio(max(r["seconds"] for r in rows), rs), "total_ratio": _ratio(total, rs),
            "images": [(r.get("counts") or {}).get("new_train") for r in rows],
            "replayed": [(r.get("counts") or {}).get("memory") for r in rows],
        })
    return {"retrain": retrain, "base": base, "contenders": out}


def stream_table(doc: dict[str, Any], proto: str, title: str) -> list[str]:
    s = stream_summary(doc, proto)
    lines = [title, "", "| contender | method, replay memory | new images per step (+ replayed) | val mIoU "
             "after each step | final val mIoU | vs retrain (points) | slowest update s | update / retrain time | "
             "all updates / retrain time |", "|---|---|---|---|---:|---:|---:|---:|---:|"]
    b, r = s["base"], s["retrain"]
    if b is not None:
        lines.append(f"| base ({b['train_images']} images, {b['steps']} steps) | train | - | - | {_pct(b['miou'])} | "
                     f"{_pts(None if r is None else b['miou'] - r['miou'])} | - | - | - |")
    for c in s["contenders"]:
        imgs = ", ".join(f"{i}" + (f" (+{m})" if m else "") for i, m in zip(c["images"], c["replayed"], strict=True))
        lines.append(f"| {c['label']} | {c['method']}, {c['memory']} | {imgs} | "
                     f"{' / '.join(_pct(v) for v in c['by_step'])} | {_pct(c['miou'])} | "
                     f"{_pts(c['delta'])} | {c['max_s']:.0f} | "
                     f"{_r(c['max_ratio'])} | {_r(c['total_ratio'])} |")
    if r is not None:
        lines.append(f"| retrain on all ({r['train_images']} images, {r['steps']} steps) | train | - | - | "
                     f"{_pct(r['miou'])} | 0.0 | {r['seconds']:.0f} (training) | 1.00 | - |")
    return lines


def stream_findings(doc: dict[str, Any], proto: str) -> list[str]:
    s = stream_summary(doc, proto)
    if s["retrain"] is None or not s["contenders"]:
        return [f"{proto}: not complete yet; goals not assessed."]
    lines = []
    by = {c["label"]: c for c in s["contenders"]}
    for label in ("update-1step", "update-stream"):
        c = by.get(label)
        if c is None:
            continue
        ok_acc = c["delta"] is not None and c["delta"] >= -GOAL_POINTS
        ok_t = c["max_ratio"] is not None and c["max_ratio"] <= GOAL_TIME
        ft = by.get(label.replace("update", "ft"))
        lines.append(
            f"{proto}, {label} ({c['method']} + replay {c['memory']}): final val mIoU {_pct(c['miou'])}, "
            f"{100 * c['delta']:+.1f} points vs retrain ({_pct(s['retrain']['miou'])}): "
            + ("at most 1 point below it" if ok_acc else "MORE than 1 point below it")
            + f"; slowest update {_r(c['max_ratio'])}x the retrain time ("
            + ("<= 1/3" if ok_t else "> 1/3") + f"; all {c['steps_done']} update(s) together {_r(c['total_ratio'])}x)"
            + ": goal " + ("**met**" if ok_acc and ok_t else "**not met**")
            + (f". Fine-tuning only: {_pct(ft['miou'])} ({100 * ft['delta']:+.1f} points vs retrain)." if ft else "."))
    return lines


def deviation(doc: dict[str, Any]) -> list[str]:
    p, full = doc["profile"], PROFILES["full"]
    diffs = [f"{k} {p.get(k)} instead of {full[k]}" for k in PROFILE_KEYS if k != "seed" and p.get(k) != full[k]]
    have = sorted({r["protocol"] for r in doc["rows"]} - {"ci-base"})
    missing = [x for x in PROTOCOLS if x not in have]
    if missing:
        diffs.append("no results for " + ", ".join(missing))
    if not diffs:
        return []
    return ["**Not the full profile**: " + "; ".join(diffs) + ".", ""]


def section(doc: dict[str, Any], json_name: str = "benchmarks/incremental.json") -> str:
    from _common import load_sentence
    from transfer_curve import describe_machine

    p, meta, rows = doc["profile"], doc["meta"], doc["rows"]
    total = sum(r.get("wall_seconds", r["seconds"]) for r in rows)
    by_date = sorted((r for r in rows if r.get("load")), key=lambda r: r.get("date", ""))
    loads = [x for r in rows for x in r.get("load", [])]
    load_txt = load_sentence([by_date[0]["load"][0], by_date[-1]["load"][-1]] if by_date else None,
                             meta["machine"].get("cpu_cores"))
    if loads:
        load_txt += f" Range over the runs: {min(loads):.1f}-{max(loads):.1f}."

    base = _get(doc, "ci-base", "base", 0)
    strategy = (base or next((r for r in rows if r["kind"] == "train"), {})).get("settings", {})
    cmds = "\n".join(f"    {c}" for c in meta.get("commands", []))
    val_txt = "all of CamVid val" if p["max_val"] is None else f"{p['max_val']} CamVid val images"
    parts = [
        SECTION_TITLE, "",
        f"Generated by `benchmarks/incremental.py` from `{json_name}` ({len(rows)} runs, "
        f"{total / 60:.0f} min of runs; last update {meta.get('updated', '?')}). Commands:", "", cmds, "",
        f"Machine: {describe_machine(meta['machine'])}. {load_txt}", "",
        f"Setup: CamVid images and masks x{p['scale']:g}, crop {p['crop']}, batch {p['batch']}; every "
        f"`segtune.train` run {p['steps']} optimiser steps with segtune's defaults (strategy "
        f"{strategy.get('strategy', '?')}, lr {strategy.get('lr', '?')}, loss {strategy.get('loss', '?')}, class "
        f"weights {strategy.get('class_weights', '?')}), every `segtune.update` step {p['update_steps']} steps "
        f"inheriting its parent's recipe; replay memory {p['memory']} samples stored by each update (membranes: "
        f"{p['membrane_memory']}); the first update replays the memory the step-0 `segtune.train` run stored "
        f"(`train.memory`, default 20 samples: all 12 base slices for the membranes); seed {p['seed']}; no validation during training, final weights scored on "
        f"{val_txt} (membranes: slices "
        f"24-29). Class-incremental (overlapped): step 0 trains `[background, Sky..Tree]` with classes 6-10 as "
        "background; each update lists the classes seen so far (future classes background) and is scored on CamVid val "
        "with the classes not learned yet ignored. Metric convention: background excluded from old/new/all (MiB); "
        "old = classes 0-5, new = every class added later, computed from the final step's per-class IoU. "
        "Joint = one training on all classes with the sum of the sequence's steps. Retrain time = a training run of "
        f"{p['steps']} steps on the data so far (class-incremental: the measured step-0 run; data and membranes: "
        "the measured retrain run). Times are segtune's own (update: incremental.json, training: metrics.json).", "",
        *deviation(doc),
    ]
    for proto in ("6-5", "6-1"):
        if any(r["protocol"] == proto for r in rows):
            parts += [*ci_table(doc, proto), "", *[f"- {x}" for x in ci_findings(doc, proto)], ""]
    if any(r["protocol"] == "data" for r in rows):
        parts += [*stream_table(doc, "data", f"**Data-incremental CamVid** (base = a seeded half of train, then the "
                                             f"other half in 1 step or as a stream of {DATA_STREAM}):"), "",
                  *[f"- {x}" for x in stream_findings(doc, "data")], ""]
    if any(r["protocol"] == "membrane" for r in rows):
        parts += [*stream_table(doc, "membrane", "**Data-incremental EM membranes** (slices 0-11, then 12-17, then "
                                                 "18-23; val = slices 24-29):"), "",
                  *[f"- {x}" for x in stream_findings(doc, "membrane")], ""]
    return "\n".join(parts)


def write_results(doc: dict[str, Any], md: Path = RESULTS_MD, json_name: str = "benchmarks/incremental.json") -> None:
    """Replace this benchmark's section of ``md`` (between its markers; the rest is kept)."""
    from _common import write_section

    write_section(section(doc, json_name), START, END, md)


# =========================================================================== main
def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="end-to-end check: CamVid x0.25, 6 images per step, 4 val images, 3/2 steps; numbers mean nothing")
    p.add_argument("--only", nargs="+", choices=PROTOCOLS, metavar="PROTOCOL",
                   help=f"protocols to run (default all: {', '.join(PROTOCOLS)})")
    p.add_argument("--methods", nargs="+", choices=CI_METHODS, metavar="METHOD",
                   help=f"class-incremental methods without replay (default {' '.join(CI_METHODS)})")
    p.add_argument("--replay-method", default="best", choices=("best", "none", *CI_METHODS),
                   help="class-incremental method run again with replay: 'best' (default: the best without "
                        "replay by final all-class val mIoU, i.e. chosen on val), a fixed method, or 'none'")
    p.add_argument("--scale", type=float, help="downscale factor of CamVid images and masks (full: 0.5)")
    p.add_argument("--crop", type=int, help="training crop side, a multiple of 32 (full: 128)")
    p.add_argument("--batch", type=int, help="training batch size (full: 8)")
    p.add_argument("--max-step-images", type=int, help="(--quick only) training images per step")
    p.add_argument("--max-val", type=int, help="(--quick only) score on this many CamVid val images")
    p.add_argument("--steps", type=int, help="optimiser steps of every segtune.train run (full: 600); "
                   "another value needs its own --json")
    p.add_argument("--update-steps", type=int, help="optimiser steps of every update (full: 200; default a "
                   "third of --steps when --steps is given)")
    p.add_argument("--memory", type=int, help="replay memory of the CamVid updates (full: 20)")
    p.add_argument("--membrane-memory", type=int, help="replay memory of the membrane updates (full: 4)")
    p.add_argument("--max-increments", type=int,
                   help="stop each class-incremental protocol after this many updates (checks only)")
    p.add_argument("--resume", action="store_true", help="skip runs already in the JSON (a session can end mid-run)")
    p.add_argument("--json", type=Path, help="results JSON (default benchmarks/incremental.json; quick: "
                   "<workdir>/quick/incremental.json)")
    p.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "segtune-incremental",
                   help="run folders and per-step data sets (outside the repository)")
    p.add_argument("--data-cache", type=Path, default=Path(tempfile.gettempdir()) / "segtune-transfer-curve",
                   help="where the downscaled CamVid copy is kept (shared with transfer_curve.py)")
    p.add_argument("--camvid", type=Path, default=CAMVID, help="CamVid (default ../shared/data/camvid)")
    p.add_argument("--membrane", type=Path, default=MEMBRANE, help="EM membranes (default ../shared/data/membrane)")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the subsets, initialisation and data order")
    p.add_argument("--report-only", action="store_true", help="train nothing: the report from the JSON")
    p.add_argument("--write-results", action="store_true", help="update the section in benchmarks/RESULTS.md")
    a = p.parse_args(argv)
    if not a.quick and (a.max_step_images is not None or a.max_val is not None):
        p.error("--max-step-images and --max-val are only allowed with --quick (the benchmark uses all images)")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = _parse(argv)
    name = "quick" if a.quick else "full"
    base = PROFILES[name]
    prof: dict[str, Any] = {
        "name": name, **base,
        **{k: v for k, v in (("scale", a.scale), ("crop", a.crop), ("batch", a.batch),
                             ("max_step_images", a.max_step_images), ("max_val", a.max_val),
                             ("steps", a.steps), ("update_steps", a.update_steps), ("memory", a.memory),
                             ("membrane_memory", a.membrane_memory), ("max_increments", a.max_increments))
           if v is not None},
        "seed": a.seed,
    }
    if a.steps is not None and a.update_steps is None:
        prof["update_steps"] = max(1, a.steps // 3)
    json_path = a.json or (a.workdir / "quick" / "incremental.json" if a.quick else JSON_DEFAULT)
    doc = load_json(json_path)
    if doc is not None and not same_profile(doc["profile"], prof):
        if a.report_only:
            prof = doc["profile"]
        else:
            raise SystemExit(f"{json_path} holds results of another profile "
                             f"({ {k: doc['profile'].get(k) for k in PROFILE_KEYS} }); pass --json elsewhere or remove it")
    if doc is None:
        if a.report_only:
            raise SystemExit(f"{json_path}: no results to report")
        doc = {"profile": prof, "meta": {"commands": []}, "rows": []}
    if not a.report_only:
        doc["profile"] = prof
    meta = doc["meta"]
    if a.quick:
        print("quick profile: tiny data and budgets, checks the script end to end; the numbers mean nothing", flush=True)

    if not a.report_only:
        meta["machine"] = machine()
        from _common import command_line, save_json, src_on_path

        src_on_path()
        cmd = command_line("incremental.py", argv)
        if cmd not in meta["commands"]:
            meta["commands"].append(cmd)
        only = a.only or list(PROTOCOLS)
        runs = a.workdir / "runs" / (f"{name}-x{prof['scale']:g}-c{prof['crop']}-b{prof['batch']}-s{prof['steps']}"
                                     f"-u{prof['update_steps']}-m{prof['memory']}-seed{prof['seed']}")
        cache = a.workdir / "data"
        b = Bench(doc, json_path, runs, a.resume)
        save_json(json_path, doc)
        if any(p_ in only for p_ in ("6-5", "6-1", "data")):
            import transfer_curve as tc

            if not (a.camvid / "dataset.yaml").is_file():
                raise SystemExit(f"{a.camvid}: CamVid not found")
            scaled = tc.prepare_data(a.camvid, a.data_cache, prof["scale"]).parent
            cv = CamVid(scaled)
            if any(p_ in only for p_ in ("6-5", "6-1")):
                ci = ClassIncrementalData(cv, cache, prof)
                for proto in ("6-5", "6-1"):
                    if proto in only:
                        run_class_incremental(b, proto, ci, a.methods or list(CI_METHODS), a.replay_method)
            if "data" in only:
                run_data_incremental(b, DataIncrementalData(cv, cache, prof))
        if "membrane" in only:
            if not (a.membrane / "dataset.yaml").is_file():
                raise SystemExit(f"{a.membrane}: membrane data not found")
            run_membrane(b, MembraneData(a.membrane, cache, prof))
        save_json(json_path, doc)
    if "machine" not in meta:
        meta["machine"] = machine()
    from _common import rel

    text = section(doc, rel(json_path))
    print()
    print(text)
    print(f"\nresults: {json_path}")
    if a.write_results:
        write_results(doc, json_name=rel(json_path))
        print(f"updated: {RESULTS_MD}")
    return doc


if __name__ == "__main__":
    main()
