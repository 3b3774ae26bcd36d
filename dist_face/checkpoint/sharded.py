"""Row-sharded tensors on disk, re-split by class range on load.

Each rank writes the rows it owns, ``[start, end)`` of a ``[C, ...]`` tensor (the class
centers and their optimizer state), into its own file together with the range. Loading for any
world size reads, for each new rank, only the files whose ranges overlap its new range, and
concatenates the overlapping rows. Files are memory-mapped, so a rank never holds more than its
own slice. The ranges come from the checkpoint's manifest when it has one, so a rank opens no
head file it does not need (and each one it opens was verified against the manifest first).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from dist_face.checkpoint.manifest import MANIFEST, CheckpointCorrupt, read_manifest
from dist_face.heads.sharded.shard_math import resplit_rows

_NAME = "head-{rank:05d}-of-{world:05d}.pt"
_PATTERN = re.compile(r"head-(\d{5})-of-(\d{5})\.pt$")


class ShardedCheckpointError(RuntimeError):
    """The head slices of a checkpoint are missing, overlap or do not cover the classes."""


def shard_file(directory: Path, rank: int, world_size: int) -> Path:
    """Path of rank ``rank``'s head file."""
    return directory / _NAME.format(rank=rank, world=world_size)


def list_shards(directory: Path) -> list[tuple[int, int, Path]]:
    """``(start, end, path)`` of every head file in ``directory``, sorted and validated.

    Raises:
        ShardedCheckpointError: files are missing or their ranges leave gaps or overlap.
    """
    found = sorted(p for p in directory.iterdir() if _PATTERN.search(p.name))
    if not found:
        raise ShardedCheckpointError(f"{directory}: no head-*-of-*.pt files")
    world = {int(_PATTERN.search(p.name).group(2)) for p in found}  # type: ignore[union-attr]
    if len(world) != 1 or len(found) != world.pop():
        raise ShardedCheckpointError(f"{directory}: incomplete or mixed head files {found}")
    ranges = []
    for p in found:
        meta = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        ranges.append((int(meta["class_range"][0]), int(meta["class_range"][1]), p))
    ranges.sort()
    expected = 0
    for start, end, p in ranges:
        if start != expected:
            raise ShardedCheckpointError(f"{p}: class range starts at {start}, expected {expected}")
        expected = end
    return ranges


def shard_ranges(directory: Path) -> list[tuple[int, int, Path]]:
    """``(start, end, path)`` of every head file: from the manifest, else from the files.

    Raises:
        ShardedCheckpointError: the manifest is damaged, or (without one) the files are
            missing or their ranges leave gaps or overlap.
    """
    directory = Path(directory)
    if not (directory / MANIFEST).exists():  # written before manifests
        return list_shards(directory)
    try:
        return read_manifest(directory).shard_ranges()
    except CheckpointCorrupt as exc:
        raise ShardedCheckpointError(str(exc)) from None


def load_rows(directory: Path, key: str, start: int, end: int) -> torch.Tensor:
    """Rows ``[start, end)`` of the sharded tensor ``key``, assembled from overlapping files.

    Only the files overlapping ``[start, end)`` are read (memory-mapped); the re-split itself
    is :func:`dist_face.heads.sharded.shard_math.resplit_rows`, shared with the head's own shards.

    Raises:
        ShardedCheckpointError: the files do not cover ``[start, end)`` or lack ``key``.
    """

    def rows(path: Path) -> torch.Tensor:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if key not in state["rows"]:
            raise ShardedCheckpointError(f"{path}: no sharded tensor {key!r}")
        return state["rows"][key]

    pieces = [(s, e, lambda p=p: rows(p)) for s, e, p in shard_ranges(directory)]
    try:
        return resplit_rows(pieces, start, end)
    except ValueError as exc:
        raise ShardedCheckpointError(f"{directory}: {key}: {exc}") from None


def total_classes(directory: Path) -> int:
    """Number of classes covered by the head files (the end of the last range)."""
    return shard_ranges(directory)[-1][1]
