"""Incremental-learning report: old/new/all/hIoU, forgetting, lineage chains, table and plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from segtune.errors import RunError
from segtune.incremental.report import (
    CONVENTION,
    forgetting,
    format_history,
    history_rows,
    lineage_chain,
    mean_forgetting,
    plot_steps,
    step_scores,
)


def _pc(ious: dict[str, float | None]) -> list[dict]:
    """A per_class list shaped like segmentation_metrics' output."""
    return [
        {"index": i, "name": n, "iou": v, "dice": v, "present": v is not None}
        for i, (n, v) in enumerate(ious.items())
    ]


# ---------------------------------------------------------------- step_scores


def test_step_scores_by_hand():
    pc = _pc({"background": 0.9, "Road": 0.8, "Sky": 0.6, "Car": 0.4})
    s = step_scores(pc, old=["background", "Road", "Sky"], new=["Car"], background="background")
    assert s["old"] == pytest.approx(0.7)
    assert s["new"] == pytest.approx(0.4)
    assert s["all"] == pytest.approx((0.8 + 0.6 + 0.4) / 3)
    assert s["hiou"] == pytest.approx(2 * 0.7 * 0.4 / 1.1)
    assert s["background"] == pytest.approx(0.9)
    assert s["per_class"] == {"background": 0.9, "Road": 0.8, "Sky": 0.6, "Car": 0.4}
    assert s["convention"] == CONVENTION
    assert "background excluded" in CONVENTION and "MiB" in CONVENTION
    assert "ignored" in CONVENTION and "\n" not in CONVENTION


def test_step_scores_without_background_name_counts_every_class():
    pc = _pc({"background": 0.9, "Road": 0.8, "Car": 0.4})
    s = step_scores(pc, old=["background", "Road"], new=["Car"])
    assert s["old"] == pytest.approx(0.85)
    assert s["all"] == pytest.approx((0.9 + 0.8 + 0.4) / 3)
    assert s["background"] is None


def test_step_scores_none_left_out_of_means():
    pc = _pc({"background": None, "Road": 0.5, "Sky": None, "Car": None, "Sign": float("nan")})
    s = step_scores(pc, old=["Road", "Sky"], new=["Car", "Sign"], background="background")
    assert s["old"] == pytest.approx(0.5)  # Sky (None) is not counted as 0
    assert s["new"] is None  # nothing defined among the new classes
    assert s["all"] == pytest.approx(0.5)
    assert s["hiou"] is None
    assert s["background"] is None
    assert s["per_class"]["Sign"] is None  # NaN never leaks out


def test_step_scores_hiou_edge_cases():
    zero = step_scores(_pc({"a": 0.0, "b": 0.0}), old=["a"], new=["b"])
    assert zero["old"] == 0.0 and zero["new"] == 0.0 and zero["hiou"] is None
    one_zero = step_scores(_pc({"a": 0.6, "b": 0.0}), old=["a"], new=["b"])
    assert one_zero["hiou"] == 0.0
    no_old = step_scores(_pc({"a": 0.6}), old=[], new=["a"])
    assert no_old["old"] is None and no_old["hiou"] is None and no_old["all"] == pytest.approx(0.6)
    missing = step_scores(_pc({"a": 0.6}), old=["a"], new=["ghost"])
    assert missing["new"] is None and missing["all"] == pytest.approx(0.6)


# ---------------------------------------------------------------- forgetting


def test_forgetting_best_previous_minus_now():
    prev = [{"Road": 0.9, "Sky": 0.5}, {"Road": 0.7, "Sky": 0.6, "Car": None}]
    now = {"Road": 0.6, "Sky": 0.65, "Car": 0.3, "Pole": 0.2, "Tree": None}
    f = forgetting(prev, now, ["Road", "Sky", "Car", "Pole", "Tree"])
    assert f["Road"] == pytest.approx(0.3)  # best 0.9, not the last 0.7
    assert f["Sky"] == pytest.approx(-0.05)  # improved: negative
    assert f["Car"] is None  # only None before
    assert f["Pole"] is None  # never seen before
    assert f["Tree"] is None  # None now
    assert list(f) == ["Road", "Sky", "Car", "Pole", "Tree"]
    assert mean_forgetting(f) == pytest.approx((0.3 - 0.05) / 2)
    assert mean_forgetting({"a": None}) is None
    assert forgetting([], now, ["Road"]) == {"Road": None}


