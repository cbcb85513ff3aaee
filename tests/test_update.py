"""``segtune update``: class- and data-incremental updates end to end on small generated data.

Shapes on noise: class 1 = bright red squares, class 2 = bright green disks. Step 0 knows the
squares; the update adds the disks (class-incremental) or brings new images of the same classes
(data-incremental). The runs are tiny (64x64 images, a few optimiser steps): these tests check
the mechanics (new folder, parent untouched, grown head, labels of the step, memory, lineage,
history, refusals), not accuracy; benchmarks/incremental.py measures that.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

import segtune
from segtune.cli import main
from segtune.data.memory import load_memory

FAST = {"train.progress": False, "train.num_overlays": 0, "train.early_stopping": 0}


def make_shapes(root: Path, classes: list[str], n_train: int = 6, n_val: int = 3, seed: int = 0,
                shapes: tuple[str, ...] = ("square", "disk"), val: bool = True) -> Path:
    """64x64 images; masks label every shape whose name is in ``classes`` (others: class 0)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    splits = (("train", n_train), ("val", n_val)) if val else (("train", n_train),)
    for split, n in splits:
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 80, (64, 64, 3), dtype=np.uint8)
            mask = np.zeros((64, 64), np.uint8)
            if "square" in shapes:
                y, x = rng.integers(4, 30, 2)
                sq = (yy >= y) & (yy < y + 18) & (xx >= x) & (xx < x + 18)
                img[sq] = (230, 30, 30)
                if "square" in classes:
                    mask[sq] = classes.index("square")
            if "disk" in shapes:
                cy, cx = rng.integers(40, 56, 2)
                disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 64
                img[disk] = (30, 230, 30)
                if "disk" in classes:
                    mask[disk] = classes.index("disk")
            Image.fromarray(img).save(root / split / "images" / f"{split}{seed}_{i:02d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{split}{seed}_{i:02d}.png")
    sp = "  train: {images: train/images, masks: train/masks}\n"
    if val:
        sp += "  val: {images: val/images, masks: val/masks}\n"
    (root / "dataset.yaml").write_text(
        f"name: shapes\nclasses: [{', '.join(classes)}]\nignore_index: 250\nmask_format: index\nsplits:\n{sp}"
    )
    return root


def _train_base(tmp_path: Path, classes: list[str], name: str = "base") -> Path:
    data = make_shapes(tmp_path / f"data_{name}", classes, shapes=("square",))
    cfg = {"data": {"root": str(data), "batch_size": 2, "crop_size": 64},
           "strategy": {"name": "head"}, "optim": {"lr": 3e-3, "warmup_steps": 1},
           "train": {"out": str(tmp_path / "runs"), "name": name, "epochs": 2, "progress": False,
                     "num_overlays": 0, "early_stopping": 0}}
    return segtune.train(cfg).dir


