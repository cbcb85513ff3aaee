"""The benchmark reports are computed from their raw JSON, and the bare loop's "same recipe" matches segtune's.

No training here: the RESULTS.md sections of fair_compare, overhead, throughput and memory are
generated from small hand-made result dicts, and the sentences that state a result must follow
the data (flip the data, the sentence flips). The bare loop's hand-written ce+dice loss must equal
segtune's default loss (value and gradient).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_benchmark

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"




@pytest.mark.parametrize("cw", ["median", "none"])
def test_bare_loop_ce_dice_equals_segtune_default_loss(cw: str) -> None:
    from segtune.config import LossConfig
    from segtune.losses import build_loss, class_weights_from_counts

    bare = load_benchmark("bare_loop")
    C, ign = 11, 11
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, C + 1, (24, 32)) for _ in range(3)]
    masks[0][masks[0] == 10] = 3  # a rare class
    counts = np.zeros(C, np.int64)
    for m in masks:
        counts += np.bincount(m[m < C], minlength=C)
    mine = bare._build_loss("ce+dice", C, ign, masks, cw)
    ref = build_loss(LossConfig(name="ce+dice"), C, ign, class_weights_from_counts(counts, cw))
    torch.manual_seed(0)
    x = torch.randn(2, C, 16, 16, requires_grad=True)
    y = torch.randint(0, C + 1, (2, 16, 16))
    y[y == 5] = 0  # a class absent from the batch
    a, b = mine(x, y), ref(x, y)
    (ga,), (gb,) = torch.autograd.grad(a, x), torch.autograd.grad(b, x)
    assert torch.allclose(a, b, atol=1e-6) and torch.allclose(ga, gb, atol=1e-7)


def _fair_doc(lib_gap: float) -> dict:
    rows = []
    for lr, cw, v in ((1e-3, "median", 0.40), (3e-3, "median", 0.45), (1e-2, "median", 0.42),
                      (1e-3, "none", 0.35), (3e-3, "none", 0.38), (1e-2, "none", 0.36)):
        rows.append({"stage": "select", "contender": f"head lr {lr:g} cw {cw}", "size": 267, "seed": 0, "lr": lr,
                     "cw": cw, "miou": v, "kind": "segtune", "seconds": 1.0, "load": [1.0, 1.0]})
    seg_settings = {"loss": "ce+dice", "class_weights": "median", "scale": [1.0, 1.0], "color_jitter": 0.0,
                    "lr": 0.003, "schedule": "cosine", "warmup_steps": 20}
    bare_settings = {"strategy": "head", "loss": "ce+dice", "class_weights": "median", "schedule": "warmup-cosine",
                     "lr": 0.003, "encoder_lr_factor": 1.0, "weight_decay": 1e-4, "warmup_steps": 20, "grad_clip": 1.0}
    for seed, noise in ((0, 0.0), (1, 0.01), (2, -0.01)):
        base = 0.50 + noise
        for c, v, kind, st in (("segtune-head", base + lib_gap + (0.004 if seed == 1 else -0.002), "segtune", seg_settings),
                               ("bare-head", base, "bare", bare_settings),
                               ("user-full", base - 0.03 + noise / 2, "bare",
                                {**bare_settings, "strategy": "full", "loss": "wce+dice", "schedule": "one-cycle"})):
            rows.append({"stage": "eval", "contender": c, "size": 367, "seed": seed, "miou": v, "kind": kind,
                         "settings": st, "seconds": 10.0, "load": [1.0, 1.0]})
    machine = {"arch": "x86_64", "cpu_cores": 2, "mem_gib": 24.0, "gpu": None, "os": "Linux", "python": "3.11",
               "torch": "2", "torch_threads": 1}
    return {"profile": {"scale": 0.5, "crop": 128, "batch": 8, "steps": 200, "max_val": None,
                        "split": {"train": 267, "heldout": 100, "seed": 0}},
            "meta": {"commands": ["python benchmarks/fair_compare.py --resume --write-results"], "updated": "today",
                     "machine": machine},
            "selection_plan": {"sizes": [267], "seeds": [0]},
            "selection": {"candidate": "head lr 0.003 cw median", "lr": 0.003, "class_weights": "median",
                          "heldout_miou": 0.45},
            "current_default": {"lr": 0.003, "class_weights": "median"},
            "plan": {"sizes": [367], "seeds": [0, 1, 2], "contenders": ["segtune-head", "bare-head", "user-full"]},
            "rows": rows}


def test_fair_compare_section_follows_the_data(tmp_path: Path) -> None:
    fc = load_benchmark("fair_compare")
    doc = _fair_doc(lib_gap=0.0)
    assert fc.pick(doc["rows"], doc["selection_plan"])["candidate"] == "head lr 0.003 cw median"
    text = fc.section(doc)
    assert "**agrees** with it" in text and "**45.0**" in text
    assert "library: +0.0" in text and "no difference detectable" in text.split("- library:")[1].split("\n")[0]
    # a clear library gap on every seed is reported as such
    text = fc.section(_fair_doc(lib_gap=0.05))
    assert "`segtune-head` ahead of `bare-head`" in text.split("- library:")[1].split("\n")[0]
    # the selection disagreeing with today's default is said so
    doc = _fair_doc(0.0)
    doc["current_default"] = {"lr": 0.001, "class_weights": "median"}
    assert "**differs** from it" in fc.section(doc)
    # missing planned runs are listed with the resume command
    doc["plan"]["contenders"].append("bare-full")
    assert "**Incomplete:** 3 planned run(s) missing" in fc.section(doc)
    md = tmp_path / "RESULTS.md"
    md.write_text("# Benchmark results\n\nkeep me\n")
    fc.write_results(doc, md)
    fc.write_results(doc, md)
    out = md.read_text()
    assert "keep me" in out and out.count(fc.START) == 1


def test_overhead_and_throughput_sentences_are_computed() -> None:
    oh = load_benchmark("overhead")
    rounds = [{"round": 1, "bare_ips": 3.0, "bare_nhwc_ips": 4.0, "segtune_ips": 4.2, "ratio": 1.4,
               "ratio_nhwc": 1.05, "setup_s": 0.2}]
    res = {"command": "python benchmarks/overhead.py --quick", "seconds": 60.0, "machine": "m", "date": "d",
           "load": [0.1, 0.2], "threads": 1,
           "loop": {"batch": 2, "crop": 64, "steps": 1, "rounds": rounds, "bare_ips": 3.0, "bare_nhwc_ips": 4.0,
                    "segtune_ips": 4.2, "ratio": 1.4, "ratio_nhwc": 1.05, "setup_s": 0.2}}
    text = oh._section(res, BENCH / "overhead.json")
    assert "**1.40x** the speed of the plain bare loop" in text and "segtune faster than it" in text
    assert "`benchmarks/overhead.json`" in text
    res["loop"].update(ratio=0.9, ratio_nhwc=0.7)
    text = oh._section(res)
    assert "segtune slower than it" in text and "faster than it" not in text

    tp = load_benchmark("throughput")
    ips = {"eval_bare": 2.0, "eval_bare_nhwc": 3.0, "eval_segtune": 3.0, "pred_bare": 2.0, "pred_bare_nhwc": 2.0,
           "pred_segtune": 1.0}
    res = {"command": "c", "seconds": 1.0, "machine": "m", "date": "d", "rounds": 1, "data": "x", "batch": 4,
           "images": 2, "ips": ips, "eval_ratio": 1.5, "eval_ratio_nhwc": 1.0, "pred_ratio": 0.5,
           "pred_ratio_nhwc": 0.5, "eval_total_ips": 2.5, "eval_total_ratio": 1.25, "eval_fixed_s": 0.1,
           "pred_load_s": 0.1, "cm_agreement": 1.0}
    text = tp._section(res)
    assert "1.50x the plain NCHW bare loop (faster than it)" in text
    assert "1.00x the channels-last bare loop (about as fast as it, within 2%)" in text
    assert "0.50x the NCHW bare loop (slower than it)" in text


def test_memory_section_from_json() -> None:
    mem = load_benchmark("memory")
    train = [{"crop": c, "batch": b, "base_mb": 700.0, "peak_mb": 1000.0 + 2500.0 * b * c * c / 1e6, "seconds": 1.0}
             for c, b in ((256, 2), (384, 4))]
    pred = [{"size": 512, "tiled": False, "base_mb": 700.0, "peak_mb": 800.0, "seconds": 0.1},
            {"size": 4096, "tiled": True, "base_mb": 700.0, "peak_mb": 750.0, "seconds": 1.0}]
    a, b = mem._fit(train)
    res = {"profile": "quick", "command": "python benchmarks/memory.py --quick --record", "machine": "m", "date": "d",
           "seconds": 5.0, "load": [0.0, 0.0], "steps": 3, "train": train, "predict": pred,
           "fit": {"a_mb": a, "b_mb_per_mpx": b, "worst_mb": 0.0}}
    text = mem.section({"quick": res})
    assert "~ 1000 MB + 2500 MB x batch x crop^2 / 1e6" in text
    assert "training adds 300 MB fixed" in text
    assert "peaked at 750 MB, less than the untiled 512^2" in text
