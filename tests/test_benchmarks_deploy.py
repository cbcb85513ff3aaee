"""benchmarks/deploy.py: the goals and the RESULTS.md section follow the measured rows (no measuring here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _row(ms: float, miou: float) -> dict:
    return {"backend": "onnx", "images": 101, "ms_median": ms, "ms_p95": ms * 1.2, "ips_batch1": 1000 / ms,
            "ips_batch8": 900 / ms, "miou": miou, "size_mb": 10.0, "rss_peak_mb": 300.0}


def test_goals_follow_the_rows() -> None:
    dep = load_benchmark("deploy")
    rows = {"teacher eager": _row(400, 0.50), "teacher onnx int8": _row(150, 0.495),
            "student onnx int8": _row(120, 0.46)}
    got = {g["goal"].split(":")[0] + g["goal"].split(":")[1][:5]: g["met"] for g in dep.goals(rows)}
    assert got == {"teacher onnx int8 >= 2": True, "teacher onnx int8 <= 1": True,
                   "student onnx int8 >= 4": False, "student onnx int8 <= 3": False,
                   "student onnx int8 >= 1": False}
    rows["student onnx int8"] = _row(90, 0.48)  # 4.4x, 2 points, 11 img/s: all met
    assert all(g["met"] for g in dep.goals(rows))
    doc = {"command": "python benchmarks/deploy.py", "date": "2026-01-01", "machine": "m", "threads": 2,
           "load": [0.1, 0.2], "teacher": "T", "student": "S", "rows": rows, "goals": dep.goals(rows)}
    text = dep.section(doc)
    assert "| student onnx int8 | 90.0 |" in text and "4.44x" in text and "not met" not in text


def test_miou_counts_only_classes_present() -> None:
    dep = load_benchmark("deploy")
    cm = np.array([[5, 5, 0], [0, 10, 0], [0, 0, 0]])
    miou, ious = dep._miou(cm)
    assert ious[2] is None and np.isclose(miou, (5 / 10 + 10 / 15) / 2)



def test_results_section_is_generated_from_the_json() -> None:
    dep = load_benchmark("deploy")
    path = BENCH / "deploy.json"
    doc = json.loads(path.read_text())
    assert dep.goals(doc["rows"]) == doc["goals"]
    results = (BENCH / "RESULTS.md").read_text()
    block = results.split(dep.MARK_START)[1].split(dep.MARK_END)[0]
    assert block.strip() == dep.section(doc, path).strip()
    assert all(not r.get("torch_imported") for n, r in doc["rows"].items() if "onnx" in n)