# ---------------------------------------------------------------- lineage chain


def _run(
    folder: Path,
    classes: list[str],
    ious: dict[str, float | None],
    lineage: dict | None = None,
    summary_seconds: float | None = None,
) -> Path:
    folder.mkdir(parents=True)
    meta: dict = {"architecture": "unet", "classes": classes}
    if lineage is not None:
        meta["lineage"] = lineage
    (folder / "model.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    vals = [v for v in ious.values() if v is not None]
    payload: dict = {"metrics": {"miou": sum(vals) / len(vals), "per_class": _pc(ious)}}
    if summary_seconds is not None:
        payload["summary"] = {"seconds": summary_seconds}
    (folder / "metrics.json").write_text(json.dumps(payload))
    return folder


def _lineage(parent: str | None, step: int, added: list[str], seconds: float) -> dict:
    return {
        "parent": parent,
        "step": step,
        "classes_added": added,
        "method": "mib",
        "memory_sha256": None,
        "data_fingerprint": "abc",
        "seconds": seconds,
    }


@pytest.fixture
def three_runs(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    base = ["background", "Road", "Sky"]
    _run(runs / "base", base, {"background": 0.95, "Road": 0.9, "Sky": 0.8}, summary_seconds=300.0)
    _run(
        runs / "plus-car",
        [*base, "Car"],
        {"background": 0.9, "Road": 0.7, "Sky": 0.8, "Car": 0.5},
        _lineage(str(runs / "base"), 1, ["Car"], 42.0),  # absolute parent path
    )
    _run(
        runs / "plus-sign",
        [*base, "Car", "Sign"],
        {"background": 0.85, "Road": 0.8, "Sky": 0.6, "Car": 0.3, "Sign": None},
        _lineage("plus-car", 2, ["Sign"], 30.5),  # relative: found beside this run
    )
    return runs


def test_lineage_chain_oldest_first(three_runs: Path):
    chain = lineage_chain(three_runs / "plus-sign")
    assert [Path(e["run"]).name for e in chain] == ["base", "plus-car", "plus-sign"]
    assert [e["step"] for e in chain] == [0, 1, 2]
    assert [e["method"] for e in chain] == ["train", "mib", "mib"]
    assert chain[0]["classes_added"] == ["background", "Road", "Sky"]
    assert chain[1]["classes_added"] == ["Car"] and chain[2]["classes_added"] == ["Sign"]
    assert chain[2]["classes"] == ["background", "Road", "Sky", "Car", "Sign"]
    assert chain[0]["seconds"] == 300.0  # no lineage: taken from the metrics summary
    assert chain[1]["seconds"] == 42.0 and chain[2]["seconds"] == 30.5
    assert chain[1]["per_class"] == {"background": 0.9, "Road": 0.7, "Sky": 0.8, "Car": 0.5}
    assert chain[2]["per_class"]["Sign"] is None
    assert chain[0]["miou"] == pytest.approx((0.95 + 0.9 + 0.8) / 3)
    assert lineage_chain(three_runs / "base") == chain[:1]


def test_lineage_chain_broken_parent(three_runs: Path, tmp_path: Path):
    (three_runs / "base" / "model.yaml").unlink()
    with pytest.raises(RunError) as e:
        lineage_chain(three_runs / "plus-sign")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{three_runs / 'plus-car' / 'model.yaml'}: parent ")
    assert "not found" in msg and "broken at step 1" in msg


def test_lineage_chain_cycle_and_not_a_run(tmp_path: Path):
    _run(tmp_path / "a", ["x"], {"x": 0.5}, _lineage("b", 1, ["x"], 1.0))
    _run(tmp_path / "b", ["x"], {"x": 0.5}, _lineage("a", 2, ["x"], 1.0))
    with pytest.raises(RunError, match="cycle") as e:
        lineage_chain(tmp_path / "a")
    assert "\n" not in str(e.value)
    with pytest.raises(RunError, match="no model.yaml"):
        lineage_chain(tmp_path / "nothing-here")


# ---------------------------------------------------------------- history table and plot


def test_history_rows_from_each_steps_view(three_runs: Path):
    rows = history_rows(lineage_chain(three_runs / "plus-sign"), background="background")
    assert [r["run"] for r in rows] == ["base", "plus-car", "plus-sign"]
    r0, r1, r2 = rows
    # step 0: no old classes, everything (but background) is new
    assert r0["old"] is None and r0["hiou"] is None and r0["forgetting"] is None
    assert r0["new"] == pytest.approx(0.85) and r0["all"] == pytest.approx(0.85)
    assert r0["classes_added"] == ["background", "Road", "Sky"]
    # step 1: old = Road, Sky; new = Car
    assert r1["old"] == pytest.approx(0.75) and r1["new"] == pytest.approx(0.5)
    assert r1["all"] == pytest.approx(2.0 / 3)
    assert r1["hiou"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    assert r1["forgetting_per_class"] == pytest.approx({"Road": 0.2, "Sky": 0.0})
    assert r1["forgetting"] == pytest.approx(0.1)
    assert r1["background"] == pytest.approx(0.9) and r1["seconds"] == 42.0
    # step 2: old = Road, Sky, Car (the parent's classes); Sign has no IoU
    assert r2["old"] == pytest.approx((0.8 + 0.6 + 0.3) / 3)
    assert r2["new"] is None and r2["hiou"] is None
    assert r2["forgetting_per_class"] == pytest.approx({"Road": 0.1, "Sky": 0.2, "Car": 0.2})
    assert r2["forgetting"] == pytest.approx(0.5 / 3)


def test_format_history(three_runs: Path):
    rows = history_rows(lineage_chain(three_runs / "plus-sign"), background="background")
    text = format_history(rows)
    lines = text.splitlines()
    assert lines[0].split() == [
        "step", "run", "method", "+classes", "old", "new", "all", "hIoU", "forget", "time",
    ]  # fmt: skip
    assert len(lines) == 2 + 3 + 1
    base, car, sign = lines[2:5]
    assert base.split()[:3] == ["0", "base", "train"] and "+Road" in base
    assert "85.0" in base and "5.0 min" in base
    assert "+Car" in car and "mib" in car
    for number in ("75.0", "50.0", "66.7", "60.0", "10.0", "42 s"):
        assert number in car, number
    assert "+Sign" in sign and "56.7" in sign and "16.7" in sign and "30 s" in sign
    assert sign.split()[5] == "-"  # new: Sign has no IoU
    assert CONVENTION in lines[-1]


def test_format_history_empty_and_many_classes():
    assert format_history([]).splitlines()[0].startswith("step")
    row = {"step": 0, "run": "r", "method": "train", "classes_added": list("abcdef")}
    text = format_history([row])
    assert "+a +b +c +d (+2 more)" in text
    assert text.splitlines()[2].split()[-6:] == ["-"] * 6


def test_plot_steps_writes_png(three_runs: Path, tmp_path: Path):
    chain = lineage_chain(three_runs / "plus-sign")
    out = plot_steps(chain, tmp_path / "plots" / "steps.png", background="background")
    assert out == tmp_path / "plots" / "steps.png"
    assert out.stat().st_size > 1000
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 300
    assert not list(out.parent.glob(".*.tmp*"))  # atomic write left no temporary file
    empty = plot_steps([], tmp_path / "empty.png")
    assert empty.stat().st_size > 0
