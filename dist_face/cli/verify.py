"""``dist-face-verify``: scan every record, or check checkpoints against their manifests.

Given a shard set or a ``.rec``, every record is scanned; given a checkpoint, a run's
``checkpoints`` directory or a run directory, every checkpoint file is checked against its
manifest (:mod:`dist_face.cli.verify_checkpoint`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from dist_face.cli.common import closed_pipe_is_quiet, progress_off
from dist_face.cli.verify_checkpoint import is_checkpoint_path, verify_checkpoints
from dist_face.data.format.verify import rec_bytes, verify_path


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``dist-face-verify``."""
    p = argparse.ArgumentParser(
        prog="dist-face-verify",
        description="Full scan of a shard set (or one .rec with its .idx): framing of every "
        "record, .idx and manifest entries, checksums, every image decodes (Pillow), every "
        "label in range. Prints one line per problem (file, key, offset, reason); exit code "
        "1 if there is any problem, 2 if PATH cannot be opened. Given a checkpoint, a "
        "checkpoints directory or a run directory, checks every checkpoint file against its "
        "manifest (size and SHA-256) and prints one line per checkpoint.",
    )
    p.add_argument("path", help="shard set directory, .rec file, checkpoint or run directory")
    p.add_argument("--num-classes", type=int, help="label range for a single .rec")
    p.add_argument("--no-decode", action="store_true", help="skip decoding the images")
    p.add_argument("--workers", type=int, default=1, help="shards scanned in parallel")
    p.add_argument("--max-report", type=int, default=1000, help="print at most this many problems")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Run the scan; returns 0 when everything is good, 1 when a problem was found."""
    args = build_parser().parse_args(argv)
    if is_checkpoint_path(Path(args.path)):
        return verify_checkpoints(Path(args.path))
    # bytes scanned, on stderr; shown on a terminal only, unless --quiet
    bar = tqdm(
        total=rec_bytes(args.path),
        unit="B",
        unit_scale=True,
        desc="verify",
        disable=progress_off(args.quiet),
    )
    try:
        with bar:
            count, bad = verify_path(
                args.path, args.num_classes, not args.no_decode, args.workers, bar.update
            )
    except OSError as err:
        print(f"dist-face-verify: error: {err}", file=sys.stderr)
        return 2
    for problem in bad[: args.max_report]:
        print(problem)
    if len(bad) > args.max_report:
        print(f"... and {len(bad) - args.max_report} more")
    print(f"{count} records scanned, {len(bad)} problems")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
