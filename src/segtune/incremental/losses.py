"""Losses and pseudo-labels of class-incremental segmentation (MiB, PLOP), as pure functions.

Notation (see ``docs/incremental.md``): at step t the new model outputs ``C_t`` channels; the
first ``num_old`` of them are background (channel 0) and the classes of earlier steps, the
rest are the classes learned at step t. The old (frozen) model outputs ``num_old`` channels.
Training labels at step t hold 0 (background: old, future and true background), the new
classes ``[num_old, C_t)`` and ``ignore_index``.

All functions compute in float32 (safe under AMP), treat the old model's outputs as constants
(they are detached) and return a graph-connected ``0.0`` (never NaN) when no pixel counts.

* :func:`unbiased_cross_entropy`, :func:`unbiased_kd`: MiB (Cermelli et al., CVPR 2020).
* :func:`kd_loss`: plain LwF-style distillation on the old channels.
* :func:`pod_embedding`, :func:`local_pod`, :func:`logits_merge_new_into_background`,
  :func:`entropy_uncertainty`, :func:`median_uncertainty_thresholds`,
  :func:`entropy_pseudo_labels`: PLOP (Douillard et al., CVPR 2021).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "unbiased_cross_entropy",
    "unbiased_kd",
    "kd_loss",
    "pod_embedding",
    "local_pod",
    "logits_merge_new_into_background",
    "entropy_uncertainty",
    "median_uncertainty_thresholds",
    "entropy_pseudo_labels",
]


# ------------------------------------------------------------------- helpers
def _zero_like_graph(t: Tensor) -> Tensor:
    """A float32 scalar 0 still connected to ``t`` (so ``backward()`` works)."""
    return t.float().sum() * 0.0


def _masked_mean(per_pixel: Tensor, mask: Tensor | None, ref: Tensor) -> Tensor:
    """Mean of ``per_pixel`` (N, ...) over ``mask`` (all pixels when None); 0 if mask is empty."""
    if mask is None:
        return per_pixel.mean() if per_pixel.numel() else _zero_like_graph(ref)
    if mask.shape != per_pixel.shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match pixels {tuple(per_pixel.shape)}")
    m = mask.to(per_pixel.dtype)
    denom = m.sum()
    num = (per_pixel * m).sum()
    return torch.where(denom > 0, num / denom.clamp_min(1e-12), _zero_like_graph(ref))


def _check_old_new(new_logits: Tensor, old_logits: Tensor) -> int:
    """Validate (N, C_t, ...) new and (N, C_old, ...) old logits; return C_old."""
    if new_logits.dim() < 2 or new_logits.dim() != old_logits.dim():
        raise ValueError(
            f"expected new (N, C_t, H, W) and old (N, C_old, H, W) logits, got "
            f"{tuple(new_logits.shape)} and {tuple(old_logits.shape)}"
        )
    num_old = old_logits.shape[1]
    if (
        new_logits.shape[0] != old_logits.shape[0]
        or new_logits.shape[2:] != old_logits.shape[2:]
        or new_logits.shape[1] < num_old
        or num_old < 1
    ):
        raise ValueError(
            f"new logits {tuple(new_logits.shape)} must have the old logits' batch and size "
            f"{tuple(old_logits.shape)} and at least as many channels"
        )
    return num_old


# ------------------------------------------------------------------------ MiB
def unbiased_cross_entropy(
    logits: Tensor, target: Tensor, num_old: int, ignore_index: int = 255
) -> Tensor:
    """MiB's unbiased cross-entropy: background absorbs the probability of every old class.

    For a pixel labelled 0 the probability is ``sum_{k < num_old} softmax(z)_k``, i.e.
    ``log q~ = logsumexp(z[:num_old]) - logsumexp(z)``; for a pixel of a new class c the usual
    ``log softmax(z)_c``. Labels of old classes ``[1, num_old)`` (replayed memory samples keep
    theirs) get the usual ``log softmax(z)_c`` too; MiB's own code, which never sees old
    labels, would count them as background.

    Reduction: the mean over **non-ignored** pixels (like ``F.cross_entropy``). MiB's training
    code instead takes ``.mean()`` over all pixels with ignored ones counting 0 (it trains void
    as background, so it has few ignored pixels); multiply by the labelled fraction to get that.

    Args:
        logits: (N, C_t, H, W) new-model logits; channels ``[0, num_old)`` are background and
            old classes, ``[num_old, C_t)`` the new ones.
        target: (N, H, W) int labels in ``[0, C_t) U {ignore_index}``.
        num_old: number of old channels including background (``1 <= num_old < C_t``).
        ignore_index: label of pixels that do not count.

    Returns:
        Scalar float32 loss; 0 when every pixel is ignored. With ``num_old == 1`` it equals
        plain cross-entropy.
    """
    if (
        logits.dim() != target.dim() + 1
        or logits.shape[0] != target.shape[0]
        or (logits.shape[2:] != target.shape[1:])
    ):
        raise ValueError(
            f"expected logits (N, C, H, W) and target (N, H, W), got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if not 1 <= num_old < logits.shape[1]:
        raise ValueError(f"num_old={num_old} must be in [1, {logits.shape[1]}) (C_t channels)")
    z = logits.float()
    den = torch.logsumexp(z, dim=1)  # (N, H, W)
    log_bg = torch.logsumexp(z[:, :num_old], dim=1) - den
    valid = target != ignore_index
    t = torch.where(valid, target, torch.zeros_like(target)).long()
    log_p = (z.gather(1, t.unsqueeze(1)).squeeze(1)) - den
    log_q = torch.where(t == 0, log_bg, log_p)
    return _masked_mean(-log_q, valid, logits)


def unbiased_kd(
    new_logits: Tensor, old_logits: Tensor, alpha: float = 1.0, mask: Tensor | None = None
) -> Tensor:
    """MiB's unbiased knowledge distillation on the old channels.

    Teacher ``p = softmax(alpha * old_logits)`` over the ``num_old`` old channels. Student
    ``q^``: the background channel is ``log(q_0 + sum_{c >= num_old} q_c)`` (background plus
    every new class, since the old model saw the new classes as background), the old channels
    ``c in [1, num_old)`` are ``log q_c``, with ``q = softmax(new_logits)`` over all ``C_t``
    channels. Per pixel ``-(1 / num_old) sum_c p_c log q^_c`` (MiB divides by the number of
    old channels), averaged over the pixels.

    Args:
        new_logits: (N, C_t, H, W) new-model logits.
        old_logits: (N, num_old, H, W) old-model logits (detached here).
        alpha: teacher sharpening factor (MiB's ``alpha``, 1 = none).
        mask: optional (N, H, W) bool of the pixels to include; the mean runs over them
            (MiB multiplies by the mask and still divides by all pixels).

    Returns:
        Scalar float32 loss.
    """
    num_old = _check_old_new(new_logits, old_logits)
    z = new_logits.float()
    p = torch.softmax(alpha * old_logits.detach().float(), dim=1)
    den = torch.logsumexp(z, dim=1)
    log_bg = torch.logsumexp(torch.cat([z[:, :1], z[:, num_old:]], dim=1), dim=1) - den
    log_old = z[:, 1:num_old] - den.unsqueeze(1)
    per_pixel = -(p[:, 0] * log_bg + (p[:, 1:] * log_old).sum(dim=1)) / num_old
    return _masked_mean(per_pixel, mask, new_logits)


def kd_loss(
    new_logits: Tensor, old_logits: Tensor, T: float = 1.0, mask: Tensor | None = None
) -> Tensor:
    """Plain (LwF-style) distillation of the old model's outputs on the old channels.

    Per pixel ``T^2 * KL(softmax(old / T) || softmax(new[:, :num_old] / T))``, summed over the
    old channels and averaged over the pixels. KL rather than cross-entropy, so the loss is 0
    when the new model reproduces the old one (the gradient is the same: they differ by the
    teacher's entropy). The new model's extra channels are left out (renormalised over the
    old channels).

    Args:
        new_logits: (N, C_t, H, W) new-model logits, ``C_t >= num_old``.
        old_logits: (N, num_old, H, W) old-model logits (detached here).
        T: temperature (> 0); the ``T^2`` factor keeps gradient sizes comparable across T.
        mask: optional (N, H, W) bool of the pixels to include.

    Returns:
        Scalar float32 loss (>= 0).
    """
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    num_old = _check_old_new(new_logits, old_logits)
    log_q = F.log_softmax(new_logits[:, :num_old].float() / T, dim=1)
    log_p = F.log_softmax(old_logits.detach().float() / T, dim=1)
    per_pixel = (log_p.exp() * (log_p - log_q)).sum(dim=1) * (T * T)
    return _masked_mean(per_pixel, mask, new_logits)


# ----------------------------------------------------------------- PLOP: POD
def pod_embedding(x: Tensor, scales: Sequence[int] = (1, 2, 4)) -> Tensor:
    """PLOP's Local POD embedding of one feature map.

    The map is squared element-wise. For each scale s it is cut into s x s tiles of
    ``H // s`` rows and ``W // s`` columns (rows/columns beyond ``s * (H // s)`` are dropped);
    per tile the mean over the width (C x h values) and the mean over the height (C x w values)
    are appended, tiles in row-major order. No L2 normalisation. PLOP's code uses ``W // s``
    for both sides; this is the same on square maps and stays defined on non-square ones
    (PLOP's tiles would fall outside a map with ``H < W``).

    Args:
        x: (N, C, H, W) feature map.
        scales: tile counts per side, each ``<= min(H, W)``.

    Returns:
        (N, D) float32 embedding, ``D = C * sum_s s^2 * (H // s + W // s)``.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (N, C, H, W) feature map, got {tuple(x.shape)}")
    n, _, h, w = x.shape
    if not scales or any(int(s) < 1 or h // int(s) < 1 or w // int(s) < 1 for s in scales):
        raise ValueError(f"scales {tuple(scales)} must be >= 1 and fit a {h}x{w} map")
    sq = x.float().pow(2)
    parts: list[Tensor] = []
    for s in (int(v) for v in scales):
        th, tw = h // s, w // s
        for i in range(s):
            for j in range(s):
                tile = sq[:, :, i * th : (i + 1) * th, j * tw : (j + 1) * tw]
                parts.append(tile.mean(dim=3).reshape(n, -1))  # mean over width: C x th
                parts.append(tile.mean(dim=2).reshape(n, -1))  # mean over height: C x tw
    return torch.cat(parts, dim=1)


def local_pod(
    old_feats: Sequence[Tensor],
    new_feats: Sequence[Tensor],
    scales: Sequence[int] = (1, 2, 4),
    factors: Sequence[float] | None = None,
) -> Tensor:
    """PLOP's Local POD distillation over several feature maps.

    Per map (with the scales that fit its size; a 2x2 map uses 1 and 2): the L2 norm (not
    squared) of ``pod_embedding(old) - pod_embedding(new)`` per image,
    averaged over the batch, times the map's factor. The maps' terms are summed and divided by
    the number of maps. PLOP's adaptive factor ``sqrt(|Y_t| / |C_t|)`` (class counts including
    background) is left to the caller (multiply the result). For the logits map, merge the new
    channels first with :func:`logits_merge_new_into_background`.

    Args:
        old_feats: maps of the old model, each (N, C_i, H_i, W_i) (detached here).
        new_feats: the new model's maps, same shapes.
        scales: see :func:`pod_embedding`.
        factors: optional per-map weights (PLOP: 0.01 on features, 0.0005 on logits);
            default 1 each.

    Returns:
        Scalar float32 loss.
    """
    if len(old_feats) != len(new_feats) or not old_feats:
        raise ValueError(
            f"need as many old as new maps (>= 1), got {len(old_feats)} and {len(new_feats)}"
        )
    factors = [1.0] * len(old_feats) if factors is None else [float(f) for f in factors]
    if len(factors) != len(old_feats):
        raise ValueError(f"{len(factors)} factors for {len(old_feats)} maps")
    total = _zero_like_graph(new_feats[0])
    for old, new, f in zip(old_feats, new_feats, factors, strict=True):
        if old.shape != new.shape:
            raise ValueError(f"old map {tuple(old.shape)} and new map {tuple(new.shape)} differ")
        h, w = new.shape[-2:]
        fit = [s for s in scales if h // int(s) >= 1 and w // int(s) >= 1]  # small deep maps: coarser scales only
        diff = pod_embedding(old.detach(), fit) - pod_embedding(new, fit)
        total = total + f * torch.linalg.vector_norm(diff, dim=1).mean()
    return total / len(old_feats)


def logits_merge_new_into_background(new_logits: Tensor, num_old: int) -> Tensor:
    """Fold the new channels into background on raw logits, for POD on the logits (PLOP).

    Args:
        new_logits: (N, C_t, H, W) new-model logits.
        num_old: channels of the old model (background included), ``1 <= num_old <= C_t``.

    Returns:
        (N, num_old, H, W): channel 0 is ``z_0 + sum_{c >= num_old} z_c`` (a sum of raw logits,
        as in PLOP, not of probabilities); channels ``[1, num_old)`` unchanged.
    """
    if not 1 <= num_old <= new_logits.shape[1]:
        raise ValueError(f"num_old={num_old} must be in [1, {new_logits.shape[1]}]")
    bg = new_logits[:, :1] + new_logits[:, num_old:].sum(dim=1, keepdim=True)
    return torch.cat([bg, new_logits[:, 1:num_old]], dim=1)


# ------------------------------------------------------- PLOP: pseudo-labels
def entropy_uncertainty(old_logits: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised entropy of the old model's softmax and its predicted class, per pixel.

    ``u = -sum_c p_c log p_c / log(num_old)`` in [0, 1] (0 when ``num_old == 1``). PLOP's code
    divides the class-mean of ``-p log p`` by ``log(num_old)`` and then again by
    ``log(|Y_t|)``; segtune uses the single normalisation above, so thresholds are on a
    [0, 1] scale whatever the step.

    Args:
        old_logits: (N, num_old, H, W) old-model logits.

    Returns:
        ``(u, cls)``: (N, H, W) float32 uncertainty and (N, H, W) int64 argmax class.
    """
    logits = old_logits.detach().float()
    num_old = logits.shape[1]
    log_p = F.log_softmax(logits, dim=1)
    cls = logits.argmax(dim=1)
    if num_old == 1:
        return torch.zeros_like(log_p[:, 0]), cls
    ent = -(log_p.exp() * log_p).sum(dim=1)
    return (ent / math.log(num_old)).clamp(0.0, 1.0), cls


def median_uncertainty_thresholds(
    uncertainties: Tensor, classes: Tensor, num_classes: int, floor: float = 0.001
) -> Tensor:
    """Per-class thresholds ``tau_c = max(median of u over pixels predicted c, floor)``.

    A true median: the middle value, or the mean of the two middle values for an even count
    (PLOP's 100-bin histogram median adds bin indices instead of counts, so it is not the
    median). Classes without any value get ``floor``. Sorting is exact and has no size limit
    (``torch.quantile`` refuses inputs over 2^24 values); subsample for very large sets.

    Args:
        uncertainties: (P,) float uncertainties of background pixels over the training set
            (from :func:`entropy_uncertainty`).
        classes: (P,) int old-model predicted class of the same pixels, in ``[0, num_classes)``.
        num_classes: number of old classes (background included).
        floor: lower bound of every threshold (PLOP: 0.001).

    Returns:
        (num_classes,) float32 thresholds.
    """
    u = uncertainties.detach().reshape(-1).float()
    c = classes.detach().reshape(-1).long().to(u.device)
    if u.numel() != c.numel():
        raise ValueError(f"{u.numel()} uncertainties for {c.numel()} classes")
    out = torch.full((num_classes,), float(floor), dtype=torch.float32, device=u.device)
    for k in range(num_classes):
        v = u[c == k].sort().values
        n = v.numel()
        if n == 0:
            continue
        med = v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2
        out[k] = torch.clamp(med, min=float(floor))
    return out


def entropy_pseudo_labels(
    old_logits: Tensor,
    target: Tensor,
    num_old: int,
    thresholds: Tensor | float | None = None,
    ignore_index: int = 255,
) -> tuple[Tensor, Tensor]:
    """PLOP's entropy-based pseudo-labels for background pixels, and the adaptive weight nu.

    A pixel labelled 0 takes the old model's class ``c^ = argmax p`` when its uncertainty
    (:func:`entropy_uncertainty`) is below ``thresholds[c^]`` (``c^`` may be 0: confident
    background), else ``ignore_index``. Every other pixel keeps its label.

    Args:
        old_logits: (N, num_old, H, W) old-model logits.
        target: (N, H, W) int labels of step t.
        num_old: old channels (background included); must equal ``old_logits.shape[1]``.
        thresholds: (num_old,) per-class thresholds (:func:`median_uncertainty_thresholds`),
            one float for all classes, or None to accept every background pixel.
        ignore_index: label of ignored pixels.

    Returns:
        ``(labels, nu)``: (N, H, W) int64 pseudo-labels and (N,) float32 per-image weight
        ``nu = confident background pixels / background pixels`` (1 for an image without
        background pixels; PLOP's ``num / (den + 1e-6)`` gives 0 there).
    """
    if (
        old_logits.dim() != target.dim() + 1
        or old_logits.shape[1] != num_old
        or (old_logits.shape[0] != target.shape[0] or old_logits.shape[2:] != target.shape[1:])
    ):
        raise ValueError(
            f"expected old logits (N, {num_old}, H, W) and target (N, H, W), got "
            f"{tuple(old_logits.shape)} and {tuple(target.shape)}"
        )
    u, cls = entropy_uncertainty(old_logits)
    if thresholds is None:
        confident = torch.ones_like(u, dtype=torch.bool)
    elif isinstance(thresholds, (int, float)):
        confident = u < float(thresholds)
    else:
        tau = torch.as_tensor(thresholds, dtype=torch.float32, device=u.device).reshape(-1)
        if tau.numel() != num_old:
            raise ValueError(f"{tau.numel()} thresholds for {num_old} old classes")
        confident = u < tau[cls]
    target = target.long()
    bg = target == 0
    labels = torch.where(bg & confident, cls, target)
    labels = torch.where(bg & ~confident, torch.full_like(target, ignore_index), labels)
    dims = tuple(range(1, target.dim()))
    n_bg = bg.sum(dim=dims).float()
    n_conf = (bg & confident).sum(dim=dims).float()
    nu = torch.where(n_bg > 0, n_conf / n_bg.clamp_min(1.0), torch.ones_like(n_bg))
    return labels, nu
