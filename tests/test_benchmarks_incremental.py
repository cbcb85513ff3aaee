"""benchmarks/incremental.py: its per-step data sets, its report, and tiny ``--quick`` runs end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import load_benchmark
from PIL import Image

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
CAMVID = SHARED / "camvid"
MEMBRANE = SHARED / "membrane"
NAMES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
         "Bicyclist"]




@pytest.fixture(scope="module")
def inc():
    return load_benchmark("incremental")


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.array(Image.open(p)) for p in sorted((folder / "masks").glob("*.png"))}


def _fake_camvid(root: Path) -> Path:
    """CamVid's layout and label set (0..10 classes, 11 void) on 4 train and 2 val 4x4 masks."""
    train = {"a": [0, 1, 11, 3], "b": [6, 0, 0, 11], "c": [10, 2, 2, 2], "d": [7, 8, 9, 11]}
    val = {"v1": [0, 6, 10, 11], "v2": [5, 5, 9, 9]}
    for split, masks in (("train", train), ("val", val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for stem, vals in masks.items():
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / split / f"{stem}.png")
            Image.fromarray(np.repeat(np.array(vals, np.uint8)[None], 4, 0)).save(root / f"{split}annot" / f"{stem}.png")
    (root / "dataset.yaml").write_text(
        f"name: fake\nclasses: [{', '.join(NAMES)}]\nignore_index: 11\nmask_format: index\n"
        "splits:\n  train: {images: train, masks: trainannot}\n  val: {images: val, masks: valannot}\n")
    return root


def test_class_incremental_step_data_labels(inc, tmp_path):
    """Step 0: classes 0-5 +1, 6-10 background, void ignored; val ignores unseen classes and never
    holds label 0; an update step labels what is seen so far (future classes 0); MiB's filter."""
    import yaml

    cv = inc.CamVid(_fake_camvid(tmp_path / "camvid"))
    prof = {**inc.PROFILES["full"], "seed": 0}
    ci = inc.ClassIncrementalData(cv, tmp_path / "cache", prof)
    s0 = ci.step0()
    assert yaml.safe_load((s0 / "dataset.yaml").read_text())["classes"] == ["background", *NAMES[:6]]
    m = _masks(s0 / "train")
    assert set(m) == {"a", "b", "c"}  # "d" holds only classes 6-10 (and void): not in step 0
    assert m["a"][0].tolist() == [1, 2, 255, 4] and m["b"][0].tolist() == [0, 1, 1, 255]
    assert m["c"][0].tolist() == [0, 3, 3, 3]
    v = _masks(s0 / "val")
    assert v["v1"][0].tolist() == [1, 255, 255, 255] and v["v2"][0].tolist() == [6, 6, 255, 255]

    va = ci.val_all()
    assert yaml.safe_load((va / "dataset.yaml").read_text())["classes"] == ["background", *NAMES]
    va_m = _masks(va / "val")
    assert va_m["v1"][0].tolist() == [1, 7, 11, 255]
    assert all(0 not in x for x in va_m.values())  # no CamVid pixel is background

    s1 = ci.step("6-1", 1)  # + SignSymbol (6): images containing it, Fence..Bicyclist still 0
    assert yaml.safe_load((s1 / "dataset.yaml").read_text())["classes"] == ["background", *NAMES[:7]]
    m1 = _masks(s1 / "train")
    assert set(m1) == {"b"} and m1["b"][0].tolist() == [7, 1, 1, 255]
    m65 = _masks(ci.step("6-5", 1) / "train")  # + classes 6-10: every image with one of them
    assert set(m65) == {"b", "c", "d"} and m65["d"][0].tolist() == [8, 9, 10, 255]

    j = ci.joint("6-1", 1)  # classes 0-6 as CamVid labels them, later classes ignored, no background
    assert yaml.safe_load((j / "dataset.yaml").read_text())["classes"] == NAMES[:7]
    mj = _masks(j / "train")
    assert set(mj) == {"a", "b", "c"} and mj["b"][0].tolist() == [6, 0, 0, 255] and mj["c"][0].tolist() == [255, 2, 2, 2]


def test_data_incremental_split_is_a_partition(inc, tmp_path):
    cv = inc.CamVid(_fake_camvid(tmp_path / "camvid"))
    di = inc.DataIncrementalData(cv, tmp_path / "cache", {**inc.PROFILES["full"], "seed": 0})
    assert len(di.base_stems) == 2 and sorted(di.base_stems + di.rest_stems) == ["a", "b", "c", "d"]
    assert sorted(s for c in di.chunks for s in c) == sorted(di.rest_stems)
    assert {p.stem for p in (di.all() / "train" / "images").glob("*.png")} == {"a", "b", "c", "d"}


def _row(proto, method, step, **kw):
    return {"protocol": proto, "method": method, "step": step, "seconds": 10.0, "wall_seconds": 11.0,
            "load": [1.0, 1.0], "date": f"2026-01-01T00:00:{step:02d}", **kw}


def _doc(inc):
    names = ["background", *NAMES[:7]]
    pc = {n: 0.5 for n in names}

    def upd(method, step, all_, sec, memory=0):
        per = {**pc, "SignSymbol": all_}
        return _row("6-1", method, step, kind="update", seconds=sec, memory=memory, per_class=per,
                    all=all_, protocol_scores={"old": 0.5, "new": all_, "all": all_, "hiou": 0.4},
                    suppressed={"all": all_ + 0.01}, counts={"new_train": 5, "memory": memory})

    rows = [
        _row("ci-base", "base", 0, kind="train", miou=0.5, steps=30, train_images=9, seconds=30.0,
             per_class={n: 0.5 for n in names[:7]}, settings={"strategy": "head", "lr": 0.003}),
        _row("6-1", "joint", 0, kind="train", miou=0.6, steps=40, train_images=9, seconds=40.0,
             per_class={n: 0.6 for n in NAMES[:7]}),
        upd("ft", 1, 0.1, 5.0), upd("mib", 1, 0.58, 12.0), upd("mib+replay", 1, 0.59, 9.0, memory=20),
        _row("data", "base", 0, kind="train", miou=0.40, steps=30, train_images=4),
        _row("data", "retrain", 0, kind="train", miou=0.50, steps=30, train_images=8, seconds=30.0),
        _row("data", "update-1step", 1, kind="update", miou=0.495, method_used="lwf", memory=20, seconds=9.0,
             counts={"new_train": 4, "memory": 2}),
        _row("data", "ft-1step", 1, kind="update", miou=0.45, method_used="ft", memory=0, seconds=8.0,
             counts={"new_train": 4, "memory": 0}),
    ]
    rows[4]["replay_choice"] = "best of the methods without replay (chosen on the val split it is scored on)"
    prof = {**inc.PROFILES["full"], "steps": 30, "update_steps": 10, "max_increments": 1, "seed": 0}
    meta = {"commands": ["python benchmarks/incremental.py --only 6-1 data"], "updated": "today",
            "machine": {"arch": "x86_64", "cpu_cores": 2, "mem_gib": 24.0, "gpu": None, "os": "Linux",
                        "python": "3.12", "torch": "2", "torch_threads": 2}}
    return {"profile": prof, "meta": meta, "rows": rows}


def test_results_section_states_goals_from_the_numbers(inc, tmp_path):
    doc = _doc(inc)
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Memory\n\nkeep me\n")
    inc.write_results(doc, md=md)
    text = md.read_text()
    # joint all = 0.6; best mib+replay 0.59 -> 0.98x >= 0.90: met; ft 0.1 -> 49 points below: far below
    assert "best mib+replay 59.0 vs joint 60.0 = 0.98x: **met**" in text
    assert "chosen on the same val split" in text
    assert "ft: 10.0 = 0.17x joint, 49.0 points below the best: far below" in text
    # time: retrain = step-0 run 30 s; mib+replay 9 s = 0.30x (met), mib 12 s = 0.40x (not met)
    assert "slowest update 9 s = 0.30x: **met**" in text and "not met by: mib (0.40)" in text
    # data: update 49.5 vs retrain 50.0 (-0.5 points) at 9/30 = 0.30x: met
    assert "-0.5 points vs retrain (50.0): at most 1 point below it; slowest update 0.30x" in text
    assert "goal **met**. Fine-tuning only: 45.0 (-5.0 points vs retrain)" in text
    assert "Not the full profile" in text and "no results for 6-5, membrane" in text
    # flip the data, the sentences flip (and the section is replaced, not appended)
    doc["rows"][2]["protocol_scores"]["all"] = 0.25  # ft
    doc["rows"][3]["protocol_scores"]["all"] = 0.2  # mib
    doc["rows"][4]["protocol_scores"]["all"] = 0.3  # mib+replay
    doc["rows"][4]["seconds"] = 20.0
    doc["rows"][7]["miou"] = 0.48  # data update-1step: 2 points below retrain
    inc.write_results(doc, md=md)
    text = md.read_text()
    assert "keep me" in text and text.count(inc.START) == 1 and text.count(inc.SECTION_TITLE) == 1
    assert "best mib+replay 30.0 vs joint 60.0 = 0.50x: **not met**" in text
    assert "5.0 points below the best: NOT far below" in text
    assert "slowest update 20 s = 0.67x: **not met**" in text
    assert "MORE than 1 point below it" in text and "**met**. Fine-tuning" not in text


def test_cli_refusals(inc, tmp_path):
    with pytest.raises(SystemExit):
        inc.main(["--max-val", "3"])
    with pytest.raises(SystemExit):
        inc.main(["--report-only", "--json", str(tmp_path / "none.json")])


def _finite_rows(rows):
    for r in rows:
        assert math.isfinite(r["seconds"]) and r["seconds"] > 0
        if "miou" in r:
            assert 0.0 <= r["miou"] <= 1.0
        for k in ("old", "new", "all"):
            v = (r.get("protocol_scores") or {}).get(k)
            if v is not None:
                assert 0.0 <= v <= 1.0


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not (CAMVID / "dataset.yaml").is_file(), reason="CamVid not found in ../shared/data")
def test_quick_class_incremental_end_to_end(inc, tmp_path):
    out = tmp_path / "inc.json"
    args = ["--quick", "--only", "6-1", "--max-increments", "2", "--methods", "ft", "mib",
            "--max-step-images", "4", "--max-val", "2", "--json", str(out), "--workdir", str(tmp_path)]
    doc = inc.main(args)
    saved = json.loads(out.read_text())
    assert saved["rows"] == doc["rows"]
    keys = {(r["protocol"], r["method"], r["step"]) for r in saved["rows"]}
    replay = next(r["method"] for r in saved["rows"] if r["method"].endswith("+replay"))
    assert replay in ("ft+replay", "mib+replay")
    assert keys == {("ci-base", "base", 0), ("6-1", "joint", 0),
                    *[("6-1", m, s) for m in ("ft", "mib", replay) for s in (1, 2)]}
    _finite_rows(saved["rows"])
    final = [r for r in saved["rows"] if r["step"] == 2]
    assert all(r["classes_added"] == ["Fence"] and "suppressed" in r for r in final)
    assert all(set(r["per_class"]) == {"background", *NAMES[:8]} for r in final)
    assert next(r for r in saved["rows"] if r["method"] == "joint")["steps"] == 3 + 2 * 2
    assert all(r["memory"] == 2 for r in saved["rows"] if r["method"] == replay)
    # --resume runs nothing again
    again = inc.main([*args, "--resume"])
    assert sorted(r["date"] for r in again["rows"]) == sorted(r["date"] for r in saved["rows"])


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.skipif(not (CAMVID / "dataset.yaml").is_file(), reason="CamVid not found in ../shared/data")
def test_quick_data_incremental_end_to_end(inc, tmp_path):
    out = tmp_path / "inc.json"
    only = ["data", "membrane"] if (MEMBRANE / "dataset.yaml").is_file() else ["data"]
    doc = inc.main(["--quick", "--only", *only, "--max-step-images", "4", "--max-val", "2",
                    "--json", str(out), "--workdir", str(tmp_path)])
    keys = {(r["protocol"], r["method"], r["step"]) for r in doc["rows"]}
    want = {("data", "base", 0), ("data", "retrain", 0), ("data", "update-1step", 1), ("data", "ft-1step", 1),
            *[("data", m, s) for m in ("update-stream", "ft-stream") for s in range(1, inc.DATA_STREAM + 1)]}
    if "membrane" in only:
        want |= {("membrane", "base", 0), ("membrane", "retrain", 0),
                 *[("membrane", m, s) for m in ("update-stream", "ft-stream") for s in (1, 2)]}
    assert keys == want
    _finite_rows(doc["rows"])
    data_rows = {(r["method"], r["step"]): r for r in doc["rows"] if r["protocol"] == "data"}
    assert data_rows[("base", 0)]["train_images"] == 4 and data_rows[("retrain", 0)]["train_images"] == 8
    # the first update replays the memory the base run stored (train.memory, default 20: all 4)
    assert data_rows[("update-1step", 1)]["counts"]["memory"] == 4
    assert data_rows[("ft-1step", 1)]["counts"]["memory"] == 0
    if "membrane" in only:
        mem = {(r["method"], r["step"]): r for r in doc["rows"] if r["protocol"] == "membrane"}
        assert mem[("base", 0)]["train_images"] == 12 and mem[("retrain", 0)]["train_images"] == 24
        assert mem[("update-stream", 2)]["counts"]["new_train"] == 6
        assert mem[("base", 0)]["val_images"] == 6
    text = inc.section(doc)
    assert "Data-incremental CamVid" in text and "goal" in text
