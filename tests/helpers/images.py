"""Small random JPEG datasets written with Pillow, for record and loader tests."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def random_jpeg(rng: np.random.Generator, size: int = 16, quality: int = 90) -> bytes:
    """A size x size RGB JPEG of smooth random content (compresses like a photo)."""
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def make_image_folder(
    root: Path, classes: int = 5, per_class: int = 4, size: int = 16, seed: int = 0
) -> dict[str, tuple[bytes, int]]:
    """One subfolder per identity (``id_000``...); returns ``{relative path: (bytes, label)}``."""
    rng = np.random.default_rng(seed)
    files = {}
    for c in range(classes):
        folder = root / f"id_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class + c % 2):  # uneven class sizes
            data = random_jpeg(rng, size)
            (folder / f"{k:02d}.jpg").write_bytes(data)
            files[f"id_{c:03d}/{k:02d}.jpg"] = (data, c)
    return files
