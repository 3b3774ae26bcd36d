"""IJB-B/IJB-C evaluation: 1:1 TAR@FAR and the 1:N protocol on the official layout.

Run with torchrun (or srun) to embed on several GPUs or processes: each rank embeds a slice
of the images and rank 0 gathers them, scores, and writes the outputs.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from dist_face.cli.backbone_source import add_backbone_args, load_from_args, untrained_like
from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.dist.env import Topology, TopologyError, destroy_distributed, init_distributed
from dist_face.eval.ijb_meta import IJBFormatError, read_ijb
from dist_face.eval.ijb_pipeline import IJBOptions, run_ijb
from dist_face.log import init_logging

logger = logging.getLogger("dist_face.ijb")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dist-face-ijb", description=__doc__)
    add_backbone_args(p)
    p.add_argument("--image-path", required=True, help="dataset root (meta/, loose_crop/)")
    p.add_argument("--target", choices=("IJBC", "IJBB"), default="IJBC")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=0, help="image decoding processes per rank")
    p.add_argument("--no-flip", action="store_true", help="do not add the mirror's embedding")
    p.add_argument("--no-norm-score", action="store_true", help="L2-normalise each image feature")
    p.add_argument("--no-detector-score", action="store_true", help="do not weight by faceness")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-plot", action="store_true", help="do not draw roc.png and det.png")
    p.add_argument(
        "--features",
        help="score these [N, 2D] .npy features (e.g. another tool's) instead of embedding",
    )
    p.add_argument(
        "--untrained-baseline",
        action="store_true",
        help="also evaluate a freshly initialised backbone of the same architecture",
    )
    return p.parse_args(argv)


def _summary(name: str, report: dict[str, Any]) -> None:
    tars = "  ".join(f"{k}: {100 * v:.2f}" for k, v in report["tar_at_far"].items())
    logger.info("%s 1:1 TAR%% @ FAR  %s  (AUC %.4f)", name, tars, report["auc"])
    one_n = report.get("identification_1n")
    if one_n:
        mean = one_n["mean"]
        tpir = "  ".join(f"{k}: {100 * v:.2f}" for k, v in mean["tpir_at_fpir"].items())
        cmc = "  ".join(f"{k}: {100 * v:.2f}" for k, v in mean["cmc"].items())
        logger.info("%s 1:N TPIR%% @ FPIR  %s  |  %s", name, tpir, cmc)


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Evaluate; returns the exit code (2 for bad input)."""
    args = _parse(argv)
    try:
        topology = Topology.from_env()
    except TopologyError as exc:
        init_logging()
        logger.error("%s", exc)
        return 2
    init_logging(topology.rank)
    opts = IJBOptions(
        flip=not args.no_flip,
        norm_score=not args.no_norm_score,
        detector_score=not args.no_detector_score,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    try:
        meta = read_ijb(args.image_path, args.target)
        features = np.load(args.features) if args.features else None
        model, name, kwargs = load_from_args(args)
        device = init_distributed(topology).device
        models = {"trained": model}
        if args.untrained_baseline:
            models["untrained"] = untrained_like(name, kwargs)
        reports: dict[str, Any] = {}
        for kind, m in models.items():
            report = run_ijb(
                m.to(device),
                meta,
                out if kind == "trained" else out / kind,
                opts,
                features if kind == "trained" else None,
            )
            if report is not None:
                reports[kind] = {"backbone": name, **report}
    except (FileNotFoundError, ValueError, IJBFormatError) as exc:
        logger.error("%s", exc)
        return 2
    finally:
        destroy_distributed()
    if topology.rank != 0:
        return 0
    report = reports["trained"]
    if "untrained" in reports:
        report["untrained"] = reports["untrained"]
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    for kind, r in reports.items():
        _summary(kind, r)
    if not args.no_plot:
        _plot(out, models.keys(), args.target)
    logger.info("IJB report: %s", out / "report.json")
    return 0


def _plot(out: Path, kinds: Any, target: str) -> None:
    try:
        from dist_face.eval.plots import Curve, plot_roc_det
    except ImportError:  # pragma: no cover - matplotlib is the report extra
        return
    curves = []
    for kind in kinds:
        d = out if kind == "trained" else out / kind
        curves.append(Curve(kind, np.load(d / "labels.npy"), np.load(d / "scores.npy")))
    try:
        roc, det = plot_roc_det(curves, out, title=f"{target} 1:1 verification")
    except ImportError:
        logger.warning("matplotlib is not installed: no ROC/DET plots (pip install .[report])")
        return
    logger.info("ROC: %s  DET: %s", roc, det)


if __name__ == "__main__":
    raise SystemExit(main())
