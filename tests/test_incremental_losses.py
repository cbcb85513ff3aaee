"""Class-incremental building blocks on tiny tensors: MiB/PLOP losses, pseudo-labels, heads.

Expected values are computed here with plain ``math`` from the written-out logits, not by
calling the formula under test again.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segtune.errors import ConfigError
from segtune.incremental import (
    INIT_REGISTRY,
    entropy_pseudo_labels,
    entropy_uncertainty,
    expand_classifier,
    find_classifier,
    find_classifiers,
    grow_model_classes,
    kd_loss,
    local_pod,
    logits_merge_new_into_background,
    median_uncertainty_thresholds,
    pod_embedding,
    unbiased_cross_entropy,
    unbiased_kd,
)
from segtune.models import create_model


def _pixels(*columns: list[float]) -> torch.Tensor:
    """(1, C, 1, W) logits from W per-pixel channel lists."""
    return torch.tensor(columns, dtype=torch.float32).T.reshape(1, len(columns[0]), 1, -1)


def _lse(*v: float) -> float:
    return math.log(sum(math.exp(x) for x in v))


# ------------------------------------------------------------------ MiB: UNCE
def test_unbiased_ce_hand_value() -> None:
    # channels: 0 background, 1 old class, 2 new class (num_old = 2)
    logits = _pixels([1.0, 2.0, 0.5], [0.0, -1.0, 3.0], [5.0, 5.0, 5.0], [0.2, 0.7, -0.3])
    target = torch.tensor([[[0, 2, 255, 1]]])  # old label 1 (a replayed pixel) keeps its class, 255 ignored
    bg_a = -(_lse(1.0, 2.0) - _lse(1.0, 2.0, 0.5))
    new_b = -(3.0 - _lse(0.0, -1.0, 3.0))
    old_d = -(0.7 - _lse(0.2, 0.7, -0.3))
    expected = (bg_a + new_b + old_d) / 3
    got = unbiased_cross_entropy(logits, target, num_old=2)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_unbiased_ce_is_plain_ce_with_only_background_old() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 3, generator=g)
    target = torch.randint(0, 4, (2, 3, 3), generator=g)
    target[0, 0, 0] = 255
    got = unbiased_cross_entropy(logits, target, num_old=1)
    assert torch.allclose(got, F.cross_entropy(logits, target, ignore_index=255), atol=1e-6)
    # a single new-class pixel, by hand
    one = _pixels([0.3, -0.4, 1.1])
    expected = -(-0.4 - _lse(0.3, -0.4, 1.1))
    assert unbiased_cross_entropy(one, torch.tensor([[[1]]]), 1).item() == pytest.approx(expected)


def test_unbiased_ce_all_ignored_is_zero_with_graph() -> None:
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = unbiased_cross_entropy(logits, torch.full((1, 2, 2), 255), num_old=2)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)
    with pytest.raises(ValueError, match="num_old"):
        unbiased_cross_entropy(logits, torch.zeros(1, 2, 2, dtype=torch.long), num_old=3)


# ------------------------------------------------------------------ MiB: UNKD
def test_unbiased_kd_hand_value_and_mask() -> None:
    new = _pixels([0.0, 1.0, 2.0], [1.0, 1.0, 1.0])  # bg, old 1, new 2
    old = _pixels([1.0, 0.0], [0.0, 0.0])
    s = 1 + math.e + math.e**2
    p0, p1 = math.e / (math.e + 1), 1 / (math.e + 1)
    pixel_a = -(p0 * math.log((1 + math.e**2) / s) + p1 * math.log(math.e / s)) / 2
    pixel_b = -(0.5 * math.log(2 / 3) + 0.5 * math.log(1 / 3)) / 2
    got = unbiased_kd(new, old)
    assert got.item() == pytest.approx((pixel_a + pixel_b) / 2, rel=1e-6)
    mask = torch.tensor([[[True, False]]])
    assert unbiased_kd(new, old, mask=mask).item() == pytest.approx(pixel_a, rel=1e-6)
    # alpha sharpens the teacher only: old logits [2, 0]
    q0, q1 = math.e**2 / (math.e**2 + 1), 1 / (math.e**2 + 1)
    sharp_a = -(q0 * math.log((1 + math.e**2) / s) + q1 * math.log(math.e / s)) / 2
    got_alpha = unbiased_kd(new, old, alpha=2.0, mask=mask)
    assert got_alpha.item() == pytest.approx(sharp_a, rel=1e-6)
    assert unbiased_kd(new, old, mask=torch.zeros(1, 1, 2, dtype=torch.bool)).item() == 0.0


# ---------------------------------------------------------------- plain KD
def test_kd_zero_when_new_reproduces_old_and_hand_value() -> None:
    g = torch.Generator().manual_seed(1)
    old = torch.randn(2, 3, 4, 4, generator=g)
    new = torch.cat([old, torch.randn(2, 2, 4, 4, generator=g)], dim=1).requires_grad_(True)
    loss = kd_loss(new, old, T=2.0)
    assert abs(loss.item()) < 1e-7
    loss.backward()
    # T = 2: teacher softmax([0.5, 0]), student softmax([0, 0.5]), times T^2 = 4
    a, b = math.exp(0.5) / (math.exp(0.5) + 1), 1 / (math.exp(0.5) + 1)
    kl = a * math.log(a / b) + b * math.log(b / a)
    got = kd_loss(_pixels([0.0, 1.0, 9.0]), _pixels([1.0, 0.0]), T=2.0)
    assert got.item() == pytest.approx(4 * kl, rel=1e-5)
    masked = kd_loss(
        _pixels([0.0, 1.0], [1.0, 0.0]),
        _pixels([1.0, 0.0], [1.0, 0.0]),
        mask=torch.tensor([[[False, True]]]),
    )
    assert abs(masked.item()) < 1e-7


# ------------------------------------------------------------------- PLOP: POD
def test_pod_embedding_hand_values() -> None:
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # squared: [[1, 4], [9, 16]]
    # scale 1: mean over width per row (2.5, 12.5), mean over height per column (5, 10)
    assert pod_embedding(x, scales=(1,)).tolist() == [[2.5, 12.5, 5.0, 10.0]]
    # scale 2: four 1x1 tiles, each contributes its value twice
    both = pod_embedding(x, scales=(1, 2)).tolist()[0]
    assert both == [2.5, 12.5, 5.0, 10.0, 1, 1, 4, 4, 9, 9, 16, 16]
    # non-square maps: tiles of H // s rows and W // s columns
    assert pod_embedding(torch.ones(2, 3, 4, 8), scales=(1, 2, 4)).shape == (2, 3 * (12 + 24 + 48))
    with pytest.raises(ValueError, match="scales"):
        pod_embedding(torch.ones(1, 1, 2, 2), scales=(4,))


def test_local_pod_zero_identical_and_hand_value() -> None:
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 5, 4, 4, generator=g)]
    assert local_pod(feats, [f.clone() for f in feats]).item() == 0.0
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    zero = torch.zeros_like(x)
    one_map = math.sqrt(2.5**2 + 12.5**2 + 5**2 + 10**2)
    assert local_pod([x], [zero], scales=(1,)).item() == pytest.approx(one_map, rel=1e-6)
    # batch mean, then (sum of factor * map term) / number of maps
    old = torch.cat([x, x])
    new = torch.cat([zero, x])
    got = local_pod([old, x], [new, x], scales=(1,), factors=(0.5, 7.0))
    assert got.item() == pytest.approx(0.5 * (one_map / 2) / 2, rel=1e-6)


def test_logits_merge_new_into_background() -> None:
    z = _pixels([1.0, 2.0, 3.0, 4.0])  # bg, old, new, new
    assert logits_merge_new_into_background(z, num_old=2).flatten().tolist() == [8.0, 2.0]
    assert logits_merge_new_into_background(z, num_old=4).flatten().tolist() == [1, 2, 3, 4]


# ------------------------------------------------------------ PLOP: pseudo-labels
def _entropy2(a: float, b: float) -> float:
    """Binary entropy of softmax([a, b]) divided by log 2."""
    pa = math.exp(a) / (math.exp(a) + math.exp(b))
    return -(pa * math.log(pa) + (1 - pa) * math.log(1 - pa)) / math.log(2)


def test_entropy_uncertainty_normalised_by_log_num_old() -> None:
    u, cls = entropy_uncertainty(_pixels([3.0, 0.0], [0.0, 0.0], [0.0, 3.0]))
    assert u.flatten().tolist() == pytest.approx([_entropy2(3, 0), 1.0, _entropy2(3, 0)], rel=1e-5)
    assert cls.flatten().tolist()[0::2] == [0, 1]
    u1, _ = entropy_uncertainty(torch.randn(1, 1, 2, 2))
    assert torch.all(u1 == 0)


def test_entropy_pseudo_labels_thresholds_and_nu() -> None:
    # image 0: confident bg, confident old class 1, uncertain, new class 2, ignored
    img0 = [[3.0, 0.0], [0.0, 3.0], [0.0, 0.1], [1.0, 0.0], [0.0, 1.0]]
    img1 = [[3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [3.0, 0.0], [3.0, 0.0]]  # no background pixel
    old = torch.cat([_pixels(*img0), _pixels(*img1)])
    target = torch.tensor([[[0, 0, 0, 2, 255]], [[2, 2, 255, 3, 3]]])
    assert _entropy2(3, 0) < 0.5 < _entropy2(0, 0.1)
    labels, nu = entropy_pseudo_labels(old, target, num_old=2, thresholds=torch.tensor([0.5, 0.5]))
    assert labels[0].flatten().tolist() == [0, 1, 255, 2, 255]
    assert labels[1].flatten().tolist() == [2, 2, 255, 3, 3]
    assert nu.tolist() == pytest.approx([2 / 3, 1.0])
    # a stricter background threshold rejects the background pixel (u = 0.275 > 0.1)
    labels, nu = entropy_pseudo_labels(old, target, 2, thresholds=torch.tensor([0.1, 0.5]))
    assert labels[0].flatten().tolist() == [255, 1, 255, 2, 255]
    assert nu[0].item() == pytest.approx(1 / 3)
    # no threshold: every background pixel takes the old argmax
    labels, nu = entropy_pseudo_labels(old, target, 2)
    assert labels[0].flatten().tolist() == [0, 1, 1, 2, 255] and nu[0].item() == 1.0


def test_median_thresholds_true_median_and_floor() -> None:
    u = torch.tensor([0.3, 0.1, 0.2, 0.0002, 0.0004, 0.4, 0.1, 0.3, 0.2])
    c = torch.tensor([1, 1, 1, 0, 0, 2, 2, 2, 2])
    tau = median_uncertainty_thresholds(u, c, num_classes=4, floor=0.001)
    # class 1: median of [0.1, 0.2, 0.3]; class 0: 0.0003 < floor; class 2: (0.2 + 0.3) / 2;
    # class 3: no pixel -> floor
    assert tau.tolist() == pytest.approx([0.001, 0.2, 0.25, 0.001])
    assert median_uncertainty_thresholds(u, c, 4, floor=0.0)[0].item() == pytest.approx(0.0003)


# -------------------------------------------------------------- classifier growth
def test_expand_classifier_copies_old_channels_and_mib_splits_background() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 3, 1)
    x = torch.randn(2, 4, 5, 5)
    for init in ("zeros", "random"):
        grown = expand_classifier(conv, 2, init)
        assert grown.out_channels == 5
        assert torch.equal(grown.weight[:3], conv.weight) and torch.equal(grown.bias[:3], conv.bias)
        # a 1x1 conv with 3 or 5 outputs may take different GEMM paths: equal to rounding
        assert torch.allclose(grown(x)[:, :3], conv(x), rtol=0, atol=1e-6)
    conv3 = nn.Conv2d(4, 3, 3, padding=1, bias=False).requires_grad_(False)
    grown3 = expand_classifier(conv3, 1, "zeros")
    assert grown3.bias is None and not grown3.weight.requires_grad
    assert grown3.kernel_size == (3, 3) and torch.equal(grown3(x)[:, :3], conv3(x))
    with pytest.raises(ValueError, match="bias"):
        expand_classifier(conv3, 1, "mib")
    assert torch.all(expand_classifier(conv, 2, "zeros")(x)[:, 3:] == 0)
    mib = expand_classifier(conv, 2, "mib")
    assert torch.equal(mib.weight[3], conv.weight[0]) and torch.equal(mib.weight[4], conv.weight[0])
    b0 = conv.bias[0].item() - math.log(3)
    assert mib.bias.tolist() == pytest.approx([b0, *conv.bias[1:].tolist(), b0, b0], abs=1e-6)
    p_old, p_new = conv(x).softmax(1), mib(x).softmax(1)
    third = p_old[:, 0] / 3  # background and the 2 new classes share the old background mass
    for ch in (0, 3, 4):
        assert torch.allclose(p_new[:, ch], third, atol=1e-6)
    assert torch.allclose(p_new[:, 1:3], p_old[:, 1:3], atol=1e-6)
    assert torch.allclose(p_new.sum(1), torch.ones(2, 5, 5), atol=1e-6)
    with pytest.raises(ConfigError, match="did you mean 'mib'"):
        expand_classifier(conv, 1, "mibb")
    assert INIT_REGISTRY.names() == ["mib", "zeros", "random"]


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("unet", ["net.segmentation_head.0"]),
        ("fpn", ["net.segmentation_head.0"]),
        ("deeplabv3plus", ["net.segmentation_head.0"]),
        (
            "lraspp_mobilenet_v3_large",
            ["net.classifier.low_classifier", "net.classifier.high_classifier"],
        ),
    ],
)
def test_find_classifiers(arch: str, expected: list[str]) -> None:
    model = create_model(arch, num_classes=3, weights="none")
    names = {id(m): n for n, m in model.named_modules()}
    found = find_classifiers(model)
    assert [names[id(conv)] for _, _, conv in found] == expected
    parent, attr, conv = find_classifier(model)
    assert getattr(parent, attr) is conv and conv.out_channels == 3
    assert names[id(conv)] == expected[-1]


def test_find_classifier_ignores_decoder_convs_with_the_class_count() -> None:
    model = create_model("unet", num_classes=16, weights="none")
    decoder16 = [
        m for m in model.net.decoder.modules() if isinstance(m, nn.Conv2d) and m.out_channels == 16
    ]
    assert decoder16  # the pitfall exists: the last decoder block outputs 16 channels
    assert [c for _, _, c in find_classifiers(model)] == [model.net.segmentation_head[0]]
    plain = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    assert find_classifiers(plain, num_classes=4) == [(plain, "2", plain[2])]


@pytest.mark.parametrize("arch", ["unet", "lraspp_mobilenet_v3_large"])
def test_grow_model_keeps_old_logits(arch: str) -> None:
    """Old-class weights are exact copies. The old logits are bitwise equal where the conv
    kernel does not depend on the output-channel count: U-Net's 3x3 head (oneDNN). LR-ASPP's
    1x1 heads run, single-threaded with batch < 16, through PyTorch's GEMM path, whose
    summation order changes with 3 vs 5 output rows: equal there up to float32 rounding."""
    exact = arch == "unet"

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return torch.equal(a, b) if exact else torch.allclose(a, b, rtol=0, atol=1e-6)

    torch.manual_seed(0)
    model = create_model(arch, num_classes=3, weights="none").eval()
    zeros = copy.deepcopy(model)
    old_params = [(c.weight.clone(), c.bias.clone()) for _, _, c in find_classifiers(model)]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        grown = grow_model_classes(zeros, 2, init="zeros")
        after_zeros = zeros(x)
        grow_model_classes(model, 2, init="mib")
        after_mib = model(x)
    assert len(grown) == (2 if arch.startswith("lraspp") else 1)  # LR-ASPP: both branches
    assert model.num_classes == zeros.num_classes == 5 and model.describe()["num_classes"] == 5
    assert after_zeros.shape == (1, 5, 64, 64)
    assert same(after_zeros[:, :3], before)
    assert torch.all(after_zeros[:, 3:] == 0)
    assert same(after_mib[:, 1:3], before[:, 1:3])  # old classes unchanged
    for (w, b), (_, _, conv) in zip(old_params, find_classifiers(zeros), strict=True):
        assert torch.equal(conv.weight[:3], w) and torch.equal(conv.bias[:3], b)
    # background (bias lowered by log 3, split over LR-ASPP's two convs) and the new classes
    # share the old background probability equally
    assert torch.allclose(after_mib[:, 0], before[:, 0] - math.log(3), atol=1e-4)
    p_old, p_new = before.softmax(1), after_mib.softmax(1)
    for ch in (0, 3, 4):
        assert torch.allclose(p_new[:, ch], p_old[:, 0] / 3, atol=1e-5)
    assert torch.allclose(p_new[:, [0, 3, 4]].sum(1), p_old[:, 0], atol=1e-5)
    assert torch.allclose(p_new[:, 1:3], p_old[:, 1:3], atol=1e-5)


def test_unbiased_ce_keeps_old_labels_of_replayed_pixels() -> None:
    # channels: background, old class 1, new class 2; a replayed pixel labelled with old class 1
    z = [0.2, 1.0, -0.5]
    logits = _pixels(z)
    den = math.log(sum(math.exp(v) for v in z))
    got = unbiased_cross_entropy(logits, torch.tensor([[[1]]]), num_old=2)
    assert got.item() == pytest.approx(den - 1.0, rel=1e-6)  # -log softmax(z)_1, not the background sum
