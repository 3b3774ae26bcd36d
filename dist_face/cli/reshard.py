"""``dist-face-reshard``: rewrite a shard set as a different number of shards."""

from __future__ import annotations

import argparse
import sys

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.data.packing.pack import PackOptions, pack
from dist_face.data.packing.sources import ShardSetSource


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``dist-face-reshard``."""
    p = argparse.ArgumentParser(
        prog="dist-face-reshard",
        description="Rewrite the shard set SRC_DIR as M shards in OUT_DIR. Image bytes are "
        "copied unchanged; record headers take the manifest labels (so a relabelled set "
        "becomes readable by DALI again). Keeps the global order unless --shuffle.",
    )
    p.add_argument("src_dir", help="existing shard set")
    p.add_argument("out_dir", help="output directory (must be empty unless --overwrite)")
    p.add_argument("--shards", type=int, required=True, help="number of output shards")
    p.add_argument("--shuffle", action="store_true", help="shuffle globally again")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default 0)")
    p.add_argument("--workers", type=int, default=1, help="parallel writer processes (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Run the resharder; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        source = ShardSetSource(args.src_dir)
        options = PackOptions(
            num_shards=args.shards,
            shuffle=args.shuffle,
            seed=args.seed,
            workers=args.workers,
            overwrite=args.overwrite,
        )
        meta = pack(source, args.out_dir, options, progress=not args.quiet)
    except (OSError, ValueError) as err:
        print(f"dist-face-reshard: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {meta.num_images} records as {len(meta.shards)} shards in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
