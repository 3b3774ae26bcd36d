"""A classic face database as a user has it: grayscale 92×112 PGM photos, a folder per person.

Each photo is a smooth synthetic face (the embedded generator's, rendered in grayscale and
placed by a random similarity into a 92×112 frame), and a landmarks CSV gives the five points
of every photo under that similarity, as a landmark detector would.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from dist_face.data.synthetic.faces import sample_jpeg
from dist_face.eval.align import ARCFACE_TEMPLATE

WIDTH, HEIGHT = 92, 112


def _placement(rng: np.random.Generator) -> np.ndarray:
    """``[2, 3]`` map from the 112×112 crop into the 92×112 photo: scale, rotation, shift."""
    scale = rng.uniform(0.7, 0.8)
    angle = np.deg2rad(rng.normal(0.0, 6.0))
    a, b = scale * np.cos(angle), scale * np.sin(angle)
    tx = WIDTH / 2 - (a * 56 - b * 56) + rng.uniform(-3, 3)
    ty = HEIGHT / 2 - (b * 56 + a * 56) + rng.uniform(-3, 3)
    return np.array([[a, -b, tx], [b, a, ty]])


def make_pgm_faces(
    root: Path, people: int = 6, per_person: int = 4, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write ``root/s<k>/<i>.pgm`` and return each photo's ``[5, 2]`` landmarks by path."""
    rng = np.random.default_rng(seed)
    points: dict[str, np.ndarray] = {}
    for person in range(people):
        folder = root / f"s{person + 1}"
        folder.mkdir(parents=True)
        for i in range(per_person):
            with Image.open(io.BytesIO(sample_jpeg(seed, person, i))) as face:
                gray = face.convert("L")
            m = _placement(rng)
            inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
            photo = gray.transform(
                (WIDTH, HEIGHT), Image.Transform.AFFINE, inv.ravel().tolist(), Image.BILINEAR
            )
            name = f"s{person + 1}/{i + 1}.pgm"
            photo.save(root / name)
            points[name] = ARCFACE_TEMPLATE @ m[:, :2].T + m[:, 2]
    return points


def write_landmarks(path: Path, points: dict[str, np.ndarray]) -> Path:
    """The CSV ``dist-face-pack --landmarks`` reads: a header, then path and 10 numbers."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *[f"{c}{k}" for k in range(1, 6) for c in "xy"]])
        for name, p in points.items():
            w.writerow([name, *[f"{v:.3f}" for v in p.ravel()]])
    return path
