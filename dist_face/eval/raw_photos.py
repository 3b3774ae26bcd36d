"""Evaluation on raw photos: align each one on the fly by ``--landmarks FILE`` or ``--detect``.

``score-pairs``, ``evaluate --pairs`` and ``identify`` take photo paths. Without these options
the photos must already be aligned 112×112 faces (other sizes are fitted by
``--resize-mode``); with one of them every photo is aligned to the ArcFace template as
``dist-face-pack`` aligns it, so a pair list of whole, unaligned photos is scored without
packing. A photo without landmarks (no row, no face found) is left out with a warning.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from dist_face.data.packing.aligned import LANDMARK_ORDER, align_image, read_landmarks, swap_warning

logger = logging.getLogger(__name__)


def add_align_args(p: argparse.ArgumentParser) -> None:
    """``--landmarks FILE``, ``--detect NAME``, ``--detect-threshold``, ``--workers``."""
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--landmarks",
        metavar="FILE",
        help="CSV of 'image path,x1,y1,...,x5,y5' (paths as the photos are named here), points "
        f"in the order: {LANDMARK_ORDER}: align every raw photo to the 112x112 template",
    )
    g.add_argument(
        "--detect",
        metavar="dlib|MODEL.onnx",
        help="align every raw photo by a face detector: 'dlib' (pip install "
        "'dist_face[detect]') or a 5-point ONNX detector, as dist-face-pack --detect",
    )
    p.add_argument("--detect-threshold", type=float, default=0.5, help="ONNX detector score")
    p.add_argument("--workers", type=int, default=1, help="detection processes (default 1)")


def wants_alignment(args: argparse.Namespace) -> bool:
    """True when ``--landmarks`` or ``--detect`` was given."""
    return bool(getattr(args, "landmarks", None) or getattr(args, "detect", None))


class _Files:
    """The photos as a source for :func:`dist_face.data.packing.detect.detect_landmarks`."""

    def __init__(self, files: list[Path], names: list[str]) -> None:
        self.files, self.names = files, names

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> bytes:
        return self.files[i].read_bytes()

    def describe(self, i: int) -> str:
        return self.names[i]


def aligned_photos(
    files: list[Path], root: Path, args: argparse.Namespace
) -> tuple[list[np.ndarray | None], list[tuple[str, str]]]:
    """Align each photo by ``args.landmarks`` or ``args.detect``.

    Args:
        files: the photos.
        root: the folder the landmark file's relative paths start from.
        args: parsed :func:`add_align_args` options.

    Returns:
        ``([uint8 [112, 112, 3] or None per file], [(photo, why) of those left out])``.
    """
    names = [os.path.normpath(os.path.relpath(f, root)) for f in files]
    if args.landmarks:
        points = read_landmarks(args.landmarks, str(root))
        warning = swap_warning(points, args.landmarks)
        if warning:
            logger.warning("%s", warning)
        why = f"no row in {args.landmarks}"
    else:
        from dist_face.data.packing.detect import detect_landmarks

        found = detect_landmarks(
            _Files(files, names), args.detect, args.detect_threshold, args.workers, progress=False
        )
        logger.info("detection (%s): %s", args.detect, found.summary())
        points, why = found.found, "no face found"
    out: list[np.ndarray | None] = []
    missing = []
    for file, name in zip(files, names):
        p = points.get(name)
        if p is None:
            out.append(None)
            missing.append((name, why))
            continue
        face = align_image(file.read_bytes(), p)
        out.append(np.repeat(face[..., None], 3, axis=2) if face.ndim == 2 else face)
    if missing:
        logger.warning(
            "%d of %d photos left out (%s): %s%s",
            len(missing),
            len(files),
            why,
            ", ".join(m[0] for m in missing[:5]),
            " ..." if len(missing) > 5 else "",
        )
    return out, missing
