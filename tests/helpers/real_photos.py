"""Unaligned photos of real people, made from the sample photos that installed packages ship.

The sources are photographs, not rendered faces: Grace Hopper (matplotlib's sample data), the
astronaut Eileen Collins (scikit-image's ``astronaut.png``), and the six people of InsightFace's
``t1.jpg`` group photo. Each person becomes a folder of ``per_person`` "photos": a loose crop of
their face, rescaled, rotated by a few degrees, shifted, brightened or darkened and set at a
random place on a larger canvas (another part of a real photo), saved as JPEG. Every photo is a
whole scene with one face somewhere in it, as a user's photos are; the faces' positions were
found by dlib's HOG detector on the source photos and checked by eye.

scikit-image's ``camera.png`` (the cameraman: a face the HOG detector misses and the CNN
fallback finds) and ``coffee.png`` (no face) are available for the detector's counts.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed")
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def source_photos() -> dict[str, tuple[Path, tuple[int, int, int]]]:
    """Person → ``(photo, (left, top, side) of their face box in pixels)``."""
    hopper = _package_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg")
    astronaut = _package_file("skimage", "data", "astronaut.png")
    group = _package_file("insightface", "data", "images", "t1.jpg")
    out = {"hopper": (hopper, (180, 139, 187)), "collins": (astronaut, (175, 76, 91))}
    boxes = [(67, 283, 109), (275, 176, 90), (450, 295, 108), (724, 367, 109)]
    boxes += [(870, 67, 130), (1118, 283, 109)]
    for k, box in enumerate(boxes):
        out[f"group{k}"] = (group, box)
    return out


def cameraman() -> Path:
    """A real photo whose face dlib's HOG detector misses and its CNN detector finds."""
    return _package_file("skimage", "data", "camera.png")


def no_face() -> Path:
    """A real photo without a face (a cup of coffee)."""
    return _package_file("skimage", "data", "coffee.png")


def scene(
    photo: Image.Image, box: tuple[int, int, int], rng: np.random.Generator, canvas: int = 320
) -> Image.Image:
    """A ``canvas``-sized RGB scene holding the face of ``box`` at a random scale, angle, place.

    The face comes out 70–130 pixels wide, turned by up to ±8°, its brightness scaled by
    0.75–1.25, on a background cut from elsewhere in ``photo`` (blurred, so no second face).
    """
    left, top, side = box
    cx, cy = left + side / 2, top + side / 2
    half = side * 1.1
    crop = photo.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))
    crop = crop.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BILINEAR)
    width = int(rng.uniform(70, 130) * 2.2)
    crop = crop.resize((width, width), Image.Resampling.BILINEAR)
    crop = ImageEnhance.Brightness(crop).enhance(float(rng.uniform(0.75, 1.25)))
    background = photo.resize((canvas // 8, canvas // 8)).resize((canvas, canvas))
    x = int(rng.integers(0, max(1, canvas - width)))
    y = int(rng.integers(0, max(1, canvas - width)))
    background.paste(crop, (x, y))
    return background


def make_real_photo_folder(
    root: str | os.PathLike[str],
    per_person: int = 4,
    people: list[str] | None = None,
    seed: int = 0,
) -> dict[str, list[Path]]:
    """Write ``root/<person>/<k>.jpg`` scenes (see :func:`scene`); returns the paths per person."""
    rng = np.random.default_rng(seed)
    sources = source_photos()
    out: dict[str, list[Path]] = {}
    opened: dict[Path, Image.Image] = {}
    for person in people or list(sources):
        path, box = sources[person]
        if path not in opened:
            with Image.open(path) as im:
                opened[path] = im.convert("RGB")
        folder = Path(root) / person
        folder.mkdir(parents=True, exist_ok=True)
        out[person] = []
        for k in range(per_person):
            target = folder / f"{k}.jpg"
            scene(opened[path], box, rng).save(target, quality=int(rng.integers(80, 96)))
            out[person].append(target)
    return out
