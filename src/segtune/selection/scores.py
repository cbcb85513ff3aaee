"""Transferability scores of frozen features for labels: LogME, H-score and GBC.

Each score maps ``features (N, D)`` and integer ``labels (N,)`` to one float; higher means the
features are expected to transfer better. None needs training, and all are registered in
:data:`SCORES` (``logme``, ``h_score``, ``gbc``) so the ranking can loop over them.

* **LogME** (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning", ICML 2021): for each class ``c`` a Bayesian linear model ``y_c = F w + e`` with
  ``w ~ N(0, 1/alpha I)``, ``e ~ N(0, 1/beta I)`` and one-vs-rest targets ``y_c = [label == c]``;
  ``alpha, beta`` maximise the evidence ``log p(y_c | F, alpha, beta)`` by the paper's fixed-point
  iteration on the SVD of ``F`` (from the eigendecomposition of ``F^T F``); the score is the maximised evidence divided by ``N``, averaged
  over the classes present. Natural log, per sample.
* **H-score** (Bao et al., "An Information-theoretic Approach to Transferability in Task Transfer
  Learning", ICIP 2019): ``tr(cov(f)^+ cov(E[f | y]))`` with sample covariances (``N - 1``) and
  the pseudo-inverse. Between 0 and ``min(D, classes - 1)``; it reaches that bound whenever the
  sample is small next to D (the classes are then separable in-sample), so it stops ranking.
* **Shrinkage H-score** (``h_score_shrink``; Ibrahim et al., "Newer is not always better:
  rethinking transferability metrics, their peculiarities, stability and performance", ECML PKDD
  2022): the same with ``cov(f)`` replaced by its Ledoit-Wolf shrinkage ``(1 - a) cov(f) + a mu I``
  (``mu`` the mean variance, ``a`` the Ledoit-Wolf estimate) and ``cov(E[f | y])`` scaled by ``1 - a``.
* **GBC** (Pandy et al., "Transferability Estimation using Bhattacharyya Class Separability",
  CVPR 2022): features reduced to at most 64 principal components, one diagonal Gaussian per
  class, ``-sum_{i != j} exp(-D_B(c_i, c_j))`` (Bhattacharyya distance ``D_B``). At most 0;
  0 means perfectly separated classes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .._registry import Registry

__all__ = ["SCORES", "list_scores", "logme", "h_score", "h_score_shrink", "gbc", "ledoit_wolf_shrinkage", "log_evidence", "logme_fit"]

Score = Callable[[np.ndarray, np.ndarray], float]

#: Registered scores: name -> ``score(features (N, D), labels (N,)) -> float`` (higher is better).
SCORES: Registry[Score] = Registry("score", "--scores")

_EPS = 1e-5  # as in the reference implementation (thuml/LogME)


def list_scores() -> list[str]:
    """Names of the registered transferability scores."""
    return SCORES.names()


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if f.ndim != 2 or f.shape[0] != y.shape[0]:
        raise ValueError(f"features must be (N, D) and labels (N,), got {f.shape} and {y.shape}")
    if f.shape[0] < 2:
        raise ValueError("need at least 2 samples")
    if not np.isfinite(f).all():
        raise ValueError("features hold NaN or inf")
    return f, y.astype(np.int64)


# ------------------------------------------------------------------------- LogME
def log_evidence(
    features: np.ndarray, target: np.ndarray, alpha: float, beta: float
) -> float:
    """``log p(y | F, alpha, beta) / N`` of the Bayesian linear model, evaluated directly.

    ``-1/2 log|A| + D/2 log alpha + N/2 log beta - beta/2 |y - F m|^2 - alpha/2 |m|^2
    - N/2 log 2 pi`` with ``A = alpha I + beta F^T F`` and ``m = beta A^-1 F^T y`` (no SVD, no
    iteration: the reference that :func:`logme_fit` is tested against).

    Args:
        features: (N, D) float.
        target: (N,) float regression target.
        alpha, beta: prior precision of the weights and precision of the noise.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * logdet
          - beta / 2 * np.sum((y - f @ m) ** 2) - alpha / 2 * np.sum(m * m) - n / 2 * np.log(2 * np.pi))
    return float(ev / n)


def _fixed_point(
    sigma: np.ndarray, x2: np.ndarray, res_x2: float, n: int, d: int, max_iter: int = 100
) -> tuple[float, float, float]:
    """Fixed-point iteration of LogME on the spectrum; returns ``(evidence / N, alpha, beta)``.

    Args:
        sigma: (D,) eigenvalues of ``F^T F`` (squared singular values of F, zeros included).
        x2: (D,) squared projections of the target on the left singular vectors of F (zeros
            where F has no singular vector).
        res_x2: the part of ``|y|^2`` outside the column span of F.
    """
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
        res2 = float((x2 / (1 + sigma / t) ** 2).sum() + res_x2)
        alpha = gamma / (m2 + _EPS)
        beta = (n - gamma) / (res2 + _EPS)
        if abs(alpha / beta - t) / t <= 1e-6:
            break
    t = alpha / beta
    m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
    res2 = float((x2 / (1 + sigma / t) ** 2).sum() + res_x2)
    ev = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
          - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(ev / n), float(alpha), float(beta)


