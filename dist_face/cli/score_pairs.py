"""Score a CSV pair list (img1,img2[,label]); with labels, EER and TAR@FAR.

The images are aligned 112×112 faces, or raw photos aligned on the fly with --landmarks FILE
or --detect dlib|MODEL.onnx (a pair with a photo left out gets no score).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from dist_face.cli.backbone_source import add_backbone_args, load_from_args
from dist_face.cli.common import add_resize_mode, closed_pipe_is_quiet
from dist_face.eval.ijb import roc_auc
from dist_face.eval.ijb import tar_at_far as ijb_tar_at_far
from dist_face.eval.pair_list import PairListError, load_images, read_pair_list, write_scores
from dist_face.eval.raw_photos import add_align_args
from dist_face.eval.verification import (
    best_threshold,
    embed_images,
    equal_error_rate,
    kfold_accuracy,
)
from dist_face.extras import MissingExtraError
from dist_face.log import init_logging

logger = logging.getLogger("dist_face.score_pairs")
FARS = (1e-4, 1e-3, 1e-2, 1e-1)


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, object]:
    """EER, TAR@FAR, AUC and accuracy (10-fold when there are ≥ 10 pairs, else best threshold)."""
    scores = scores.astype(np.float64)
    if len(scores) >= 10:
        acc, std, thr = kfold_accuracy(scores, labels)
    else:
        thr, acc = best_threshold(scores, labels)
        std = 0.0
    return {
        "accuracy": acc,
        "accuracy_std": std,
        "threshold": thr,
        "eer": equal_error_rate(scores, labels),
        "tar_at_far": {f"{f:g}": t for f, t in ijb_tar_at_far(labels, scores, FARS).items()},
        "auc": roc_auc(labels, scores),
        "num_pairs": len(scores),
    }


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Score the list; returns the exit code (2 for bad input)."""
    p = argparse.ArgumentParser(prog="dist-face-score-pairs", description=__doc__)
    add_backbone_args(p)
    p.add_argument("--pairs", required=True, help="CSV: img1,img2[,label] (label 1 = same)")
    p.add_argument("--root", help="directory the image paths are relative to (default: the CSV's)")
    p.add_argument("--out", required=True, help="scores CSV to write; the report goes beside it")
    p.add_argument("--batch-size", type=int, default=64)
    add_resize_mode(p)
    add_align_args(p)
    args = p.parse_args(argv)
    init_logging()
    try:
        plist = read_pair_list(args.pairs)
        model, name, _ = load_from_args(args)
        root = args.root or Path(args.pairs).parent
        images, index = load_images(plist, root, args.resize_mode, align=args)
    except (FileNotFoundError, ValueError, PairListError, MissingExtraError) as exc:
        logger.error("%s", exc)
        return 2
    emb = embed_images(model, images, args.batch_size, torch.device("cpu"))
    scored = (index >= 0).all(axis=1)
    scores = np.full(len(index), np.nan, np.float32)
    scores[scored] = np.einsum("ij,ij->i", emb[index[scored, 0]], emb[index[scored, 1]])
    out = write_scores(plist, scores, args.out)
    logger.info("wrote %d scores to %s", int(scored.sum()), out)
    if not scored.all():
        logger.warning("%d pair(s) have a photo left out: no score", int((~scored).sum()))
    if plist.labels is not None:
        report = {
            "backbone": name,
            "pairs": str(plist.path),
            "pairs_without_score": int((~scored).sum()),
            **metrics(scores[scored], plist.labels[scored]),
        }
        path = out.with_suffix(".json")
        path.write_text(json.dumps(report, indent=2) + "\n")
        logger.info(
            "accuracy %.4f  EER %.4f  TAR@FAR=1e-3 %.4f  (%d pairs) -> %s",
            report["accuracy"],
            report["eer"],
            report["tar_at_far"]["0.001"],
            len(scores),
            path,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
