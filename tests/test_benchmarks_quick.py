"""The transfer-curve benchmark runs end to end (a tiny version of its ``--quick`` profile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark

CAMVID = Path(__file__).resolve().parents[2] / "shared/data/camvid"




@pytest.fixture(scope="module")
def tc():
    return load_benchmark("transfer_curve")


@pytest.mark.realdata
@pytest.mark.skipif(not (CAMVID / "dataset.yaml").is_file(), reason="CamVid not found in ../shared/data")
def test_transfer_curve_quick_end_to_end(tc, tmp_path):
    out = tmp_path / "tc.json"
    doc = tc.main([
        "--quick", "--sizes", "4", "--strategies", "head", "bare-ce", "--steps", "2", "--max-val", "2",
        "--json", str(out), "--workdir", str(tmp_path),
    ])
    saved = json.loads(out.read_text())
    assert saved["rows"] == doc["rows"]
    assert {(r["size"], r["method"]) for r in saved["rows"]} == {(4, "head"), (4, "bare-ce")}
    for r in saved["rows"]:
        assert 0.0 <= r["miou"] <= 1.0
        assert r["train_images"] == 4 and r["val_images"] == 2 and r["steps"] == 2
        assert len(r["per_class"]) == 11
    assert saved["profile"]["max_val"] == 2 and saved["profile"]["steps"] == 2
    assert (tmp_path / "transfer_curve.png").is_file()

    # --resume skips what is done; --report-only trains nothing
    again = tc.main(["--quick", "--sizes", "4", "--strategies", "head", "--steps", "2", "--max-val", "2",
                     "--json", str(out), "--workdir", str(tmp_path), "--resume"])
    assert [r["date"] for r in again["rows"]] == [r["date"] for r in saved["rows"]]


def test_results_section_replaced_between_markers(tc, tmp_path):
    doc = {
        "profile": {"sizes": [23], "methods": ["head", "scratch", "bare-ce"], "scale": 0.5, "crop": 128,
                    "batch": 8, "steps": 100, "max_val": None, "seed": 0, "lr": 1e-3},
        "meta": {"commands": ["python benchmarks/transfer_curve.py"], "updated": "today",
                 "machine": {"arch": "x86_64", "cpu_cores": 2, "mem_gib": 24.0, "gpu": None,
                             "os": "Linux", "python": "3.12", "torch": "2", "torch_threads": 2}},
        "rows": [
            {"size": 23, "method": m, "kind": "bare" if m.startswith("bare") else "segtune", "miou": v,
             "per_class": {"Sky": v, "Road": None}, "seconds": 10.0, "load": [1.0, 1.0]}
            for m, v in (("head", 0.4), ("scratch", 0.3), ("bare-ce", 0.35))
        ],
    }
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\n## Memory\n\nkeep me\n")
    tc.write_results(doc, tmp_path / "transfer_curve.png", md=md)
    doc["rows"][0]["miou"] = 0.5
    tc.write_results(doc, tmp_path / "transfer_curve.png", md=md)
    text = md.read_text()
    assert "keep me" in text
    assert text.count(tc.START) == 1 and text.count(tc.SECTION_TITLE) == 1
    # head is what `strategy: auto` picks (†) and the best segtune strategy (bold)
    assert "**50.0†**" in text and "transfer helped" in text
    assert "segtune default (head) +15.0" in text


def test_max_val_needs_quick(tc):
    with pytest.raises(SystemExit):
        tc.main(["--max-val", "3"])
