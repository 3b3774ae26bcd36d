"""1:1 verification metrics and the embedding of pair images.

The protocol follows the LFW convention used by arcface_torch: embeddings of the image and its
horizontal mirror are summed and L2-normalised; pairs are scored by cosine similarity; the
10-fold accuracy picks on 9 folds the threshold that maximises accuracy and measures it on the
held-out fold (contiguous folds, no shuffle). The EER (the equal error rate, where the false
accept and false reject rates meet) and TAR at a fixed FAR are computed on all pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerificationResult:
    """Scores of one pair set; accuracies and rates are fractions in [0, 1]."""

    accuracy: float
    """Mean 10-fold accuracy with the best threshold per fold."""
    accuracy_std: float
    """Standard deviation of the fold accuracies."""
    eer: float
    """Equal error rate."""
    tar_at_far: dict[float, float] = field(default_factory=dict)
    """True-accept rate at each false-accept rate target."""
    threshold: float = 0.0
    """Mean best cosine threshold over the folds."""
    num_pairs: int = 0
    """Number of pairs scored."""

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        """Flat ``{name: value}`` view for metric sinks and reports."""
        out = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}accuracy_std": self.accuracy_std,
            f"{prefix}eer": self.eer,
            f"{prefix}threshold": self.threshold,
        }
        for far, tar in self.tar_at_far.items():
            out[f"{prefix}tar_at_far_{far:g}"] = tar
        return out


def best_threshold(scores: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Threshold maximising accuracy of ``score > t`` ⇒ same; returns ``(t, accuracy)``.

    Every midpoint between consecutive sorted scores is a candidate, so the optimum is exact
    (no grid).
    """
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], issame[order].astype(np.int64)
    n = len(s)
    # threshold below element i: pairs [0, i) are rejected, [i, n) accepted
    neg_below = np.concatenate([[0], np.cumsum(1 - y)])
    pos_above = np.concatenate([[0], np.cumsum(y[::-1])])[::-1]
    correct = neg_below + pos_above
    # only cut between distinct scores
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] != s[:-1]
    i = int(np.argmax(np.where(valid, correct, -1)))
    lo = s[i - 1] if i > 0 else s[0] - 1.0
    hi = s[i] if i < n else s[-1] + 1.0
    return float((lo + hi) / 2), float(correct[i] / n)


def kfold_accuracy(
    scores: np.ndarray, issame: np.ndarray, nfolds: int = 10
) -> tuple[float, float, float]:
    """LFW-style accuracy: ``(mean, std, mean threshold)`` over ``nfolds`` contiguous folds.

    Fold k holds pairs ``[⌊k·n/10⌋, ⌊(k+1)·n/10⌋)`` in list order (``np.array_split``), as LFW's
    ``pairs.txt`` is laid out (each block of 600 pairs: 300 genuine, then 300 impostor). The
    threshold of fold k is chosen on the other nine. A list sorted by label puts one class in
    a fold, and that fold's accuracy measures only one side of the threshold: a warning says
    so (:func:`single_class_folds`).
    """
    n = len(scores)
    if n < nfolds:
        raise ValueError(f"{n} pairs cannot be split into {nfolds} folds")
    folds = np.array_split(np.arange(n), nfolds)
    problem = fold_problem(issame, nfolds)
    if problem is not None:
        logger.warning("%s", problem)
    accs, thresholds = [], []
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        t, _ = best_threshold(scores[train], issame[train])
        accs.append(float(np.mean((scores[test] > t) == issame[test])))
        thresholds.append(t)
    return float(np.mean(accs)), float(np.std(accs)), float(np.mean(thresholds))


def single_class_folds(issame: np.ndarray, nfolds: int = 10, min_size: int = 10) -> int:
    """How many contiguous folds of at least ``min_size`` pairs hold a single class.

    A fold of 10 pairs from a shuffled half-genuine list holds one class with probability
    2 · 0.5¹⁰ ≈ 0.2 %, so smaller folds are not counted: they are single-class by chance.
    """
    parts = np.array_split(np.asarray(issame, dtype=bool), nfolds)
    return sum(1 for part in parts if part.size >= min_size and (part.all() or not part.any()))


def fold_problem(issame: np.ndarray, nfolds: int = 10) -> str | None:
    """Why the contiguous folds of ``issame`` make a poor 10-fold estimate, or None.

    Two cases: every genuine pair stands before (or after) every impostor pair, or some folds
    of 10 or more pairs hold one class only (:func:`single_class_folds`).
    """
    labels = np.asarray(issame, dtype=bool)
    lonely = single_class_folds(labels, nfolds)
    sorted_by_label = labels.any() and not labels.all() and np.count_nonzero(np.diff(labels)) == 1
    if not lonely and not sorted_by_label:
        return None
    what = (
        "the pair list is sorted by label (every genuine pair on one side)"
        if sorted_by_label
        else "the pair list looks sorted by label"
    )
    if lonely:
        what += f"; {lonely} of {nfolds} contiguous folds hold only genuine or only impostor pairs"
    return (
        f"{what}: the 10-fold accuracy and its spread are unreliable; shuffle the list, or "
        "interleave genuine and impostor pairs in each tenth"
    )


