"""Pack a source into a shard set: globally shuffled, headerless, image-only shards.

The global order is one permutation of the source; shard ``s`` of ``N`` holds the contiguous
block ``[⌊n·s/N⌋, ⌊n·(s+1)/N⌋)`` of it, so the manifest (shard-major) lists records in that
global order. Each shard is written by one process under a temporary name; the shards are
renamed, the manifest written and ``meta.json`` written last only when all succeeded.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing as mp
import os
from typing import Any

import numpy as np

from dist_face.data.format.recordio import pack_record
from dist_face.data.format.shards import (
    ShardMeta,
    ShardResult,
    ShardWriter,
    commit_shard_set,
    prepare_output,
    shard_name,
    temp_paths,
)
from dist_face.data.loading.image_fit import DEFAULT_RESIZE_MODE, check_mode, fit_image
from dist_face.data.packing.sources import Source

_SHAPE_PROBES = 8  # images per shard whose size is read to fill meta.image_shape


@dataclasses.dataclass(frozen=True)
class PackOptions:
    """How to pack."""

    num_shards: int = 1
    """Number of output shards (e.g. one or more per rank)."""
    shuffle: bool = True
    """Globally shuffle the records (needed for DALI and for per-rank shards)."""
    seed: int = 0
    """Shuffle seed."""
    workers: int = 1
    """Processes writing shards in parallel (1 = in this process)."""
    resize: int | None = None
    """Re-encode every image resized to ``resize × resize`` pixels (None: bytes unchanged)."""
    resize_mode: str = DEFAULT_RESIZE_MODE
    """How ``resize`` treats a non-square image: crop, pad or stretch (:mod:`.image_fit`)."""
    quality: int | None = None
    """Re-encode every image as JPEG of this quality (None: bytes unchanged unless resizing)."""
    overwrite: bool = False
    """Replace an existing shard set in the output directory."""

    def __post_init__(self) -> None:
        if self.num_shards < 1:
            raise ValueError(f"--shards must be >= 1, got {self.num_shards}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.resize is not None and self.resize < 1:
            raise ValueError(f"--resize must be >= 1, got {self.resize}")
        check_mode(self.resize_mode)
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in [1, 100], got {self.quality}")


def shard_bounds(num_records: int, num_shards: int) -> np.ndarray:
    """Start of every shard's block plus the end: shape ``(num_shards + 1,)``."""
    return (np.arange(num_shards + 1, dtype=np.int64) * num_records) // num_shards


def pack(source: Source, out_dir: str, options: PackOptions, progress: bool = True) -> ShardMeta:
    """Write ``source`` as a shard set in ``out_dir``.

    Args:
        source: What to pack (see :mod:`dist_face.data.packing.sources`).
        out_dir: Output directory; must be empty unless ``options.overwrite``.
        options: Shard count, shuffling, parallelism and re-encoding.
        progress: Show a tqdm progress bar (on a terminal).

    Returns:
        The written ``meta.json`` contents.
    """
    n = len(source)
    if n < options.num_shards:
        raise ValueError(f"cannot split {n} records into {options.num_shards} non-empty shards")
    prepare_output(out_dir, options.overwrite)
    order = np.random.default_rng(options.seed).permutation(n) if options.shuffle else np.arange(n)
    bounds = shard_bounds(n, options.num_shards)
    tasks = [(s, order[bounds[s] : bounds[s + 1]]) for s in range(options.num_shards)]
    try:
        results = _run(source, out_dir, options, tasks, progress)
    except BaseException:
        remove_temp_files(out_dir, options.num_shards)
        raise
    shapes = {tuple(shape) for r, _ in results for shape in r}
    image_shape = list(shapes.pop()) if len(shapes) == 1 else None
    return commit_shard_set(
        out_dir,
        [r for _, r in results],
        num_classes=source.num_classes,
        image_shape=image_shape,
        shuffled=options.shuffle,
        seed=options.seed if options.shuffle else None,
    )


def _run(
    source: Source, out_dir: str, options: PackOptions, tasks: list[Any], progress: bool
) -> list[tuple[list[Any], ShardResult]]:
    from tqdm import tqdm

    # shown on a terminal only: a log file or CI output gets no bar lines
    bar = tqdm(total=len(source), unit="img", disable=None if progress else True, desc="pack")
    if options.workers == 1:
        _init_worker(source, None)
        out = [_write_shard(out_dir, options, s, idx, bar.update) for s, idx in tasks]
        bar.close()
        return out
    ctx = mp.get_context("spawn")  # no inherited threads or locks from the parent
    counter = ctx.Value("q", 0)
    with ctx.Pool(options.workers, _init_worker, (source, counter)) as pool:
        pending = pool.starmap_async(_write_shard, [(out_dir, options, s, i) for s, i in tasks])
        while not pending.ready():
            pending.wait(0.2)
            bar.update(counter.value - bar.n)
        out = pending.get()
    bar.update(len(source) - bar.n)
    bar.close()
    return out


_SOURCE: Any = None
_COUNTER: Any = None


def _init_worker(source: Source, counter: Any) -> None:
    global _SOURCE, _COUNTER
    _SOURCE, _COUNTER = source, counter


def _write_shard(
    out_dir: str, options: PackOptions, shard: int, indices: np.ndarray, tick: Any = None
) -> tuple[list[Any], ShardResult]:
    writer = ShardWriter(out_dir, shard, options.num_shards)
    shapes = []
    done = 0
    for j, i in enumerate(indices.tolist()):
        image = _SOURCE.read(i)
        if options.resize is not None or options.quality is not None:
            image = transcode(image, options.resize, options.quality or 95, options.resize_mode)
        if j < _SHAPE_PROBES:
            shapes.append(image_shape(image))
        label = int(_SOURCE.labels[i])
        writer.add(pack_record(label, image, id=i), label, _SOURCE.describe(i))
        done += 1
        if done == 256 or j == len(indices) - 1:
            if tick is not None:
                tick(done)
            elif _COUNTER is not None:
                with _COUNTER.get_lock():
                    _COUNTER.value += done
            done = 0
    return [s for s in shapes if s is not None], writer.finish()


def image_shape(image: bytes) -> list[int] | None:
    """``[height, width, channels]`` from an encoded image's header, or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(image)) as im:
            return [im.height, im.width, len(im.getbands())]
    except Exception:
        return None


def transcode(
    image: bytes, resize: int | None, quality: int, mode: str = DEFAULT_RESIZE_MODE
) -> bytes:
    """Decode, optionally fit to ``resize × resize`` under ``mode``, re-encode as RGB JPEG."""
    from PIL import Image

    with Image.open(io.BytesIO(image)) as im:
        im = im.convert("RGB") if resize is None else fit_image(im, resize, mode)
        out = io.BytesIO()
        im.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def remove_temp_files(out_dir: str, num_shards: int) -> None:
    """Delete every temporary shard file a failed run left in ``out_dir``."""
    for s in range(num_shards):
        for path in temp_paths(out_dir, shard_name(s, num_shards)):
            if os.path.exists(path):
                os.remove(path)