def logme_fit(features: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """Maximised LogME evidence of one real-valued target.

    Args:
        features: (N, D) float.
        target: (N,) float.

    Returns:
        ``(evidence / N, alpha, beta)`` at the fixed point (natural log).
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64).reshape(-1)
    return _logme_targets(f, y[:, None])[0]


def _logme_targets(f: np.ndarray, ys: np.ndarray) -> list[tuple[float, float, float]]:
    """:func:`logme_fit` for each column of ``ys (N, K)``, sharing one eigendecomposition.

    The SVD of ``F`` comes from ``F^T F = V diag(sigma) V^T`` (D x D, cheap for N >> D): the
    projection of ``y`` on the left singular vector ``u_i = F v_i / s_i`` is
    ``v_i^T F^T y / s_i``. Eigenvalues below ``1e-10`` of the largest count as zero.
    """
    n, d = f.shape
    sigma, v = np.linalg.eigh(f.T @ f)
    keep = sigma > 1e-10 * max(float(sigma.max()), 1e-300)
    sigma = np.where(keep, sigma, 0.0)
    proj = v.T @ (f.T @ ys)  # (D, K): s_i * x_i
    x2_all = np.where(keep[:, None], proj**2 / np.where(keep, sigma, 1.0)[:, None], 0.0)
    out = []
    for k, y in enumerate(ys.T):
        x2 = x2_all[:, k]
        res_x2 = max(float(y @ y - x2.sum()), 0.0)
        out.append(_fixed_point(sigma, x2, res_x2, n, d))
    return out


@SCORES.register("logme")
def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: mean over classes of the maximised evidence per sample (one-vs-rest targets).

    Args:
        features: (N, D) float features (one row per labelled pixel).
        labels: (N,) int class ids.

    Returns:
        Mean of ``max_{alpha, beta} log p(y_c | F, alpha, beta) / N`` over the classes ``c``
        present in ``labels`` (natural log; higher is better; typically between -1 and 1).
    """
    f, y = _check(features, labels)
    classes = np.unique(y)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)
    return float(np.mean([ev for ev, _, _ in _logme_targets(f, targets)]))


# ---------------------------------------------------------------------- H-score
def _class_mean_cov(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample covariance (N - 1) of ``E[f | y]`` for centred features ``f``."""
    g = np.zeros_like(f)
    for c in np.unique(y):
        sel = y == c
        g[sel] = f[sel].mean(axis=0)
    g = g - g.mean(axis=0, keepdims=True)
    return g.T @ g / (len(g) - 1)


@SCORES.register("h_score")
def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score: ``tr(cov(f)^+ cov(E[f | y]))``.

    Args:
        features: (N, D) float.
        labels: (N,) int class ids.

    Returns:
        The H-score (higher is better; 0 when the class means coincide).
    """
    f, y = _check(features, labels)
    f = f - f.mean(axis=0, keepdims=True)
    cov_f = f.T @ f / (len(f) - 1)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ _class_mean_cov(f, y)))


def ledoit_wolf_shrinkage(centred: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage intensity ``a`` in [0, 1] towards ``mu I`` (centred (N, D) data).

    The estimate of Ledoit & Wolf (2004) as scikit-learn computes it (``ledoit_wolf_shrinkage``).
    """
    x = np.asarray(centred, dtype=np.float64)
    n, p = x.shape
    x2 = x**2
    var = x2.sum(axis=0) / n
    mu = var.sum() / p
    beta_ = float(np.sum(x2.T @ x2))
    delta_ = float(np.sum((x.T @ x) ** 2)) / n**2
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2 * mu * var.sum() + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)


@SCORES.register("h_score_shrink")
def h_score_shrink(features: np.ndarray, labels: np.ndarray) -> float:
    """Shrinkage H-score: ``tr(((1-a) cov(f) + a mu I)^-1 (1-a) cov(E[f | y]))`` (Ledoit-Wolf ``a``).

    Args:
        features: (N, D) float.
        labels: (N,) int class ids.

    Returns:
        The regularised H-score (higher is better; below the plain H-score's bound).
    """
    f, y = _check(features, labels)
    f = f - f.mean(axis=0, keepdims=True)
    a = ledoit_wolf_shrinkage(f)
    cov_f = f.T @ f / len(f)
    mu = float(np.trace(cov_f)) / f.shape[1]
    shrunk = (1 - a) * cov_f + a * mu * np.eye(f.shape[1])
    return float(np.trace(np.linalg.solve(shrunk, (1 - a) * _class_mean_cov(f, y))))


# -------------------------------------------------------------------------- GBC
@SCORES.register("gbc")
def gbc(features: np.ndarray, labels: np.ndarray, dims: int = 64) -> float:
    """GBC: minus the sum of Bhattacharyya coefficients over ordered pairs of classes.

    Args:
        features: (N, D) float.
        labels: (N,) int class ids.
        dims: principal components kept (the paper's 64).

    Returns:
        ``-sum_{i != j} exp(-D_B(i, j))`` with diagonal Gaussians per class in PCA space
        (at most 0; higher is better).
    """
    f, y = _check(features, labels)
    f = f - f.mean(axis=0, keepdims=True)
    _, v = np.linalg.eigh(f.T @ f)  # principal axes, ascending variance
    z = f @ v[:, ::-1][:, : min(dims, f.shape[1])]
    stats = []
    for c in np.unique(y):
        zc = z[y == c]
        stats.append((zc.mean(axis=0), zc.var(axis=0) + 1e-6))
    total = 0.0
    for i, (mi, vi) in enumerate(stats):
        for j, (mj, vj) in enumerate(stats):
            if i == j:
                continue
            v = (vi + vj) / 2
            db = 0.125 * np.sum((mi - mj) ** 2 / v) + 0.5 * (
                np.sum(np.log(v)) - 0.5 * (np.sum(np.log(vi)) + np.sum(np.log(vj)))
            )
            total += float(np.exp(-db))
    return -total
