"""``dist-face-make-bin``: build a verification ``.bin`` (LFW/CFP-FP/AgeDB format).

From a pairs list of aligned faces, or of raw photos with ``--landmarks FILE`` or
``--detect dlib|MODEL.onnx`` (stored aligned, as PNG), or from a folder of
``<person>/<photo>`` (pairs drawn at random; their list is written as ``OUT.csv``).
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.eval.raw_photos import add_align_args, wants_alignment
from dist_face.extras import MissingExtraError

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


def folder_pairs(folder: str, count: int, seed: int) -> tuple[list[str], list[bool]]:
    """``count`` pairs drawn from ``folder/<person>/<photo>``: half of one person, half not.

    Returns:
        ``(paths, issame)`` as :func:`read_pairs` returns them (paths ``a0, b0, a1, ...``).
    """
    import random

    from dist_face.data.packing.sources import FolderSource

    src = FolderSource(folder)
    people: dict[int, list[str]] = {}
    for path, label in zip(src.paths, src.labels.tolist()):
        people.setdefault(label, []).append(os.path.join(src.root, path))
    several = [p for p in people.values() if len(p) > 1]
    if not several or len(people) < 2:
        raise ValueError(f"{folder}: pairs need 2+ people and a person with 2+ photos")
    rng = random.Random(seed)
    paths, issame, seen = [], [], set()
    for k in range(count * 20):
        if len(issame) == count:
            break
        if k % 2 == 0:
            a, b = rng.sample(rng.choice(several), 2)
        else:
            pa, pb = rng.sample(list(people.values()), 2)
            a, b = rng.choice(pa), rng.choice(pb)
        if (a, b) in seen or (b, a) in seen:
            continue
        seen.add((a, b))
        paths += [a, b]
        issame.append(k % 2 == 0)
    return paths, issame


def aligned_bytes(
    paths: list[str], issame: list[bool], root: str, args: argparse.Namespace
) -> tuple[list[bytes], list[str], list[bool]]:
    """Raw photos aligned to 112×112 PNG by ``--landmarks``/``--detect``.

    Returns:
        ``(encoded images, their paths, issame)`` of the pairs kept (a pair with a photo
        without a face is dropped).
    """
    from pathlib import Path

    from dist_face.data.packing.aligned import encode_png
    from dist_face.eval.raw_photos import aligned_photos

    distinct = list(dict.fromkeys(paths))
    faces, _ = aligned_photos([Path(p) for p in distinct], Path(root), args)
    face = dict(zip(distinct, faces))
    data, kept_paths, kept = [], [], []
    for k, same in enumerate(issame):
        a, b = paths[2 * k], paths[2 * k + 1]
        if face[a] is None or face[b] is None:
            continue
        data += [encode_png(face[a]), encode_png(face[b])]
        kept_paths += [a, b]
        kept.append(same)
    if not kept:
        raise ValueError("no pair has a face in both photos")
    dropped = len(issame) - len(kept)
    if dropped:
        print(f"left out {dropped} pair(s) with a photo without a face")
    return data, kept_paths, kept


def write_pair_csv(paths: list[str], issame: list[bool], out: str) -> str:
    """The pairs as ``img1,img2,label`` (score-pairs' list), paths relative to the CSV."""
    base = os.path.dirname(os.path.abspath(out))
    with open(out, "w") as f:
        f.write("img1,img2,label\n")
        for k, same in enumerate(issame):
            a, b = (os.path.relpath(p, base) for p in paths[2 * k : 2 * k + 2])
            f.write(f"{a},{b},{int(same)}\n")
    return out


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``dist-face-make-bin``."""
    p = argparse.ArgumentParser(
        prog="dist-face-make-bin",
        description="Build a verification .bin from a pairs list: a pickle of (list of encoded "
        "image bytes a0, b0, a1, b1, ..., list of bools), the LFW/CFP-FP/AgeDB format. PAIRS "
        "has one 'path_a path_b is_same' line per pair (is_same: 1/0).",
    )
    p.add_argument(
        "pairs",
        help="pairs list, or a folder of <person>/<photo> to draw --num-pairs pairs from (half "
        "of one person, half of two; the list is written beside OUT as OUT.csv)",
    )
    p.add_argument("out", help="output .bin")
    p.add_argument("--root", help="directory the image paths are relative to (default: PAIRS's)")
    p.add_argument("--num-pairs", type=int, default=1000, help="pairs drawn from a folder")
    p.add_argument("--seed", type=int, default=0, help="seed of the pairs drawn from a folder")
    add_align_args(p)
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Build the ``.bin``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        if os.path.isdir(args.pairs) or wants_alignment(args):
            count = _make_from_photos(args)
        else:
            count = make_bin(args.pairs, args.out, args.root)
    except (OSError, ValueError, MissingExtraError) as err:
        print(f"dist-face-make-bin: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {count} pairs to {args.out}")
    return 0


def _make_from_photos(args: argparse.Namespace) -> int:
    """A folder to draw pairs from, or photos to align: the .bin and its pair list."""
    if os.path.isdir(args.pairs):
        root = args.pairs
        paths, issame = folder_pairs(args.pairs, args.num_pairs, args.seed)
    else:
        root = args.root or os.path.dirname(os.path.abspath(args.pairs))
        paths, issame = read_pairs(args.pairs, root)
    if wants_alignment(args):
        from dist_face.log import init_logging

        init_logging()
        data, paths, issame = aligned_bytes(paths, issame, root, args)
    else:
        data = []
        for path in paths:
            with open(path, "rb") as f:
                data.append(f.read())
    tmp = args.out + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump((data, issame), f, protocol=4)
    os.replace(tmp, args.out)
    if os.path.isdir(args.pairs):
        listed = write_pair_csv(paths, issame, os.path.splitext(args.out)[0] + ".csv")
        print(f"pair list (raw photos, for dist-face-score-pairs): {listed}")
    return len(issame)


if __name__ == "__main__":
    sys.exit(main())
