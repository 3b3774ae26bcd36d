"""Pair lists as CSV (``img1,img2[,label]``): score every pair, and with labels compute metrics.

Images are aligned 112×112 faces (any format PIL reads), resolved against a root directory.
Each image is embedded once with its mirror (``normalize(f(x) + f(mirror(x)))``) and a pair is
scored by cosine. A first row whose label is not 0/1 (``img1,img2,label``) is a header.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dist_face.data.loading.image_fit import DEFAULT_RESIZE_MODE, describe_mode, fit_image
from dist_face.models import INPUT_SIZE

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "same", "yes"}
_FALSE = {"0", "false", "diff", "no"}


class PairListError(ValueError):
    """A malformed pair list or image; the message names the file and line."""


@dataclass(frozen=True)
class PairList:
    """A parsed pair list."""

    path: Path
    """The CSV file."""
    pairs: list[tuple[str, str]]
    """Image paths as written."""
    lines: list[int]
    """1-based line of each pair."""
    labels: np.ndarray | None
    """``bool [P]`` same-identity flags, or ``None`` when the list has no labels."""


def read_pair_list(path: str | os.PathLike[str]) -> PairList:
    """Parse ``img1,img2[,label]`` rows; every row must have the same number of fields.

    Raises:
        PairListError: missing file, a row with another width, an unknown label, no pairs.
    """
    path = Path(path)
    if not path.is_file():
        raise PairListError(f"pair list {path} does not exist")
    pairs, lines, labels = [], [], []
    width = None
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if width is None and len(row) == 3 and row[2].lower() not in _TRUE | _FALSE:
                continue  # header
            if len(row) not in (2, 3) or (width is not None and len(row) != width):
                raise PairListError(f"{path}:{line_no}: expected img1,img2[,label], got {row}")
            width = len(row)
            if width == 3:
                if row[2].lower() not in _TRUE | _FALSE:
                    raise PairListError(f"{path}:{line_no}: label {row[2]!r} is not 0/1")
                labels.append(row[2].lower() in _TRUE)
            pairs.append((row[0], row[1]))
            lines.append(line_no)
    if not pairs:
        raise PairListError(f"{path}: no pairs")
    return PairList(path, pairs, lines, np.array(labels, bool) if width == 3 else None)


def load_images(
    plist: PairList,
    root: str | os.PathLike[str],
    mode: str = DEFAULT_RESIZE_MODE,
    align: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every distinct image once, fitting other sizes to 112×112 under ``mode``.

    Args:
        plist: the pairs.
        root: the folder the image paths are relative to.
        mode: how an unaligned image of another size is fitted.
        align: parsed :func:`dist_face.eval.raw_photos.add_align_args` options: with
            ``--landmarks`` or ``--detect`` every image is a raw photo, aligned on the fly.

    Returns:
        ``(uint8 [M, 112, 112, 3] images, int64 [P, 2] index of each pair's images)``; with
        ``align``, ``-1`` marks a photo left out (no landmarks, no face found).

    Raises:
        PairListError: an image is missing or unreadable (names it and the line).
    """
    from dist_face.eval.raw_photos import wants_alignment

    if align is not None and wants_alignment(align):
        return _aligned_images(plist, Path(root), align)
    index: dict[str, int] = {}
    others: dict[tuple[int, int], int] = {}
    images = []
    pair_index = np.empty((len(plist.pairs), 2), np.int64)
    for k, (pair, line) in enumerate(zip(plist.pairs, plist.lines)):
        for side, name in enumerate(pair):
            if name not in index:
                file = Path(root) / name
                try:
                    with Image.open(file) as im:
                        if im.size != (INPUT_SIZE, INPUT_SIZE):
                            others[im.size] = others.get(im.size, 0) + 1
                        pixels = np.asarray(fit_image(im, INPUT_SIZE, mode))
                except (OSError, ValueError) as exc:
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    raise PairListError(f"{file} ({plist.path}:{line}): {reason}") from None
                index[name] = len(images)
                images.append(pixels)
            pair_index[k, side] = index[name]
    if others:
        logger.warning(
            "%d of %d images of %s are not %d×%d (%s): %s; align them for a meaningful score "
            "(dist-face-pack --landmarks)",
            sum(others.values()),
            len(images),
            plist.path,
            INPUT_SIZE,
            INPUT_SIZE,
            ", ".join(f"{w}×{h} {n}" for (w, h), n in sorted(others.items())),
            describe_mode(mode, INPUT_SIZE),
        )
    return np.stack(images), pair_index


def _aligned_images(plist: PairList, root: Path, align: Any) -> tuple[np.ndarray, np.ndarray]:
    from dist_face.eval.raw_photos import aligned_photos

    names: dict[str, int] = {}
    for pair, line in zip(plist.pairs, plist.lines):
        for name in pair:
            if name not in names:
                if not (root / name).is_file():
                    raise PairListError(f"{root / name} ({plist.path}:{line}): no such file")
                names[name] = len(names)
    faces, _ = aligned_photos([root / n for n in names], root, align)
    rows = {k: i for i, k in enumerate(k for k, f in enumerate(faces) if f is not None)}
    if not rows:
        raise PairListError(f"{plist.path}: no photo could be aligned")
    index = np.array([[rows.get(names[a], -1), rows.get(names[b], -1)] for a, b in plist.pairs])
    return np.stack([f for f in faces if f is not None]), index.reshape(-1, 2).astype(np.int64)


def write_scores(plist: PairList, scores: np.ndarray, out: str | os.PathLike[str]) -> Path:
    """Write ``img1,img2,score[,label]`` rows in list order."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img1", "img2", "score"] + (["label"] if plist.labels is not None else []))
        for k, (a, b) in enumerate(plist.pairs):
            row = [a, b, "" if np.isnan(scores[k]) else f"{scores[k]:.6f}"]
            if plist.labels is not None:
                row.append(int(plist.labels[k]))
            w.writerow(row)
    return out
