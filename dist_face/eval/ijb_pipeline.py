"""The whole IJB protocol for one model: embed, pool, score, 1:1 and 1:N reports, output files.

Output files in ``out_dir``:

- ``img_feats.npy``: ``float32 [N_images, 2·D]`` original ‖ mirror features, unnormalised,
  rows in the order of ``*_name_5pts_score.txt``;
- ``faceness.npy``: ``float32 [N_images]``;
- ``scores.npy``: ``float32 [N_pairs]`` cosine scores in the order of
  ``*_template_pair_label.txt``; ``labels.npy``: ``int8 [N_pairs]`` their labels (for plots);
- the report (a dict; the CLI writes it as ``report.json``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from dist_face.eval.identification import identify_1n
from dist_face.eval.ijb import image_features, pair_scores, template_features, verify
from dist_face.eval.ijb_embed import embed_ijb
from dist_face.eval.ijb_meta import IJBMeta, read_1n


@dataclass(frozen=True)
class IJBOptions:
    """Switches of the protocol (all on by default, as in the published numbers)."""

    flip: bool = True
    """Add the mirrored face's embedding."""
    norm_score: bool = True
    """Keep each image feature's norm as a quality weight (off: L2-normalise it)."""
    detector_score: bool = True
    """Weight each image feature by its faceness score."""
    batch_size: int = 128
    """Faces per forward."""
    workers: int = 0
    """Loader processes decoding and aligning images."""
    progress: bool = True
    """Show a progress bar."""


def score_features(meta: IJBMeta, img_feats: np.ndarray, opts: IJBOptions) -> dict[str, Any]:
    """1:1 and (when its files exist) 1:N results from stored per-image features.

    Args:
        meta: the dataset's meta files.
        img_feats: ``[N, 2D]`` original ‖ mirror features in row order.
        opts: protocol switches.

    Returns:
        ``{"scores": float32 [P], "verification": {...}, "identification_1n": {...} | None,
        "templates": T}``.
    """
    feats = image_features(
        img_feats, meta.faceness, opts.flip, opts.norm_score, opts.detector_score
    )
    template_ids, template_feats = template_features(feats, meta.templates, meta.medias)
    scores = pair_scores(template_ids, template_feats, meta.pairs)
    result: dict[str, Any] = {
        "scores": scores,
        "verification": verify(meta.labels, scores).as_dict(),
        "identification_1n": None,
        "templates": len(template_ids),
    }
    lists = read_1n(meta)
    if lists is not None:
        galleries, probe = lists
        result["identification_1n"] = identify_1n(
            template_ids,
            template_feats,
            [(g.name, g.templates, g.subjects) for g in galleries],
            probe.templates,
            probe.subjects,
        )
    return result


def run_ijb(
    model: nn.Module | None,
    meta: IJBMeta,
    out_dir: str | os.PathLike[str],
    opts: IJBOptions = IJBOptions(),
    features: np.ndarray | None = None,
) -> dict[str, Any] | None:
    """Embed (unless ``features`` are given), score and write the output files.

    Args:
        model: the backbone on its device; ignored when ``features`` is given.
        meta: the dataset's meta files.
        out_dir: directory for the ``.npy`` files.
        opts: protocol switches.
        features: precomputed ``[N, 2D]`` features (e.g. another tool's), skipping the model.

    Returns:
        The report on rank 0, ``None`` on the other ranks.
    """
    start = time.perf_counter()
    if features is None:
        assert model is not None
        features = embed_ijb(model, meta, opts.batch_size, opts.workers, opts.progress)
        if features is None:
            return None
    embed_s = time.perf_counter() - start
    if len(features) != len(meta.image_names):
        raise ValueError(
            f"{len(features)} feature rows for {len(meta.image_names)} images in "
            f"{meta.file('name_5pts_score')}"
        )
    result = score_features(meta, features, opts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "img_feats.npy", features.astype(np.float32))
    np.save(out / "faceness.npy", meta.faceness.astype(np.float32))
    np.save(out / "scores.npy", result["scores"])
    np.save(out / "labels.npy", meta.labels)
    return {
        "target": meta.target,
        "image_path": str(meta.root),
        "images": len(meta.image_names),
        "templates": result["templates"],
        "embedding_size": features.shape[1] // 2,
        "options": {k: v for k, v in asdict(opts).items() if k != "progress"},
        **result["verification"],
        "identification_1n": result["identification_1n"],
        "embed_seconds": embed_s,
        "images_per_second": len(features) / embed_s if embed_s > 0 else None,
    }
