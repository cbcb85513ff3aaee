"""benchmarks/overhead.py and benchmarks/throughput.py run end to end in a tiny setting.

No timing is asserted (speed lives in the benchmarks and benchmarks/RESULTS.md); only that both
scripts run and report finite, positive rates and ratios. Without ../shared/data/camvid the
scripts use generated 480x360 stand-in data.
"""

from __future__ import annotations

import math

from conftest import load_benchmark


def _ok(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_overhead_quick_runs() -> None:
    res = load_benchmark("overhead").main(
        ["--quick", "--rounds", "1", "--steps", "1", "--batch", "2", "--crop", "64",
         "--workers", "0,1", "--max-images", "4"]
    )
    loop = res["loop"]
    assert len(loop["rounds"]) == 1
    for key in ("bare_ips", "bare_nhwc_ips", "segtune_ips", "ratio", "ratio_nhwc"):
        assert _ok(loop[key]), (key, loop[key])
    rows = res["data"]["rows"]
    assert [(r["workers"], r["warm"]) for r in rows] == [(0, True), (1, True), (0, False)]
    for r in rows:
        assert 0 <= r["wait_frac"] < 1 and _ok(r["step_s"])
    assert _ok(res["rss"]["peak_mb"]) and res["rss"]["peak_mb"] > 100


def test_throughput_quick_runs() -> None:
    res = load_benchmark("throughput").main(["--quick", "--rounds", "1", "--images", "2", "--batch", "2"])
    for name, ips in res["ips"].items():
        assert _ok(ips), (name, ips)
    for key in ("eval_ratio", "eval_ratio_nhwc", "eval_total_ratio", "pred_ratio", "pred_ratio_nhwc"):
        assert _ok(res[key]), (key, res[key])
    assert res["cm_agreement"] > 0.99  # segtune and the bare loop compute the same predictions


def test_forward_chunked_matches_whole_batch() -> None:
    import torch

    from segtune._tensor import forward_chunked
    from segtune.models import create_model

    model = create_model("unet", "tf_efficientnet_lite0", num_classes=3, weights="none").eval()
    x = torch.randn(3, 3, 64, 96)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(int(args[0].shape[0])))
    with torch.inference_mode():
        whole = model(x)
        calls.clear()
        chunked = forward_chunked(model, x, max_pixels=2 * 64 * 96)
    handle.remove()
    assert calls == [2, 1]  # split into passes of at most 2 images
    assert torch.allclose(whole, chunked, atol=1e-4, rtol=1e-4)
    assert torch.equal(whole.argmax(1), chunked.argmax(1)) or (whole.argmax(1) != chunked.argmax(1)).float().mean() < 1e-3
