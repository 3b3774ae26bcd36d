"""Open-set 1:N identification: chunked search, TPIR/DIR at FPIR, CMC, the IJB 1:N protocol.

Every search compares L2-normalised probe features with a gallery by cosine score, a chunk of
probes at a time against a chunk of the gallery at a time, so the memory is bounded by
``probe_chunk × gallery_chunk`` scores whatever the gallery size.

Definitions (probe ``p`` with subject ``s``; a gallery entry of ``s`` is a *mate*):

- *non-mated search*: ``s`` has no entry in the gallery; its top score is its best match;
- FPIR threshold ``t(p)``: the non-mated top scores sorted in descending order, the
  ``⌊N·p⌋``-th (0-based), so that at most a fraction ``p`` of them score above it;
- TPIR / DIR at FPIR ``p``: the share of mated searches whose best mate scores above ``t(p)``
  **and** above every non-mate;
- rank-k (CMC): the share of mated searches with fewer than ``k`` non-mates scoring at least
  the best mate's score.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

#: FPIR targets of the IJB 1:N tables.
IJB_FPIRS = (0.01, 0.1)
#: CMC ranks reported.
RANKS = (1, 5, 10)


def _chunks(n: int, size: int) -> Iterator[slice]:
    for s in range(0, n, size):
        yield slice(s, min(s + size, n))


@dataclass(frozen=True)
class SearchStats:
    """Per-probe results of one gallery search."""

    mate: np.ndarray
    """``float32 [P]`` best mate score (``-inf`` for non-mated probes)."""
    non_mate: np.ndarray
    """``float32 [P]`` best non-mate score (``-inf`` if the gallery holds only mates)."""
    rank: np.ndarray
    """``int64 [P]`` 1 + non-mates scoring ≥ the best mate (0 for non-mated probes)."""


def search(
    probes: np.ndarray,
    probe_ids: np.ndarray,
    gallery: np.ndarray,
    gallery_ids: np.ndarray,
    probe_chunk: int = 4096,
    gallery_chunk: int = 65536,
) -> SearchStats:
    """Score probes against a gallery in bounded memory.

    Args:
        probes: ``[P, D]`` L2-normalised probe features.
        probe_ids: ``[P]`` subject of each probe.
        gallery: ``[G, D]`` L2-normalised gallery features.
        gallery_ids: ``[G]`` subject of each gallery entry.
        probe_chunk: probes per block.
        gallery_chunk: gallery entries per block.

    Returns:
        The best mate and non-mate score and the mate's rank per probe.
    """
    n = len(probes)
    mate = np.full(n, -np.inf, np.float32)
    non_mate = np.full(n, -np.inf, np.float32)
    for ps in _chunks(n, probe_chunk):
        for gs in _chunks(len(gallery), gallery_chunk):
            scores = probes[ps] @ gallery[gs].T
            is_mate = probe_ids[ps, None] == gallery_ids[None, gs]
            mate[ps] = np.maximum(mate[ps], np.where(is_mate, scores, -np.inf).max(1))
            non_mate[ps] = np.maximum(non_mate[ps], np.where(is_mate, -np.inf, scores).max(1))
    # the rank needs the best mate score first, hence a second pass
    rank = np.zeros(n, np.int64)
    mated = np.isfinite(mate)
    for ps in _chunks(n, probe_chunk):
        for gs in _chunks(len(gallery), gallery_chunk):
            scores = probes[ps] @ gallery[gs].T
            is_mate = probe_ids[ps, None] == gallery_ids[None, gs]
            rank[ps] += np.sum(~is_mate & (scores >= mate[ps, None]), axis=1)
    rank = np.where(mated, rank + 1, 0)
    return SearchStats(mate=mate, non_mate=non_mate, rank=rank)


def fpir_thresholds(non_mated_top: np.ndarray, fpirs: tuple[float, ...]) -> dict[float, float]:
    """Score threshold per FPIR target from the top scores of non-mated searches."""
    top = np.sort(np.asarray(non_mated_top, np.float64))[::-1]
    out = {}
    for p in fpirs:
        k = int(np.floor(p * len(top)))
        out[p] = float(top[k]) if k < len(top) else -np.inf
    return out


@dataclass(frozen=True)
class IdentificationReport:
    """Open-set identification results of one gallery; rates are fractions in [0, 1]."""

    tpir_at_fpir: dict[float, float]
    """TPIR (= DIR) at each FPIR (= FAR of the non-mated searches)."""
    cmc: dict[int, float]
    """Rank-k identification rate of the mated searches."""
    num_mated: int
    """Mated searches."""
    num_non_mated: int
    """Non-mated searches."""

    def as_dict(self) -> dict[str, object]:
        """JSON view."""
        return {
            "tpir_at_fpir": {f"{p:g}": v for p, v in self.tpir_at_fpir.items()},
            "cmc": {f"rank{k}": v for k, v in self.cmc.items()},
            "num_mated": self.num_mated,
            "num_non_mated": self.num_non_mated,
        }


def open_set(
    stats: SearchStats,
    fpirs: tuple[float, ...] = IJB_FPIRS,
    ranks: tuple[int, ...] = RANKS,
) -> IdentificationReport:
    """TPIR/DIR at FPIR and CMC from a :func:`search`.

    Raises:
        ValueError: there are no mated or no non-mated searches.
    """
    mated = stats.rank > 0
    if not mated.any() or mated.all():
        raise ValueError("open-set identification needs both mated and non-mated probes")
    thresholds = fpir_thresholds(stats.non_mate[~mated], fpirs)
    m, nm, r = stats.mate[mated], stats.non_mate[mated], stats.rank[mated]
    return IdentificationReport(
        tpir_at_fpir={p: float(np.mean((m > t) & (m > nm))) for p, t in thresholds.items()},
        cmc={k: float(np.mean(r <= k)) for k in ranks},
        num_mated=int(mated.sum()),
        num_non_mated=int((~mated).sum()),
    )


def identify_1n(
    template_ids: np.ndarray,
    template_feats: np.ndarray,
    galleries: list[tuple[str, np.ndarray, np.ndarray]],
    probe_templates: np.ndarray,
    probe_subjects: np.ndarray,
) -> dict[str, object]:
    """The corrected IJB 1:N protocol: each gallery alone, the other's mates as non-mated.

    Args:
        template_ids: ``[T]`` sorted ids of :func:`dist_face.eval.ijb.template_features`.
        template_feats: ``[T, D]`` L2-normalised template features.
        galleries: ``(name, template ids, subject ids)`` of G1 and G2 (S1/S2 for IJB-B).
        probe_templates: ``[P]`` probe template ids.
        probe_subjects: ``[P]`` probe subjects.

    Returns:
        ``{"galleries": {name: report}, "mean": {...}}`` with the mean over the galleries.
    """
    probes = template_feats[np.searchsorted(template_ids, probe_templates)]
    per: dict[str, IdentificationReport] = {}
    for name, g_tids, g_sids in galleries:
        gallery = template_feats[np.searchsorted(template_ids, g_tids)]
        per[name] = open_set(search(probes, probe_subjects, gallery, g_sids))
    first = next(iter(per.values()))
    mean = {
        "tpir_at_fpir": {
            f"{p:g}": float(np.mean([r.tpir_at_fpir[p] for r in per.values()]))
            for p in first.tpir_at_fpir
        },
        "cmc": {f"rank{k}": float(np.mean([r.cmc[k] for r in per.values()])) for k in first.cmc},
    }
    return {"galleries": {n: r.as_dict() for n, r in per.items()}, "mean": mean}


def distractor_curve(
    probes: np.ndarray,
    probe_ids: np.ndarray,
    distractors: np.ndarray,
    counts: tuple[int, ...],
    chunk: int = 65536,
) -> dict[int, float]:
    """MegaFace-style rank-1 identification against growing distractor sets.

    Every ordered pair of distinct images of one subject is a search: the second image is the
    gallery mate, hidden among the first ``n`` distractors. The search succeeds when the mate
    scores above every one of them. The best distractor score of each probe is accumulated
    over distractor chunks, so the memory stays ``P × chunk`` for any ``n``.

    Args:
        probes: ``[P, D]`` L2-normalised features; subjects with one image contribute nothing.
        probe_ids: ``[P]`` subject of each.
        distractors: ``[M, D]`` L2-normalised features of other subjects.
        counts: distractor set sizes (each ≤ M), e.g. 10, 100, 1000.
        chunk: distractors scored at a time.

    Returns:
        ``{n: rank-1 rate}``.
    """
    counts = tuple(sorted(counts))
    if counts and counts[-1] > len(distractors):
        raise ValueError(f"{counts[-1]} distractors asked for, {len(distractors)} available")
    best = np.full(len(probes), -np.inf, np.float32)
    at_count: dict[int, np.ndarray] = {}
    done = 0
    for n in counts:
        while done < n:
            end = min(done + chunk, n)
            best = np.maximum(best, (probes @ distractors[done:end].T).max(1))
            done = end
        at_count[n] = best.copy()
    same = probe_ids[:, None] == probe_ids[None, :]
    np.fill_diagonal(same, False)
    p_idx, g_idx = np.nonzero(same)
    if len(p_idx) == 0:
        raise ValueError("the distractor curve needs subjects with at least two images")
    mate = np.einsum("ij,ij->i", probes[p_idx], probes[g_idx])
    return {n: float(np.mean(mate > b[p_idx])) for n, b in at_count.items()}