def equal_error_rate(scores: np.ndarray, issame: np.ndarray) -> float:
    """EER: the rate where false accepts (negatives ≥ t) equal false rejects (positives < t)."""
    pos, neg = np.sort(scores[issame]), np.sort(scores[~issame])
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("the EER needs both positive and negative pairs")
    thresholds = np.unique(np.concatenate([pos, neg, [np.inf]]))
    frr = np.searchsorted(pos, thresholds, side="left") / len(pos)
    far = 1.0 - np.searchsorted(neg, thresholds, side="left") / len(neg)
    i = int(np.argmin(np.abs(far - frr)))
    # interpolate between the neighbouring operating points where the curves cross
    if i + 1 < len(thresholds) and (far[i] - frr[i]) * (far[i + 1] - frr[i + 1]) < 0:
        d0, d1 = far[i] - frr[i], far[i + 1] - frr[i + 1]
        w = d0 / (d0 - d1)
        return float(far[i] + w * (far[i + 1] - far[i]))
    return float((far[i] + frr[i]) / 2)


def tar_at_far(scores: np.ndarray, issame: np.ndarray, far: float) -> float:
    """True-accept rate at the strictest threshold whose false-accept rate is ≤ ``far``.

    With ``n`` negatives the smallest measurable FAR is ``1/n``; below that, the threshold sits
    above every negative score.
    """
    pos, neg = scores[issame], np.sort(scores[~issame])[::-1]
    allowed = int(np.floor(far * len(neg)))  # negatives that may be accepted
    threshold = neg[allowed] if allowed < len(neg) else -np.inf
    return float(np.mean(pos > threshold))


def evaluate_pairs(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    issame: np.ndarray,
    fars: tuple[float, ...] = (1e-3,),
    nfolds: int = 10,
) -> VerificationResult:
    """Score pairs of L2-normalised embeddings ``[P, D]`` and compute every metric."""
    scores = np.sum(emb_a * emb_b, axis=1).astype(np.float64)
    issame = np.asarray(issame, dtype=bool)
    acc, std, thr = kfold_accuracy(scores, issame, nfolds)
    return VerificationResult(
        accuracy=acc,
        accuracy_std=std,
        eer=equal_error_rate(scores, issame),
        tar_at_far={f: tar_at_far(scores, issame, f) for f in fars},
        threshold=thr,
        num_pairs=len(scores),
    )


@torch.no_grad()
def embed_images(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    device: torch.device | None = None,
    flip: bool = True,
    progress: Callable[[int], object] | None = None,
) -> np.ndarray:
    """Embed RGB ``uint8 [N, H, W, 3]`` images; returns L2-normalised ``float32 [N, D]``.

    Pixels are mapped to [-1, 1] as in training. With ``flip``, the embedding is the sum of the
    image's and its mirror's before normalisation. The model is put in eval mode and restored.
    ``progress`` is called with the number of images of each batch once it is embedded.
    """
    first = next(model.parameters())
    device, dtype = device or first.device, first.dtype  # bf16 under DeepSpeed's bf16 mode
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).to(device)
            x = x.permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5).to(dtype)
            e = model(x).float()
            if flip:
                e = e + model(torch.flip(x, dims=[3])).float()
            out.append(torch.nn.functional.normalize(e, dim=1).cpu().numpy())
            if progress is not None:
                progress(len(x))
    finally:
        model.train(was_training)
    return np.concatenate(out, axis=0)


def evaluate_model(
    model: nn.Module,
    images: np.ndarray,
    issame: np.ndarray,
    batch_size: int = 64,
    device: torch.device | None = None,
    progress: Callable[[int], object] | None = None,
    pairs: np.ndarray | None = None,
) -> VerificationResult:
    """Embed pair images ``uint8 [N, H, W, 3]`` once each and score the pairs.

    Args:
        model: the backbone.
        images: without ``pairs``, ``2·P`` images, pair k = images ``2k, 2k+1``; with it, the
            distinct images (:func:`dist_face.eval.bin_format.distinct_images`).
        issame: ``bool [P]``.
        batch_size: images per forward pass.
        device: where to embed (default: the model's).
        progress: called with the number of images of each embedded batch.
        pairs: ``int64 [P, 2]`` the two rows of ``images`` of each pair.
    """
    emb = embed_images(model, images, batch_size, device, progress=progress)
    if pairs is None:
        return evaluate_pairs(emb[0::2], emb[1::2], issame)
    return evaluate_pairs(emb[pairs[:, 0]], emb[pairs[:, 1]], issame)
