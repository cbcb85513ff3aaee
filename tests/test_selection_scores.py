"""Transferability scores: LogME against a direct evaluation of the evidence, H-score by hand, GBC."""

from __future__ import annotations

import numpy as np
import pytest

from segtune.selection import (
    gbc,
    h_score,
    h_score_shrink,
    list_scores,
    log_evidence,
    logme,
    logme_fit,
)
from segtune.selection.scores import ledoit_wolf_shrinkage


def _marginal_loglik(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y; 0, I/beta + F F^T / alpha) / N: the evidence written as a Gaussian marginal."""
    n = len(y)
    cov = np.eye(n) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (logdet + y @ np.linalg.solve(cov, y) + n * np.log(2 * np.pi)) / n)


@pytest.mark.parametrize("n, d", [(40, 5), (12, 20)])  # N > D and N < D (zero singular values)
def test_logme_fit_is_the_maximised_evidence(n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = f @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    ev, alpha, beta = logme_fit(f, y)
    # the closed form of the evidence and the Gaussian marginal agree, at the fitted alpha, beta
    assert ev == pytest.approx(log_evidence(f, y, alpha, beta), abs=1e-6)
    assert ev == pytest.approx(_marginal_loglik(f, y, alpha, beta), abs=1e-6)
    if n < d:  # y lies in the span of F: the evidence grows towards beta = inf, no interior maximum
        return
    # the fixed point is a maximum: moving alpha or beta by 10 % either way lowers the evidence
    for da, db in ((1.1, 1), (1 / 1.1, 1), (1, 1.1), (1, 1 / 1.1)):
        assert _marginal_loglik(f, y, alpha * da, beta * db) < ev


def test_logme_is_mean_one_vs_rest_evidence_and_rises_with_predictive_features() -> None:
    rng = np.random.default_rng(1)
    n = 300
    labels = rng.integers(0, 3, n)
    onehot = np.eye(3)[labels]
    noise = rng.normal(size=(n, 8))
    good = np.concatenate([onehot * 3, noise[:, :5]], axis=1) + 0.3 * rng.normal(size=(n, 8))
    weak = np.concatenate([onehot * 0.3, noise[:, :5]], axis=1) + 0.3 * rng.normal(size=(n, 8))
    expected = np.mean([logme_fit(good, (labels == c).astype(float))[0] for c in range(3)])
    assert logme(good, labels) == pytest.approx(expected)
    assert logme(good, labels) > logme(weak, labels) > logme(noise, labels)


def test_h_score_by_hand() -> None:
    # f = 1, 3, 5, 7 with labels 0, 0, 1, 1: var(f) = 20/3; class means 2, 2, 6, 6 -> var 16/3
    f = np.array([[1.0], [3.0], [5.0], [7.0]])
    assert h_score(f, np.array([0, 0, 1, 1])) == pytest.approx(16 / 20)
    # two dimensions, the second pure noise uncorrelated with the first: it adds nothing
    f2 = np.array([[1.0, 1.0], [3.0, -1.0], [5.0, -1.0], [7.0, 1.0]])
    assert h_score(f2, np.array([0, 0, 1, 1])) == pytest.approx(16 / 20)
    # features equal to a one-hot of 3 classes: tr(cov^+ cov) = rank = 2 (classes - 1)
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    assert h_score(np.eye(3)[labels], labels) == pytest.approx(2.0)


def test_gbc_prefers_separated_classes() -> None:
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 100)
    near = rng.normal(size=(200, 4)) + labels[:, None] * 0.2
    far = rng.normal(size=(200, 4)) + labels[:, None] * 4.0
    assert -2.0 <= gbc(near, labels) < gbc(far, labels) <= 0.0
    assert gbc(far, labels) > -0.05


def test_scores_are_registered_and_reject_bad_shapes() -> None:
    assert list_scores() == ["logme", "h_score", "h_score_shrink", "gbc"]
    with pytest.raises(ValueError):
        logme(np.zeros((5, 2)), np.zeros(4))


def test_ledoit_wolf_shrinkage_matches_its_definition() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 6)) @ rng.normal(size=(6, 6))
    x -= x.mean(axis=0)
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    d2 = np.sum((s - mu * np.eye(p)) ** 2) / p
    b2 = sum(np.sum((np.outer(r, r) - s) ** 2) for r in x) / n**2 / p
    assert ledoit_wolf_shrinkage(x) == pytest.approx(min(b2, d2) / d2)


def test_h_score_shrink_does_not_saturate_when_d_exceeds_n() -> None:
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 30)
    noise = rng.normal(size=(60, 70))
    good = noise.copy()
    good[:, 0] += 3 * labels
    # with D = 70 above N = 60 the plain H-score is at its bound (1 = classes - 1) for pure noise too
    assert h_score(noise, labels) == pytest.approx(1.0, abs=1e-6)
    assert h_score(good, labels) == pytest.approx(1.0, abs=1e-6)
    assert 0 <= h_score_shrink(noise, labels) < h_score_shrink(good, labels) < 1
    # with N >> D it is close to the plain H-score
    big = rng.normal(size=(4000, 3)) + np.repeat([0, 1], 2000)[:, None]
    y = np.repeat([0, 1], 2000)
    assert h_score_shrink(big, y) == pytest.approx(h_score(big, y), rel=0.02)
