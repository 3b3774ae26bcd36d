"""Held-out scores of one embedding set: verification over all pairs and rank-1 identification.

Every pair of held-out images is scored by cosine similarity (with 60 identities × 8 images:
1 680 genuine and 113 K impostor pairs, so FAR = 1e-3 is measured on ~113 impostors). The
accuracy is the 10-fold accuracy of :mod:`dist_face.eval.verification` on a balanced subset:
every genuine pair and as many impostor pairs drawn with a fixed seed, interleaved.
Rank-1: the first image of each identity is its gallery entry, every other image a probe
(identities never seen in training, hence open-set with respect to the training classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dist_face.eval.verification import equal_error_rate, kfold_accuracy, tar_at_far


@dataclass(frozen=True)
class Scores:
    """Fractions in [0, 1]."""

    accuracy: float
    eer: float
    tar_at_far_1e_3: float
    rank1: float


def pair_scores(emb: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine of every unordered pair ``(i < j)`` and whether it is genuine: ``[P]``, ``[P]``."""
    i, j = np.triu_indices(len(labels), k=1)
    return np.einsum("nd,nd->n", emb[i], emb[j]), labels[i] == labels[j]


def score(emb: np.ndarray, labels: np.ndarray) -> Scores:
    """Scores of L2-normalised embeddings ``[N, D]`` of held-out faces with ``labels [N]``."""
    s, same = pair_scores(emb, labels)
    rng = np.random.default_rng(0)
    pos = np.flatnonzero(same)
    neg = rng.choice(np.flatnonzero(~same), size=len(pos), replace=False)
    balanced = np.empty(2 * len(pos), dtype=np.int64)
    balanced[0::2], balanced[1::2] = pos, neg
    accuracy, _, _ = kfold_accuracy(s[balanced], same[balanced])
    return Scores(
        accuracy=float(accuracy),
        eer=equal_error_rate(s, same),
        tar_at_far_1e_3=tar_at_far(s, same, 1e-3),
        rank1=rank1(emb, labels),
    )


def rank1(emb: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of probes whose most similar gallery entry is their own identity."""
    first = np.unique(labels, return_index=True)[1]
    gallery = np.zeros(len(labels), dtype=bool)
    gallery[first] = True
    sims = emb[~gallery] @ emb[gallery].T
    return float(np.mean(labels[gallery][sims.argmax(axis=1)] == labels[~gallery]))
