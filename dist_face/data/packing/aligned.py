"""Packing aligned faces: five landmarks per image → a 112×112 crop on the ArcFace template.

The landmarks come from a CSV (``dist-face-pack --landmarks FILE``) or from a face detector
(``--detect MODEL.onnx``, :mod:`dist_face.data.packing.detect`). Each image is aligned by the
least-squares similarity transform the IJB evaluation uses (:mod:`dist_face.eval.align`) and
stored as PNG (lossless; ``--quality`` re-encodes it as JPEG), in its own mode: a grayscale photo
stays grayscale. Images without landmarks are left out and listed in the pack report.
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from dist_face.data.packing.pack_check import CheckedSource
from dist_face.data.packing.sources import Source
from dist_face.eval.align import ARCFACE_TEMPLATE, CROP_SIZE, similarity_transform, warp_affine

LANDMARK_COLUMNS = 11
"""``path, x1, y1, ..., x5, y5``: the template's order, see :data:`LANDMARK_ORDER`."""
LANDMARK_ORDER = (
    "eye on the image-left, eye on the image-right, nose tip, mouth corner on the image-left, "
    "mouth corner on the image-right (image-left: smaller x; the subject's right eye in a "
    "frontal photo)"
)
"""The five points' order, as ``--help``, the docs and the pack report state it."""


def swapped_eyes(landmarks: dict[str, np.ndarray]) -> list[str]:
    """The rows whose first eye lies to the image-right of the second (``x1 > x2``).

    A file written in the subject's left/right order has most rows swapped: the faces would be
    aligned mirrored and upside-down-rotated by the similarity fit.
    """
    return sorted(k for k, p in landmarks.items() if p[0, 0] > p[1, 0])


def swap_warning(landmarks: dict[str, np.ndarray], source_name: str) -> str | None:
    """One line when most rows of ``landmarks`` have the eyes swapped, naming some; else None."""
    swapped = swapped_eyes(landmarks)
    if len(swapped) * 2 <= len(landmarks):
        return None
    shown = ", ".join(swapped[:5]) + (" ..." if len(swapped) > 5 else "")
    return (
        f"{source_name}: {len(swapped)} of {len(landmarks)} landmark rows have the first eye to "
        f"the image-right of the second (x1 > x2): {shown}. The order is {LANDMARK_ORDER}; "
        f"a file in the subject's left/right order needs x1,y1 <-> x2,y2 and x4,y4 <-> x5,y5 "
        f"swapped"
    )


def read_landmarks(path: str, root: str | None = None) -> dict[str, np.ndarray]:
    """Read a landmarks CSV: ``image path, x1, y1, ..., x5, y5`` per row, an optional header.

    Args:
        path: The CSV file.
        root: The folder being packed; absolute image paths inside it are made relative to it.

    Returns:
        Normalised image path (relative to the packed folder) → ``float64 [5, 2]`` (x, y) pixels.

    Raises:
        ValueError: A row with the wrong column count or a non-number, naming file and line.
    """
    out: dict[str, np.ndarray] = {}
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) != LANDMARK_COLUMNS:
                raise ValueError(
                    f"{path}:{line_no}: expected image path and 10 coordinates "
                    f"(x1,y1,...,x5,y5), got {len(row)} column(s)"
                )
            try:
                points = np.array([float(c) for c in row[1:]], dtype=np.float64).reshape(5, 2)
            except ValueError:
                if line_no == 1 and not out:
                    continue  # a header row
                raise ValueError(
                    f"{path}:{line_no}: coordinates {row[1:]} are not numbers"
                ) from None
            out[_key(row[0], root)] = points
    if not out:
        raise ValueError(f"{path}: no landmark rows")
    return out


def _key(image_path: str, root: str | None) -> str:
    if root is not None and os.path.isabs(image_path):
        image_path = os.path.relpath(image_path, root)
    return os.path.normpath(image_path)


def align_image(data: bytes, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Decode ``data`` and align it: ``uint8 [size, size]`` (grayscale) or ``[size, size, 3]``.

    Grayscale images (Pillow mode ``L``, e.g. PGM) stay single-channel; every other mode is
    aligned as RGB.
    """
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        pixels = np.asarray(im.convert("L" if im.mode in ("L", "I;16", "I", "F") else "RGB"))
    template = ARCFACE_TEMPLATE * (size / CROP_SIZE)
    matrix = similarity_transform(landmarks, template)
    if pixels.ndim == 2:
        return warp_affine(pixels[..., None], matrix, size)[..., 0]
    return warp_affine(pixels, matrix, size)


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8 [H, W]`` or ``[H, W, 3]`` array."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


class AlignedSource(CheckedSource):
    """``source`` with every image aligned by its five landmarks (items without any are gone)."""

    def __init__(self, source: Source, keep: np.ndarray, landmarks: np.ndarray) -> None:
        super().__init__(source, keep)
        self.landmarks = np.asarray(landmarks, dtype=np.float64)  # [len(keep), 5, 2]

    def read(self, i: int) -> bytes:
        """PNG bytes of kept item ``i``, aligned to 112×112."""
        return encode_png(align_image(self.source.read(int(self.keep[i])), self.landmarks[i]))


def align_source(
    source: Source, landmarks: dict[str, np.ndarray], why_missing: str
) -> tuple[AlignedSource, list[tuple[str, str]]]:
    """Pair every item of ``source`` with its landmarks.

    Args:
        source: What is being packed.
        landmarks: :func:`read_landmarks`'s map (keys: paths relative to the packed folder).
        why_missing: The reason written in the report for an image without landmarks.

    Returns:
        ``(aligned source, [(where, why_missing), ...] for the items left out)``.
    """
    keep, points, missing = [], [], []
    for i in range(len(source)):
        where = source.describe(i)
        found = landmarks.get(os.path.normpath(where))
        if found is None:
            missing.append((where, why_missing))
        else:
            keep.append(i)
            points.append(found)
    if not keep:
        raise ValueError(f"no image has landmarks ({why_missing}); the first: {missing[0][0]}")
    return AlignedSource(source, np.array(keep), np.stack(points)), missing
