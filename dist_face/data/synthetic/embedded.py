"""Write the embedded default dataset: an identity image folder plus a verification ``.bin``.

Layout of ``out_dir``::

    train/<label:05d>/<index:03d>.jpg   training identities (labels follow the sorted folders)
    val.bin                              pairs of held-out identities (LFW format)
    dataset.json                         sizes and seed

Every image is a pure function of ``(seed, identity, index)``, so the dataset is the same on
every machine and for any number of worker processes.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dist_face.data.synthetic.faces import sample_jpeg
from dist_face.eval.bin_format import save_bin

# Held-out identities and their images are drawn from disjoint id/index ranges.
_VAL_ID_OFFSET = 1_000_000


@dataclass(frozen=True)
class EmbeddedSpec:
    """Sizes of the embedded dataset."""

    identities: int = 300
    """Training identities."""
    images_per_identity: int = 24
    """Training images per identity."""
    val_identities: int = 60
    """Held-out identities for verification pairs (disjoint from training)."""
    val_pairs: int = 600
    """Verification pairs, half positive and half negative."""
    seed: int = 0
    """Seed of every identity and sample."""


def _write_identity(args: tuple[Path, int, int, int]) -> int:
    folder, seed, identity, count = args
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (folder / f"{index:03d}.jpg").write_bytes(sample_jpeg(seed, identity, index))
    return count


def _pair_list(spec: EmbeddedSpec) -> list[tuple[int, int, int, int, bool]]:
    """``(identity_a, index_a, identity_b, index_b, same)`` for every verification pair."""
    rng = np.random.default_rng([spec.seed, 0xB1])
    pairs = []
    for k in range(spec.val_pairs):
        same = k % 2 == 0
        a = int(rng.integers(spec.val_identities))
        b = a if same else int((a + rng.integers(1, spec.val_identities)) % spec.val_identities)
        ia, ib = (int(i) for i in rng.choice(16, size=2, replace=False))
        pairs.append((a, ia, b, ib, same))
    return pairs


def _pair_images(args: tuple[int, tuple[int, int, int, int, bool]]) -> tuple[bytes, bytes]:
    seed, (a, ia, b, ib, _) = args
    return (sample_jpeg(seed, _VAL_ID_OFFSET + a, ia), sample_jpeg(seed, _VAL_ID_OFFSET + b, ib))


def generate_embedded_dataset(
    out_dir: str | os.PathLike[str], spec: EmbeddedSpec = EmbeddedSpec(), workers: int = 0
) -> Path:
    """Write the dataset to ``out_dir`` and return it; ``dataset.json`` is written last.

    Args:
        out_dir: target directory (created).
        spec: sizes and seed.
        workers: processes to render with; 0 uses every core.

    Raises:
        ValueError: the sizes cannot form the requested pairs.
    """
    if spec.val_identities < 2 or spec.val_pairs < 10:
        raise ValueError("verification needs at least 2 held-out identities and 10 pairs")
    out = Path(out_dir)
    train = out / "train"
    jobs = [
        (train / f"{i:05d}", spec.seed, i, spec.images_per_identity) for i in range(spec.identities)
    ]
    pairs = _pair_list(spec)
    workers = workers or os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=workers) as pool:
        list(
            tqdm(
                pool.map(_write_identity, jobs, chunksize=4),
                total=len(jobs),
                desc="train identities",
                unit="id",
                mininterval=2.0,
                disable=None,  # a terminal only
            )
        )
        images = list(
            tqdm(
                pool.map(_pair_images, [(spec.seed, p) for p in pairs], chunksize=16),
                total=len(pairs),
                desc="verification pairs",
                unit="pair",
                mininterval=2.0,
                disable=None,  # a terminal only
            )
        )
    save_bin(out / "val.bin", [im for pair in images for im in pair], [p[4] for p in pairs])
    meta = {
        **asdict(spec),
        "num_images": spec.identities * spec.images_per_identity,
        "num_classes": spec.identities,
        "image_size": [112, 112, 3],
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


DEBUG_SPEC = EmbeddedSpec(identities=40, images_per_identity=8, val_identities=10, val_pairs=100)
"""The ``debug_cpu`` recipe's data: 320 training images, 100 pairs; about 2 s to make."""


def ensure_packed_dataset(out_dir: str | os.PathLike[str], spec: EmbeddedSpec = DEBUG_SPEC) -> Path:
    """Make ``out_dir/shards`` (a packed shard set) and ``out_dir/val.bin`` unless they exist.

    Concurrent callers (every rank of a launch) wait on a file lock; one of them writes the
    data under a temporary name and renames it, so no caller ever sees half of it.

    Returns:
        ``out_dir``.
    """
    import fcntl
    import shutil

    from dist_face.data.format.shards import META_NAME
    from dist_face.data.packing.pack import PackOptions, pack
    from dist_face.data.packing.sources import FolderSource

    out = Path(out_dir)
    if (out / "shards" / META_NAME).is_file() and (out / "val.bin").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "shards" / META_NAME).is_file() and (out / "val.bin").is_file():
            return out  # another process made it while this one waited
        tmp = out.parent / f".{out.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        generate_embedded_dataset(tmp / "images", spec, workers=1)
        pack(FolderSource(str(tmp / "images" / "train")), str(tmp / "shards"), PackOptions(), False)
        (tmp / "images" / "val.bin").replace(tmp / "val.bin")
        shutil.rmtree(tmp / "images")
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    return out
