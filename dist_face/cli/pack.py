"""``dist-face-pack``: pack an image folder, a ``.lst`` or a ``.rec`` into record shards."""

from __future__ import annotations

import argparse
import sys
import time

from dist_face.data.pack import PackOptions, pack
from dist_face.data.sources import open_source


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
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the packer; returns the process exit code."""
    args = build_parser().parse_args(argv)
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
        meta = pack(source, args.out_dir, options, progress=not args.quiet)
    except (OSError, ValueError) as err:
        print(f"dist-face-pack: error: {err}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - start
    print(
        f"packed {meta.num_images} images of {meta.num_classes} classes into "
        f"{len(meta.shards)} shards in {args.out_dir} ({seconds:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
