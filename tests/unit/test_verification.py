"""Verification metrics against naive references."""

from __future__ import annotations

import numpy as np
import pytest

from dist_face.eval.verification import (
    best_threshold,
    equal_error_rate,
    evaluate_pairs,
    kfold_accuracy,
    tar_at_far,
)


def _scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    issame = np.arange(n) % 2 == 0
    scores = np.where(issame, rng.normal(0.5, 0.2, n), rng.normal(0.1, 0.2, n))
    return scores, issame


def test_best_threshold_matches_exhaustive_search() -> None:
    scores, issame = _scores(101, seed=3)
    t, acc = best_threshold(scores, issame)
    candidates = np.concatenate([[scores.min() - 1], np.sort(scores)])
    naive = max(np.mean((scores > c) == issame) for c in candidates)
    assert acc == pytest.approx(naive)
    assert np.mean((scores > t) == issame) == pytest.approx(acc)


def test_kfold_uses_contiguous_folds_and_held_out_thresholds() -> None:
    scores, issame = _scores()
    mean, std, _ = kfold_accuracy(scores, issame, nfolds=10)
    folds = np.array_split(np.arange(len(scores)), 10)
    accs = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(scores)), test)
        t, _ = best_threshold(scores[train], issame[train])
        accs.append(np.mean((scores[test] > t) == issame[test]))
    assert (mean, std) == pytest.approx((np.mean(accs), np.std(accs)))
    assert 0.75 < mean < 0.95


def test_perfect_and_random_separation() -> None:
    issame = np.arange(100) % 2 == 0
    a = np.tile([1.0, 0.0], (100, 1))
    b = np.where(issame[:, None], [1.0, 0.0], [0.0, 1.0])
    perfect = evaluate_pairs(a, b, issame)
    assert perfect.accuracy == 1.0 and perfect.eer == 0.0 and perfect.tar_at_far[1e-3] == 1.0
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(1000, 8))
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    chance = evaluate_pairs(noise[:500], noise[500:], np.arange(500) % 2 == 0)
    assert 0.4 < chance.accuracy < 0.6 and 0.4 < chance.eer < 0.6


def test_eer_matches_roc_crossing() -> None:
    scores, issame = _scores(2000, seed=1)
    eer = equal_error_rate(scores, issame)
    ts = np.linspace(-1, 1.5, 20001)
    far = np.array([np.mean(scores[~issame] >= t) for t in ts])
    frr = np.array([np.mean(scores[issame] < t) for t in ts])
    i = np.argmin(np.abs(far - frr))
    assert eer == pytest.approx((far[i] + frr[i]) / 2, abs=2e-3)
    # two gaussians 2 sigma apart: EER = Phi(-1) ~ 0.159
    assert eer == pytest.approx(0.159, abs=0.03)


def test_tar_at_far_counts_accepted_negatives() -> None:
    issame = np.array([True] * 4 + [False] * 10)
    scores = np.array([0.9, 0.8, 0.5, 0.2] + [0.1 * i for i in range(10)])  # negatives 0..0.9
    # FAR 0.1 allows one of 10 negatives (0.9) above the threshold 0.8: positives > 0.8 -> 1/4
    assert tar_at_far(scores, issame, 0.1) == 0.25
    # FAR 0 allows none: threshold 0.9 -> no positive strictly above
    assert tar_at_far(scores, issame, 0.0) == 0.0
    assert tar_at_far(scores, issame, 0.35) == 0.5  # threshold 0.6
