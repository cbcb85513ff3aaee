"""The tiling benchmark's RESULTS.md section is generated from its JSON (no training here)."""

from __future__ import annotations

from pathlib import Path

from conftest import load_benchmark


def _doc(tile_delta: float) -> dict:
    rows = [("whole", 0.50), ("tile256-gaussian", 0.50 + tile_delta), ("tile256-uniform", 0.49), ("tta-flip", 0.51)]
    return {"command": "python benchmarks/tiling.py", "machine": "m", "date": "d", "load": [1.0, 1.0],
            "seconds": 10.0, "train": {"steps": 5, "seconds": 3.0, "strategy": "head", "crop": 256, "batch": 8,
                                       "train_images": 367},
            "val_stride": 2, "images": 51, "size": [360, 480], "tiles_per_image": {"256": 6},
            "rows": [{"variant": v, "miou": m, "pixel_acc": 0.8, "seconds": 1.0, "per_class": {}} for v, m in rows]}


def test_section_reports_the_difference_and_the_goal(tmp_path: Path) -> None:
    tiling = load_benchmark("tiling")
    text = tiling.section(_doc(-0.003), tmp_path / "tiling.json")
    assert text.startswith("## Tiling") and "| tile256-gaussian | 6 | 49.70 | -0.30 |" in text
    assert "256 px tiles with Gaussian blending: -0.30 points vs whole-image (within the 0.5-point goal)" in text
    assert "uniform averaging -1.00" in text and "TTA flip: +1.00 points" in text
    assert "Gaussian blending beat plain averaging at every tile size (Gaussian minus uniform: +0.70 at 256 px)" in text
    assert "(outside the 0.5-point goal)" in tiling.section(_doc(-0.008))
