"""Small renders of the embedded synthetic identities, for the loss study.

The study trains dozens of short runs on two CPU processes, so it works on 32×32 versions of
the embedded dataset's faces (:mod:`dist_face.data.synthetic.faces`, the same identities,
expressions, poses and photometric changes) rather than 112×112 JPEG shards. Arrays are cached
as ``.npz`` keyed by every number that shapes them.
"""

from __future__ import annotations

import io
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dist_face.data.synthetic.faces import sample_jpeg

#: Held-out identities come from a disjoint id range (as in the embedded dataset).
HELD_OUT_OFFSET = 1_000_000


@dataclass(frozen=True)
class FaceSet:
    """Images ``uint8 [N, S, S, 3]`` and labels ``int64 [N]`` (0-based, contiguous)."""

    images: np.ndarray
    labels: np.ndarray

    @property
    def num_classes(self) -> int:
        """Number of distinct identities."""
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def _render(args: tuple[int, int, int, int]) -> np.ndarray:
    seed, identity, index, size = args
    jpeg = sample_jpeg(seed, identity, index)
    image = Image.open(io.BytesIO(jpeg)).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(image)


def render_faces(
    identities: int,
    per_identity: int,
    *,
    held_out: bool,
    size: int = 32,
    seed: int = 0,
    workers: int = 2,
    cache: Path | None = None,
) -> FaceSet:
    """Render ``identities × per_identity`` faces at ``size``×``size`` pixels.

    Args:
        identities: number of identities (labels ``0 … identities-1``).
        per_identity: images per identity.
        held_out: draw from the held-out id range (disjoint from every training identity).
        size: side in pixels.
        seed: dataset seed (the embedded dataset uses 0).
        workers: render processes.
        cache: directory for the ``.npz`` cache (None: no cache).
    """
    tag = "heldout" if held_out else "train"
    path = None
    if cache is not None:
        path = cache / f"faces-{tag}-{identities}x{per_identity}-{size}px-seed{seed}.npz"
        if path.is_file():
            with np.load(path) as z:
                return FaceSet(z["images"], z["labels"])
    base = HELD_OUT_OFFSET if held_out else 0
    jobs = [(seed, base + i, k, size) for i in range(identities) for k in range(per_identity)]
    with ProcessPoolExecutor(max_workers=max(workers, 1)) as pool:
        images = np.stack(list(pool.map(_render, jobs, chunksize=32)))
    labels = np.repeat(np.arange(identities, dtype=np.int64), per_identity)
    out = FaceSet(images, labels)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, images=images, labels=labels)
        tmp.replace(path)
    return out
