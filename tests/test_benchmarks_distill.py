"""The distillation benchmark runs end to end (its ``--quick`` profile) and writes its section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("distill")


@pytest.mark.realdata
@pytest.mark.skipif(not (CAMVID / "dataset.yaml").is_file(), reason="CamVid not found in ../shared/data")
def test_distill_quick_end_to_end(bench, tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    doc = bench.main(["--quick", "--threads", "1", "--json", str(out), "--workdir", str(tmp_path)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == doc["rows"]
    teacher = saved["rows"][0]
    prof = bench.PROFILES["quick"]
    assert teacher["kind"] == "teacher" and teacher["train_images"] == prof["max_train"]
    assert teacher["steps"] == prof["teacher_steps"]
    students = saved["rows"][1:]
    assert [(r["kind"], r["arch"], r["encoder"]) for r in students] == [
        (k, a, e) for a, e in bench.STUDENTS for k in ("kd", "labels")]
    for r in students:
        assert r["steps"] == prof["student_steps"] and r["val_images"] == prof["max_val"]
        assert 0.0 <= r["miou"] <= 1.0 and len(r["per_class"]) == 11
        assert teacher["params"] > r["params"]
        if r["kind"] == "kd":  # the labelled subset + every other train image without labels
            assert r["counts"] == {"labelled": prof["labelled"], "unlabelled": prof["max_train"] - prof["labelled"],
                                   "val": prof["max_val"]}
        else:
            assert r["train_images"] == prof["labelled"]


def test_results_section_is_generated_from_the_json(bench, tmp_path: Path) -> None:
    def row(kind: str, miou: float, **extra) -> dict:
        return {"kind": kind, "miou": miou, "pixel_acc": 0.8, "per_class": {"Sky": miou, "Road": None},
                "arch": "unet", "encoder": "e", "params": 10, "steps": 5, "train_images": 4, "val_images": 2,
                "seconds": 1.0, **extra}

    doc = {"profile": {**bench.PROFILES["full"], "seed": 0},
           "meta": {"command": "python benchmarks/distill.py", "machine": "m", "updated": "today", "load": [0.1, 0.2]},
           "rows": [row("teacher", 0.6), row("kd", 0.5, counts={"labelled": 4, "unlabelled": 8, "val": 2}),
                    row("labels", 0.4)]}
    text = bench.report(doc)
    assert "- unet + e: KD minus labels alone **+10.0 points**" in text and "| kd | unet + e | 10 | 4 / 8 | 50.0 |" in text
    assert "| labels (unet) | 40.0 | - |" in text
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Other\n\nkeep me\n")
    bench._common.write_section(text, bench.START, bench.END, path=md)
    body = md.read_text()
    assert "keep me" in body and body.count(bench.START) == 1 and "## Distillation (distill)" in body
