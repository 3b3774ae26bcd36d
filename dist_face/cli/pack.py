"""``dist-face-pack``: pack an image folder, a ``.lst`` or a ``.rec`` into record shards."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import numpy as np

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.data.loading.image_fit import DEFAULT_RESIZE_MODE, RESIZE_MODES
from dist_face.data.packing.aligned import (
    LANDMARK_ORDER,
    align_source,
    read_landmarks,
    swap_warning,
)
from dist_face.data.packing.pack import PackOptions, pack
from dist_face.data.packing.pack_check import (
    CHECKS,
    PackReport,
    by_reason,
    check_source,
    counted,
    size_warning,
    write_report,
)
from dist_face.data.packing.sources import Source, open_source
from dist_face.extras import MissingExtraError
from dist_face.log import init_logging

logger = logging.getLogger("dist_face.pack")


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``dist-face-pack``."""
    p = argparse.ArgumentParser(
        prog="dist-face-pack",
        description="Pack SRC (an image folder with one subfolder per identity, an MXNet .lst, "
        "an existing .rec, or a shard set) into globally shuffled, headerless, image-only "
        "RecordIO shards plus manifest.parquet and meta.json in OUT_DIR.",
    )
    p.add_argument("src", help="image folder, .lst file, .rec file or shard set directory")
    p.add_argument("out_dir", help="output directory (must be empty unless --overwrite)")
    p.add_argument("--shards", type=int, default=1, help="number of shards (default 1)")
    p.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="globally shuffle the records (default: on)",
    )
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="parallel processes for detection (--detect) and writing (default 1)",
    )
    p.add_argument("--root", help="image root for a .lst (default: the .lst's directory)")
    p.add_argument(
        "--resize", type=int, help="re-encode images fitted to RESIZE x RESIZE (see --resize-mode)"
    )
    p.add_argument(
        "--resize-mode",
        choices=RESIZE_MODES,
        default=DEFAULT_RESIZE_MODE,
        help="how --resize fits a non-square image: crop the centre after scaling the shorter "
        "side (default, keeps the aspect ratio), pad the scaled image with black, or stretch it",
    )
    p.add_argument(
        "--landmarks",
        metavar="FILE",
        help="CSV of 'image path,x1,y1,...,x5,y5' (paths relative to SRC), points in the "
        f"order: {LANDMARK_ORDER}: align every face to the 112x112 ArcFace template; images "
        "without a row are left out and listed in the report",
    )
    p.add_argument(
        "--detect",
        metavar="dlib|MODEL.onnx",
        help="find the landmarks with a face detector: 'dlib' (pip install 'dist_face[detect]': "
        "dlib's HOG detector, its CNN detector for the photos HOG misses, the largest face, "
        "68 points reduced to the template's 5) or a face-detector ONNX model with 5-point "
        "outputs (InsightFace SCRFD/RetinaFace layout); photos without a face are left out "
        "and listed in the report",
    )
    p.add_argument(
        "--detect-threshold",
        type=float,
        default=0.5,
        help="face score a --detect detection needs (default 0.5)",
    )
    p.add_argument("--quality", type=int, help="re-encode images as JPEG of this quality")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    p.add_argument(
        "--check",
        choices=CHECKS,
        default="decode",
        help="how each image is checked before packing: decode it fully (default), parse its "
        "header only (format and size), or none",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse to pack when an image fails the check (default: skip it and list it in "
        "OUT_DIR/pack_report.txt)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Run the packer; returns the process exit code."""
    args = build_parser().parse_args(argv)
    init_logging()
    try:
        if args.landmarks and args.detect:
            raise ValueError("--landmarks and --detect exclude each other")
        options = PackOptions(
            num_shards=args.shards,
            shuffle=args.shuffle,
            seed=args.seed,
            workers=args.workers,
            resize=args.resize,
            resize_mode=args.resize_mode,
            quality=args.quality,
            overwrite=args.overwrite,
        )
        start = time.perf_counter()
        source = open_source(args.src, args.root)
        skipped_files = dict(getattr(source, "skipped_files", {}))
        empty = list(getattr(source, "empty_classes", []))
        checked, result = check_source(source, args.check, args.workers, not args.quiet)
        if result.bad and args.strict:
            where, why = result.bad[0]
            raise ValueError(
                f"{len(result.bad)} image(s) fail the {args.check} check (--strict), "
                f"the first: {where}: {why}"
            )
        checked, unaligned, notes = _align(checked, args)
        singles = int((np.bincount(checked.labels, minlength=checked.num_classes) == 1).sum())
        aligned = bool(args.landmarks or args.detect)
        warning = size_warning(result.sizes, aligned, args.resize, args.resize_mode)
        if warning:
            logger.warning("%s", warning)
        meta = pack(checked, args.out_dir, options, progress=not args.quiet)
        report = write_report(
            args.out_dir,
            PackReport(result, skipped_files, empty, unaligned, singles, aligned, notes),
        )
    except (OSError, ValueError, MissingExtraError) as err:
        print(f"dist-face-pack: error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(
        f"packed {meta.num_images} images of {meta.num_classes} classes into "
        f"{len(meta.shards)} shards in {args.out_dir} ({seconds:.1f} s)"
    )
    if result.bad:
        print(f"skipped {len(result.bad)} image(s) that failed the {args.check} check")
    if empty:
        print(f"skipped {len(empty)} identity folder(s) without images (no class for them)")
    if result.dropped_classes:
        print(f"removed {result.dropped_classes} class(es) whose every image was skipped")
    for note in notes:
        print(note)
    if unaligned:
        print(f"left out {len(unaligned)} image(s) without landmarks or a detected face")
    if singles:
        print(f"{singles} identities have a single image: a class, but no genuine pair")
    for why, exts in by_reason(skipped_files).items():
        print(f"ignored {sum(exts.values())} file(s) {why} ({counted(exts)})")
    print(f"report: {report}")
    return 0


def _align(
    source: Source, args: argparse.Namespace
) -> tuple[Source, list[tuple[str, str]], list[str]]:
    """Align to the ArcFace template by --landmarks or --detect; the source as is otherwise.

    Returns:
        ``(source, [(where, why) left out], lines for the report)``.
    """
    if args.landmarks:
        points = read_landmarks(args.landmarks, getattr(source, "root", None))
        notes = [f"landmark order: {LANDMARK_ORDER}"]
        warning = swap_warning(points, args.landmarks)
        if warning:
            logger.warning("%s", warning)
            notes.append(f"WARNING: {warning}")
        aligned, missing = align_source(source, points, f"no row in {args.landmarks}")
        return aligned, missing, notes
    if args.detect:
        from dist_face.data.packing.detect import detect_landmarks

        found = detect_landmarks(
            source, args.detect, args.detect_threshold, args.workers, progress=not args.quiet
        )
        notes = [f"detection ({args.detect}): {found.summary()}"]
        notes.append(f"landmark order: {LANDMARK_ORDER}")
        if not found.found:
            raise ValueError(
                f"--detect {args.detect} found no face in any of {len(source)} photos; the "
                f"first: {found.missing[0][0]}"
            )
        aligned, _ = align_source(source, found.found, "no face found")
        return aligned, found.missing, notes
    return source, [], []


if __name__ == "__main__":
    sys.exit(main())
