"""benchmarks/transferability.py: Kendall's tau and the RESULTS.md section from a hand-made result."""

from __future__ import annotations

import pytest
from conftest import load_benchmark


def test_kendall_tau_b() -> None:
    bench = load_benchmark("transferability")
    assert bench.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert bench.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # one swapped pair of 4: (5 - 1) / 6
    assert bench.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # tau-b with a tie in the first list: 2 concordant pairs, 1 tied in a only -> 2 / sqrt(3 * 2)
    assert bench.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / (3 * 2) ** 0.5)
    assert bench.kendall_tau([1, 1], [2, 3]) is None


def _doc(flip: bool) -> dict:
    names = ["tf_efficientnet_lite0", "tf_efficientnet_lite1", "random:tf_efficientnet_lite0"]
    miou = [0.5, 0.4, 0.1]
    if flip:
        miou = miou[::-1]
    rows = [{"candidate": c, "seconds": 1.0, "scores": {"logme": s, "h_score": 2 * s, "gbc": -1 / (1 + s)}}
            for c, s in zip(names, [0.6, 0.5, 0.2], strict=True)]
    ds = {"candidates": names, "rank": {lv: {"rows": rows} for lv in ("multi", "deepest")},
          "finetune": {c: {"miou": m, "seconds": 1.0} for c, m in zip(names, miou, strict=True)}}
    return {"profile": {"other_steps": 1, "rank_images": 3, "pixels_per_class": 10, "steps": 1, "batch": 2,
                        "crop": 64, "camvid_scale": 0.5},
            "datasets": {"camvid": ds}, "other": {"membrane": {"miou": 0.7}}, "command": "python benchmarks/x.py",
            "seconds": 1.0, "machine": "m", "date": "d", "load": [0.0, 0.0],
            "cost": {"seconds": 100.0, "goal_seconds": 180, "images": 3, "pixels": 30, "per_candidate": {"a": 1.0}}}


@pytest.mark.parametrize("flip", [False, True])
def test_section_follows_the_numbers(flip: bool) -> None:
    bench = load_benchmark("transferability")
    doc = _doc(flip)
    bench.tau_table(doc["datasets"]["camvid"])
    t = doc["datasets"]["camvid"]["tau"]["multi/logme"]
    assert t["tau"] == (-1.0 if flip else 1.0) and t["top1_hit"] is (not flip) and t["random_last"] is True
    text = bench.section(doc)
    assert f"| camvid | multi | logme | {'-1.00' if flip else '1.00'} |" in text
    assert "100 s against the 180 s goal: met" in text
    best = "random:tf_efficientnet_lite0" if flip else "tf_efficientnet_lite0"
    assert f"the best fine-tuned candidate was {best} " in text
