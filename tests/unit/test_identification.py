"""Chunked open-set search, TPIR/DIR at FPIR, CMC and the distractor curve against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from dist_face.eval.identification import distractor_curve, open_set, search


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, 16))
    gallery_ids = np.arange(20)  # subjects 20..29 are never enrolled
    gallery = _unit(centres[gallery_ids] + 0.8 * rng.normal(size=(20, 16)))
    probe_ids = rng.integers(0, 30, size=200)
    probes = _unit(centres[probe_ids] + 0.8 * rng.normal(size=(200, 16)))
    return probes, probe_ids, gallery, gallery_ids


def test_chunked_search_equals_the_dense_search() -> None:
    probes, pid, gallery, gid = _problem()
    dense = search(probes, pid, gallery, gid)
    chunked = search(probes, pid, gallery, gid, probe_chunk=7, gallery_chunk=3)
    np.testing.assert_allclose(chunked.mate, dense.mate, rtol=1e-6)  # BLAS blocking
    np.testing.assert_allclose(chunked.non_mate, dense.non_mate, rtol=1e-6)
    np.testing.assert_array_equal(chunked.rank, dense.rank)


def test_open_set_rates_match_brute_force() -> None:
    probes, pid, gallery, gid = _problem(1)
    report = open_set(search(probes, pid, gallery, gid, gallery_chunk=6), fpirs=(0.05, 0.2))
    s = probes.astype(np.float64) @ gallery.T.astype(np.float64)
    mated = np.isin(pid, gid)
    nm_top = np.sort(s[~mated].max(1))[::-1]
    for fpir in (0.05, 0.2):
        thr = nm_top[int(np.floor(fpir * len(nm_top)))]
        # at most a fraction fpir of non-mated searches score above the threshold
        assert np.mean(nm_top > thr) <= fpir
        hits = []
        for i in np.flatnonzero(mated):
            best = int(np.argmax(s[i]))
            hits.append(gid[best] == pid[i] and s[i, best] > thr)
        assert report.tpir_at_fpir[fpir] == pytest.approx(np.mean(hits))
    order = np.argsort(-s[mated], axis=1)
    ranks = [int(np.flatnonzero(gid[o] == p)[0]) + 1 for o, p in zip(order, pid[mated])]
    for k in (1, 5, 10):
        assert report.cmc[k] == pytest.approx(np.mean(np.array(ranks) <= k))
    assert report.num_mated == mated.sum() and 0 < report.tpir_at_fpir[0.05] < 1


def test_distractor_curve_matches_brute_force_and_falls() -> None:
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(10, 16))
    ids = np.repeat(np.arange(10), 3)
    probes = _unit(centres[ids] + 0.9 * rng.normal(size=(30, 16)))
    distractors = _unit(rng.normal(size=(1000, 16)))
    curve = distractor_curve(probes, ids, distractors, (10, 100, 1000), chunk=37)
    s = probes.astype(np.float64) @ probes.T.astype(np.float64)
    d = probes.astype(np.float64) @ distractors.T.astype(np.float64)
    for n in (10, 100, 1000):
        hits = [
            s[p, g] > d[p, :n].max()
            for p in range(30)
            for g in range(30)
            if p != g and ids[p] == ids[g]
        ]
        assert curve[n] == pytest.approx(np.mean(hits))
    assert curve[10] >= curve[100] >= curve[1000] and curve[10] > curve[1000]


def test_open_set_needs_both_kinds_of_search() -> None:
    probes, pid, gallery, gid = _problem()
    with pytest.raises(ValueError, match="mated and non-mated"):
        open_set(search(probes, pid % 20, gallery, gid))
