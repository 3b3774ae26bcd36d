"""IJB-B / IJB-C 1:1 verification: image features → template features → pair scores → TAR@FAR.

Given per-image features (the embedding of the aligned face and of its mirror, side by side):

1. image feature ``f = f(x) + f(mirror(x))`` (only ``f(x)`` without flip), optionally
   L2-normalised (``norm_score=False``), times the faceness score (``detector_score``);
2. template feature: mean over the images of each media, sum over the medias of the template,
   L2-normalised;
3. pair score: cosine of the two template features;
4. ``TAR@FAR``: the largest true-accept rate over thresholds whose false-accept rate does not
   exceed the target, read from the ROC; plus the area under the ROC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: False-accept rates the IJB tables report.
IJB_FARS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def image_features(
    img_feats: np.ndarray,
    faceness: np.ndarray,
    flip: bool = True,
    norm_score: bool = True,
    detector_score: bool = True,
) -> np.ndarray:
    """Combine the stored halves into one feature per image.

    Args:
        img_feats: ``[N, 2D]`` original ‖ mirror embeddings (unnormalised).
        faceness: ``[N]`` detector scores.
        flip: add the mirror's embedding (else use the original's only).
        norm_score: keep the feature's norm as a quality weight (else L2-normalise).
        detector_score: multiply by the faceness score.

    Returns:
        ``float32 [N, D]``.
    """
    d = img_feats.shape[1] // 2
    feats = img_feats[:, :d] + img_feats[:, d:] if flip else img_feats[:, :d].copy()
    feats = feats.astype(np.float32)
    if not norm_score:
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    if detector_score:
        feats *= faceness[:, None].astype(np.float32)
    return feats


def template_features(
    feats: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pool image features into L2-normalised template features.

    Args:
        feats: ``[N, D]`` image features.
        templates: ``[N]`` template id of each image (any integers, not necessarily dense).
        medias: ``[N]`` media id of each image; images of one media in one template are averaged.

    Returns:
        ``(template_ids [T] sorted, features float32 [T, D])``.
    """
    template_ids, t_index = np.unique(templates, return_inverse=True)
    # one group per (template, media): a video's frames count once, whatever their number
    groups, g_index = np.unique(np.stack([t_index, medias], axis=1), axis=0, return_inverse=True)
    g_index = g_index.reshape(-1)
    media_sum = np.zeros((len(groups), feats.shape[1]), np.float64)
    np.add.at(media_sum, g_index, feats)
    media_mean = media_sum / np.bincount(g_index, minlength=len(groups))[:, None]
    pooled = np.zeros((len(template_ids), feats.shape[1]), np.float64)
    np.add.at(pooled, groups[:, 0], media_mean)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    return template_ids, pooled.astype(np.float32)


def pair_scores(
    template_ids: np.ndarray,
    template_feats: np.ndarray,
    pairs: np.ndarray,
    chunk: int = 100_000,
) -> np.ndarray:
    """Cosine score of each template pair, in pair order.

    Args:
        template_ids: ``[T]`` sorted ids, as returned by :func:`template_features`.
        template_feats: ``[T, D]`` L2-normalised features.
        pairs: ``[P, 2]`` template ids.
        chunk: pairs scored at a time (bounds the memory to ``2·chunk·D`` floats).

    Returns:
        ``float32 [P]``.
    """
    rows = np.searchsorted(template_ids, pairs)
    out = np.empty(len(pairs), np.float32)
    for s in range(0, len(pairs), chunk):
        a = template_feats[rows[s : s + chunk, 0]]
        b = template_feats[rows[s : s + chunk, 1]]
        out[s : s + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC at every distinct score: accept when ``score >= threshold``.

    Args:
        labels: ``[P]`` 1 genuine, 0 impostor (both present).
        scores: ``[P]`` similarity scores.

    Returns:
        ``(fpr, tpr, thresholds)``, each ``[K + 1]``, starting at ``(0, 0, +inf)`` and rising.
    """
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    s, y = np.asarray(scores, np.float64)[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps, fps = np.cumsum(y)[last], np.cumsum(~y)[last]
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        raise ValueError("a ROC needs both genuine and impostor pairs")
    fpr = np.r_[0.0, fps / neg]
    tpr = np.r_[0.0, tps / pos]
    return fpr, tpr, np.r_[np.inf, s[last]]


def tar_at_far(
    labels: np.ndarray, scores: np.ndarray, fars: tuple[float, ...] = IJB_FARS
) -> dict[float, float]:
    """TAR at each FAR: the largest TPR among ROC points whose FPR is ≤ the target."""
    fpr, tpr, _ = roc_curve(labels, scores)
    # tpr rises with fpr, so the last point with fpr <= target has the largest tpr
    return {far: float(tpr[np.searchsorted(fpr, far, side="right") - 1]) for far in fars}


def tar_at_far_nearest(
    labels: np.ndarray, scores: np.ndarray, fars: tuple[float, ...] = IJB_FARS
) -> dict[float, float]:
    """TAR at each FAR read as insightface's ``eval_ijbc.py`` reads it, for comparison.

    That script keeps only the ROC's corner points (scikit-learn's ``drop_intermediate``),
    and takes the TPR of the point whose FPR is *nearest* to the target, above or below it
    (ties: the higher point). This can report a FAR above the target; :func:`tar_at_far` does
    not.
    """
    fpr, tpr, _ = roc_curve(labels, scores)
    pos = int(np.sum(np.asarray(labels).astype(bool)))
    neg = len(labels) - pos
    # corners are found on the integer counts: second differences of rates carry rounding
    fps, tps = np.rint(fpr[1:] * neg), np.rint(tpr[1:] * pos)
    if len(fps) > 2:  # a point is dropped when both neighbours are on one line with it
        corner = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        fps, tps = fps[corner], tps[corner]
    fpr, tpr = np.r_[0.0, fps / neg][::-1], np.r_[0.0, tps / pos][::-1]
    return {far: float(tpr[int(np.argmin(np.abs(fpr - far)))]) for far in fars}


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC (trapezoidal)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


@dataclass(frozen=True)
class VerificationReport:
    """1:1 results; rates are fractions in [0, 1]."""

    tar_at_far: dict[float, float]
    """TAR at each FAR of :data:`IJB_FARS`."""
    tar_at_far_nearest: dict[float, float]
    """The same read at the nearest ROC corner, as insightface's eval_ijbc.py prints it."""
    auc: float
    """Area under the ROC."""
    num_pairs: int
    """Pairs scored."""
    num_genuine: int
    """Genuine pairs among them."""

    def as_dict(self) -> dict[str, object]:
        """JSON view: FAR keys are written as ``"1e-06"`` … ``"0.1"``."""
        return {
            "tar_at_far": {f"{far:g}": tar for far, tar in self.tar_at_far.items()},
            "tar_at_far_nearest": {f"{f:g}": t for f, t in self.tar_at_far_nearest.items()},
            "auc": self.auc,
            "num_pairs": self.num_pairs,
            "num_genuine": self.num_genuine,
        }


def verify(labels: np.ndarray, scores: np.ndarray) -> VerificationReport:
    """TAR@FAR at :data:`IJB_FARS` and the AUC of scored pairs."""
    return VerificationReport(
        tar_at_far=tar_at_far(labels, scores),
        tar_at_far_nearest=tar_at_far_nearest(labels, scores),
        auc=roc_auc(labels, scores),
        num_pairs=len(scores),
        num_genuine=int(np.sum(labels)),
    )
