"""Verification of a trained backbone on pair files: 10-fold accuracy, EER, TAR@FAR.

A pair file is a ``.bin`` (``--bin``) or a CSV pair list ``img1,img2,label`` (``--pairs``) of
aligned faces, or of raw photos aligned on the fly with ``--landmarks FILE`` or
``--detect dlib|MODEL.onnx``. Each distinct image is decoded and embedded once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from dist_face.cli.common import add_resize_mode, closed_pipe_is_quiet, progress_off
from dist_face.eval.bin_format import (
    BinFormatError,
    decode_images,
    distinct_images,
    load_bin,
    warn_sizes,
)
from dist_face.eval.pair_list import load_images, read_pair_list
from dist_face.eval.raw_photos import add_align_args
from dist_face.eval.verification import evaluate_model
from dist_face.extras import MissingExtraError, require
from dist_face.log import init_logging
from dist_face.models import create, load_backbone

logger = logging.getLogger("dist_face.evaluate")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dist-face-evaluate",
        description=__doc__,
        epilog="dist-face-evaluate --compare OUT_A OUT_B --plot-dir DIR draws several IJB "
        "outputs (dist-face-ijb --out) on one ROC/DET figure.",
    )
    p.add_argument("--bin", action="append", default=[], help=".bin pair file (repeatable)")
    p.add_argument(
        "--pairs",
        action="append",
        default=[],
        help="CSV pair list img1,img2,label, paths relative to the CSV (repeatable)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run directory holding model.pt (written by the trainer)")
    src.add_argument("--backbone", help="backbone-only checkpoint (model.pt)")
    p.add_argument("--name", help="backbone name, needed for a raw InsightFace state dict")
    p.add_argument("--batch-size", type=int, default=64)
    add_resize_mode(p)
    p.add_argument(
        "--untrained-baseline",
        action="store_true",
        help="also score a freshly initialised backbone of the same architecture",
    )
    p.add_argument("--out", help="JSON report path (default: <run>/eval_report.json)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_align_args(p)
    args = p.parse_args(argv)
    if not args.bin and not args.pairs:
        p.error("give at least one --bin or --pairs file")
    return args


def _decode(images: list[bytes], bar: tqdm, mode: str) -> np.ndarray:
    """Decode a pair file's images in chunks, advancing ``bar``; ``uint8 [N, 112, 112, 3]``.

    Images that are not 112×112 are fitted under ``mode``, with one warning for the file.
    """
    parts, others = [], {}
    for start in range(0, len(images), _DECODE_CHUNK):
        parts.append(decode_images(images[start : start + _DECODE_CHUNK], mode=mode, sizes=others))
        bar.update(len(parts[-1]))
    warn_sizes(others, len(images), 112, mode)
    return np.concatenate(parts) if parts else decode_images([])


_DECODE_CHUNK = 512


def compare(argv: list[str]) -> int:
    """``--compare OUT OUT … --plot-dir DIR``: ROC/DET of several IJB outputs on one figure.

    Each ``OUT`` is a ``dist-face-ijb --out`` directory (``scores.npy``, ``labels.npy``); it is
    named in the legend by its folder name.
    """
    p = argparse.ArgumentParser(prog="dist-face-evaluate --compare")
    p.add_argument("--compare", nargs="+", required=True, help="dist-face-ijb output directories")
    p.add_argument("--plot-dir", required=True, help="where roc.png and det.png go")
    p.add_argument("--title", default="1:1 verification")
    args = p.parse_args(argv)
    init_logging()
    require("matplotlib", purpose="dist-face-evaluate --compare")
    from dist_face.eval.plots import Curve, plot_roc_det

    curves = []
    for d in map(Path, args.compare):
        try:
            curves.append(Curve(d.name, np.load(d / "labels.npy"), np.load(d / "scores.npy")))
        except (FileNotFoundError, ValueError) as exc:
            logger.error("%s: not a dist-face-ijb output (%s)", d, exc)
            return 2
    roc, det = plot_roc_det(curves, args.plot_dir, args.title)
    logger.info("ROC: %s  DET: %s", roc, det)
    return 0


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Evaluate and print one line per pair file; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    if "--compare" in argv:
        return compare(argv)
    args = _parse(argv)
    init_logging()
    path = Path(args.run) / "model.pt" if args.run else Path(args.backbone)
    try:
        model = load_backbone(path, name=args.name)
        pairs = {}
        for b in args.bin:  # each distinct image decoded and embedded once
            images, issame = load_bin(b)
            pairs[Path(b).stem] = (*distinct_images(images), issame)
        decoded = {}
        for csv in args.pairs:  # decoded (and aligned) here: one bar step per image, no bytes
            plist = read_pair_list(csv)
            if plist.labels is None:
                raise ValueError(f"{csv}: a pair list to evaluate needs a label column")
            faces, index = load_images(plist, Path(csv).parent, args.resize_mode, align=args)
            kept = (index >= 0).all(axis=1)
            if not kept.all():
                logger.warning("%s: %d pair(s) with a photo left out", csv, int((~kept).sum()))
            decoded[Path(csv).stem] = (faces, index[kept], plist.labels[kept])
    except (FileNotFoundError, ValueError, BinFormatError, MissingExtraError) as exc:
        logger.error("%s", exc)
        return 2
    models = {"trained": model}
    if args.untrained_baseline:
        torch.manual_seed(0)
        stored = torch.load(path, map_location="cpu", weights_only=True)
        models["untrained"] = create(stored.get("name", args.name), **stored.get("kwargs", {}))
    report: dict[str, dict[str, float]] = {}
    # one bar over every image decoded and embedded; on a terminal only, unless --quiet
    total = sum(len(images) * (1 + len(models)) for images, _, _ in pairs.values())
    total += sum(len(faces) * len(models) for faces, _, _ in decoded.values())
    bar = tqdm(total=total, unit="img", desc="evaluate", disable=progress_off(args.quiet))
    with logging_redirect_tqdm():
        targets = [(name, _decode(images, bar, args.resize_mode), index, issame)
                   for name, (images, index, issame) in pairs.items()]  # fmt: skip
        targets += [(name, *target) for name, target in decoded.items()]
        for name, pixels, index, issame in targets:
            for kind, m in models.items():
                result = evaluate_model(
                    m,
                    pixels,
                    issame,
                    args.batch_size,
                    torch.device("cpu"),
                    progress=bar.update,
                    pairs=index,
                )
                report[f"{name}/{kind}"] = result.as_dict()
                logger.info(
                    "%-12s %-9s accuracy %.4f ± %.4f  EER %.4f  TAR@FAR=1e-3 %.4f  (%d pairs)",
                    name,
                    kind,
                    result.accuracy,
                    result.accuracy_std,
                    result.eer,
                    result.tar_at_far[1e-3],
                    result.num_pairs,
                )
    bar.close()
    out = Path(args.out) if args.out else path.parent / "eval_report.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    logger.info("evaluation report: %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