def _tree_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished step-0 run with a natural background: classes [background, square]."""
    return _train_base(tmp_path_factory.mktemp("upd"), ["background", "square"])


def test_class_incremental_update_then_data_update_and_history(base: Path, tmp_path: Path, capsys) -> None:
    before = _tree_hash(base)
    new = make_shapes(tmp_path / "new", ["background", "square", "disk"], seed=1)
    run = segtune.update(base, new, method="mib", memory=4, out=tmp_path / "runs",
                         overrides={**FAST, "train.max_steps": 4})
    assert _tree_hash(base) == before  # the parent run is never modified
    base_items, _ = load_memory(base)  # a plain training run stores a small replay memory ...
    assert len(base_items) == 6 and all(it.classes == [0, 1] for it in base_items)
    meta = yaml.safe_load((run.dir / "model.yaml").read_text())
    assert meta["classes"] == ["background", "square", "disk"] and meta["model"]["num_classes"] == 3
    assert meta["ignore_index"] == 250  # the data's ignore value, not step_data's 255
    lin = meta["lineage"]
    assert lin["parent"] == str(base.resolve()) and lin["step"] == 1 and lin["kind"] == "class"
    assert lin["classes_added"] == ["disk"] and lin["method"] == "mib" and lin["data_fingerprint"]
    assert lin["memory_replayed"] == 6  # ... which the first update replays, old labels kept
    mem_masks = [np.array(Image.open(p)) for p in sorted((run.dir / "step_data" / "train" / "masks").glob("mem_*"))]
    assert len(mem_masks) == 6 and all(1 in np.unique(m) for m in mem_masks)
    assert meta["background"] == "natural" and "inference" not in meta  # a real background is predicted
    # the step's labels: squares (an old class) became background in the new images' masks
    step = run.dir / "step_data"
    masks = [np.array(Image.open(p)) for p in sorted((step / "train" / "masks").glob("new_*.png"))]
    assert masks and set(np.unique(np.concatenate([m.ravel() for m in masks]))) <= {0, 2}
    val = np.concatenate([np.array(Image.open(p)).ravel() for p in (step / "val" / "masks").glob("*.png")])
    assert {1, 2} <= set(np.unique(val))  # val keeps every class learned so far
    inc = json.loads((run.dir / "incremental.json").read_text())
    assert {"old", "new", "all", "hiou", "forgetting", "convention", "seconds"} <= set(inc)
    assert set(inc["forgetting"]) == {"square"} and (run.dir / "steps_iou.png").stat().st_size > 0
    items, mem = load_memory(run.dir)
    assert 0 < len(items) <= 4 and mem["sha256"]
    assert any(2 in it.classes for it in items)  # the memory keeps the new class ...
    assert any(1 in it.classes for it in items)  # ... and the old one, with full labels
    assert segtune.load(run.dir).predict(np.zeros((40, 50, 3), np.uint8)).shape == (40, 50)

    # a data-incremental step on top: same classes, new images; the memory is replayed and renewed
    more = make_shapes(tmp_path / "more", ["background", "square", "disk"], seed=2)
    run2 = segtune.update(run.dir, more, memory=4, out=tmp_path / "runs", overrides={**FAST, "train.max_steps": 3})
    lin2 = yaml.safe_load((run2.dir / "model.yaml").read_text())["lineage"]
    assert lin2["kind"] == "data" and lin2["method"] == "lwf" and lin2["step"] == 2  # auto: lwf for new images
    assert lin2["memory_replayed"] == len(items) and lin2["memory_sha256"] == mem["sha256"]
    assert len(list((run2.dir / "step_data" / "train" / "images").glob("mem_*"))) == len(items)
    assert "method auto -> lwf" in capsys.readouterr().err

    assert main(["history", str(run2.dir)]) == 0
    out = capsys.readouterr().out
    assert "+disk" in out and base.name in out and run.dir.name in out and run2.dir.name in out
    assert "mib" in out and "lwf" in out


def test_synthetic_background_for_a_run_without_one(tmp_path: Path) -> None:
    base = _train_base(tmp_path, ["dark", "square"], name="nobg")
    new = make_shapes(tmp_path / "new", ["dark", "square", "disk"], seed=3)
    run = segtune.update(base, new, method="ft", memory=0, out=tmp_path / "runs",
                         overrides={**FAST, "train.max_steps": 2})
    meta = yaml.safe_load((run.dir / "model.yaml").read_text())
    assert meta["classes"] == ["background", "dark", "square", "disk"]
    assert meta["background"] == "synthetic" and meta["inference"] == {"suppress": [0]}
    # "dark" (class 0 of the data) is now class 1; the step's masks: disk 3, everything else 0
    train_masks = [np.array(Image.open(p)) for p in (run.dir / "step_data" / "train" / "masks").glob("*.png")]
    assert set(np.unique(np.concatenate([m.ravel() for m in train_masks]))) <= {0, 3}
    pred = segtune.load(run.dir).predict(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert pred.min() >= 1  # the synthetic background is never predicted
    assert (run.dir / "memory.json").exists() is False  # --memory 0: no replay memory stored


@pytest.mark.parametrize("method", ["lwf", "plop", "ssul"])
def test_every_method_runs_a_class_step(base: Path, tmp_path: Path, method: str) -> None:
    new = make_shapes(tmp_path / "new", ["background", "square", "disk"], seed=4, n_train=4, n_val=2)
    run = segtune.update(base, new, method=method, memory=2, out=tmp_path / "runs",
                         overrides={**FAST, "train.max_steps": 2})
    assert np.isfinite(run.metrics["miou"])
    assert yaml.safe_load((run.dir / "model.yaml").read_text())["lineage"]["method"] == method
    if method == "ssul":  # only the class layer trained, and its old rows are unchanged
        from segtune.models.modelfile import load_model

        old, _ = load_model(base)
        new_model, _ = load_model(run.dir)
        o, n = old.state_dict(), new_model.state_dict()
        keys = set(new_model.class_head_keys())
        assert all(np.array_equal(o[k].numpy(), n[k].numpy()) for k in o if k not in keys)
        for k in keys:
            assert np.array_equal(o[k].numpy(), n[k][: o[k].shape[0]].numpy())


def _one_error(capsys, rc: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_bad_input_is_one_line_and_writes_nothing(base: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"

    def run(*args: str) -> int:
        return main(["update", *args, "--out", str(out), "--no-progress", "--max-steps", "1"])

    reordered = make_shapes(tmp_path / "reordered", ["square", "background", "disk"], seed=5)
    _one_error(capsys, run(str(base), str(reordered)), "class 0 is 'square'", "same order")
    renamed = make_shapes(tmp_path / "renamed", ["background", "box", "disk"], seed=5)
    _one_error(capsys, run(str(base), str(renamed)), "class 1 is 'box' but 'square'", "renamed")
    dropped = make_shapes(tmp_path / "dropped", ["background"], seed=5, shapes=())
    _one_error(capsys, run(str(base), str(dropped)), "lists 1 classes", "same order")
    same = make_shapes(tmp_path / "same", ["background", "square"], seed=5, shapes=("square",))
    _one_error(capsys, run(str(base), str(same), "--set", "model.arch=fpn"), "model.arch=fpn", "keeps")
    _one_error(capsys, run(str(base), str(same), "--method", "ssul"), "--method ssul", "class-incremental")
    _one_error(capsys, run(str(base), str(same), "--method", "mibb"), "did you mean 'mib'")
    outside = make_shapes(tmp_path / "outside", ["background", "square"], seed=5)  # disks labelled 2
    (outside / "dataset.yaml").write_text((outside / "dataset.yaml").read_text())
    for p in (outside / "train" / "masks").glob("*.png"):
        m = np.array(Image.open(p))
        m[:2, :2] = 7  # a class value the step does not list
        Image.fromarray(m).save(p)
    _one_error(capsys, run(str(base), str(outside)), "problem(s) in the new data")
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    (empty / "dataset.yaml").write_text("classes: [background, square]\n")
    assert run(str(base), str(empty)) == 2
    capsys.readouterr()
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in ("model.yaml", "config.yaml", "metrics.json"):
        (broken / f).write_bytes((base / f).read_bytes())
    _one_error(capsys, run(str(broken), str(same)), "missing model.safetensors")
    assert not out.exists() or list(out.iterdir()) == []  # nothing written for any of them


def test_interrupted_update_resumes(base: Path, tmp_path: Path) -> None:
    import signal

    from _seams import SignalAtStep

    new = make_shapes(tmp_path / "new", ["background", "square", "disk"], seed=6, n_train=4, n_val=2)
    kw = {"method": "mib", "memory": 2, "out": tmp_path / "runs",
          "overrides": {**FAST, "train.epochs": 2, "train.checkpoint_every": 1, "data.batch_size": 2}}
    with pytest.raises(segtune.RunError, match="stopped by SIGINT"):
        segtune.update(base, new, name="cut", callbacks=[SignalAtStep(3, signal.SIGINT)], **kw)
    cut = tmp_path / "runs" / "cut"
    assert (cut / "checkpoints" / "last.ckpt").is_file() and not (cut / "model.yaml").exists()
    run = segtune.update(resume=cut)
    assert (run.dir / "model.yaml").is_file() and (run.dir / "memory.json").is_file()
    assert yaml.safe_load((run.dir / "model.yaml").read_text())["lineage"]["step"] == 1


def test_evaluate_scores_a_synthetic_background_model_on_the_original_classes(tmp_path: Path) -> None:
    base = _train_base(tmp_path, ["dark", "square"], name="nobg2")
    new = make_shapes(tmp_path / "new", ["dark", "square", "disk"], seed=7)
    run = segtune.update(base, new, method="ft", memory=0, out=tmp_path / "runs",
                         overrides={**FAST, "train.max_steps": 2})
    m = segtune.evaluate(run.dir, new, out=tmp_path / "eval")
    names = [c["name"] for c in m["per_class"]]
    assert names == ["background", "dark", "square", "disk"]
    assert m["per_class"][0]["iou"] is None  # no ground truth and never predicted: left out of the mean
    assert all(c["iou"] is not None for c in m["per_class"][1:])


def test_auto_method_table_matches_the_recorded_benchmark() -> None:
    """``--method auto`` for new classes is the method without replay with the best all-class mIoU
    averaged over CamVid 6-5 and 6-1 in the committed benchmark JSON, and the numbers its reason
    quotes are that JSON's (final step of each protocol)."""
    from segtune.incremental.update import AUTO_METHODS

    doc = json.loads((Path(__file__).resolve().parents[1] / "benchmarks" / "incremental.json").read_text())

    def all_class(row: dict) -> float:
        vals = [v for k, v in row["per_class"].items() if k != "background" and v is not None]
        return sum(vals) / len(vals)

    method, why = AUTO_METHODS["class"]
    means: dict[str, list[float]] = {}
    for proto in ("6-5", "6-1"):
        rows = [r for r in doc["rows"] if r["protocol"] == proto and r.get("kind") == "update" and not r.get("memory")]
        last = max(r["step"] for r in rows)
        final = {r["method"]: r for r in rows if r["step"] == last}
        assert set(final) >= {"ft", "lwf", "mib", "plop", "ssul"}
        for m, row in final.items():
            assert f"{m} {100 * all_class(row):.1f}" in why.split(f"{proto}:")[1].split(";")[0], (proto, m)
            means.setdefault(m, []).append(all_class(row))
    assert method == max(means, key=lambda m: sum(means[m]) / len(means[m]))
