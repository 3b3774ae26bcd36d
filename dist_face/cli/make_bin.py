"""``dist-face-make-bin``: build a verification ``.bin`` (LFW/CFP-FP/AgeDB format)."""

from __future__ import annotations

import argparse
import os
import pickle
import sys

from dist_face.cli.common import closed_pipe_is_quiet

_TRUE = {"1", "true", "yes", "same"}
_FALSE = {"0", "false", "no", "diff"}


def read_pairs(pairs_path: str, root: str) -> tuple[list[str], list[bool]]:
    """Parse ``path_a path_b is_same`` lines (whitespace separated; ``#`` starts a comment).

    Returns:
        ``(paths, issame)`` with ``paths = [a0, b0, a1, b1, ...]`` resolved against ``root``.
    """
    paths: list[str] = []
    issame: list[bool] = []
    with open(pairs_path) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 3 or fields[2].lower() not in _TRUE | _FALSE:
                raise ValueError(
                    f"{pairs_path}:{line_no}: expected 'path_a path_b is_same(1/0)', got {line!r}"
                )
            paths += [os.path.join(root, fields[0]), os.path.join(root, fields[1])]
            issame.append(fields[2].lower() in _TRUE)
    if not issame:
        raise ValueError(f"{pairs_path} lists no pairs")
    return paths, issame


def make_bin(pairs_path: str, out_path: str, root: str | None = None) -> int:
    """Write ``pickle((list of image bytes, list of bool))``; returns the number of pairs.

    Image ``2k`` and ``2k+1`` form pair ``k``; their bytes are stored unchanged.
    """
    paths, issame = read_pairs(pairs_path, root or os.path.dirname(os.path.abspath(pairs_path)))
    bins = []
    for path in paths:
        with open(path, "rb") as f:
            bins.append(f.read())
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump((bins, issame), f, protocol=4)
    os.replace(tmp, out_path)
    return len(issame)


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``dist-face-make-bin``."""
    p = argparse.ArgumentParser(
        prog="dist-face-make-bin",
        description="Build a verification .bin from a pairs list: a pickle of (list of encoded "
        "image bytes a0, b0, a1, b1, ..., list of bools), the LFW/CFP-FP/AgeDB format. PAIRS "
        "has one 'path_a path_b is_same' line per pair (is_same: 1/0).",
    )
    p.add_argument("pairs", help="pairs list")
    p.add_argument("out", help="output .bin")
    p.add_argument("--root", help="directory the image paths are relative to (default: PAIRS's)")
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Build the ``.bin``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        count = make_bin(args.pairs, args.out, args.root)
    except (OSError, ValueError) as err:
        print(f"dist-face-make-bin: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {count} pairs to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
