"""``dist-face-pack``: pack an image folder, a ``.lst`` or a ``.rec`` into record shards."""

from __future__ import annotations

import argparse
import sys
import time

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.data.pack import PackOptions, pack
from dist_face.data.pack_check import CHECKS, check_source, write_report
from dist_face.data.sources import open_source
from dist_face.log import init_logging


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
    p.add_argument("--workers", type=int, default=1, help="parallel writer processes (default 1)")
    p.add_argument("--root", help="image root for a .lst (default: the .lst's directory)")
    p.add_argument("--resize", type=int, help="re-encode images resized to RESIZE x RESIZE")
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
        options = PackOptions(
            num_shards=args.shards,
            shuffle=args.shuffle,
            seed=args.seed,
            workers=args.workers,
            resize=args.resize,
            quality=args.quality,
            overwrite=args.overwrite,
        )
        start = time.perf_counter()
        source = open_source(args.src, args.root)
        other_files = dict(getattr(source, "other_files", {}))
        empty = list(getattr(source, "empty_classes", []))
        checked, result = check_source(source, args.check, args.workers, not args.quiet)
        if result.bad and args.strict:
            where, why = result.bad[0]
            raise ValueError(
                f"{len(result.bad)} image(s) fail the {args.check} check (--strict), "
                f"the first: {where}: {why}"
            )
        meta = pack(checked, args.out_dir, options, progress=not args.quiet)
        report = write_report(args.out_dir, result, other_files)
    except (OSError, ValueError) as err:
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
    if other_files:
        kinds = ", ".join(f"{ext} {n}" for ext, n in sorted(other_files.items()))
        print(f"ignored {sum(other_files.values())} file(s) without an image extension ({kinds})")
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
