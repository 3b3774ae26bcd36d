"""Which rank owns which class centers: pure arithmetic, shared by the head and checkpoints.

Rank ``r`` of ``W`` owns the contiguous global classes ``[start_r, end_r)``. The first
``C mod W`` ranks hold one extra class, so slices differ by at most one row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def num_local_classes(num_classes: int, rank: int, world_size: int) -> int:
    """Number of class centers held by ``rank``: ``⌊C/W⌋ + [rank < C mod W]``."""
    _check(num_classes, rank, world_size)
    return num_classes // world_size + int(rank < num_classes % world_size)


def class_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """Global class ids ``[start, end)`` owned by ``rank``.

    ``start = ⌊C/W⌋·rank + min(rank, C mod W)``; ranks are in order and cover ``[0, C)``.
    """
    _check(num_classes, rank, world_size)
    base, extra = divmod(num_classes, world_size)
    start = base * rank + min(rank, extra)
    return start, start + base + int(rank < extra)


def class_ranges(num_classes: int, world_size: int) -> list[tuple[int, int]]:
    """``class_range`` of every rank, in rank order."""
    return [class_range(num_classes, r, world_size) for r in range(world_size)]


def owner_of(class_id: int, num_classes: int, world_size: int) -> int:
    """The rank whose slice holds global class ``class_id``."""
    if not 0 <= class_id < num_classes:
        raise ValueError(f"class id {class_id} is outside [0, {num_classes})")
    base, extra = divmod(num_classes, world_size)
    boundary = (base + 1) * extra  # classes below this live on the first `extra` ranks
    if class_id < boundary:
        return class_id // (base + 1)
    return extra + (class_id - boundary) // base


def _check(num_classes: int, rank: int, world_size: int) -> None:
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if num_classes < world_size:
        raise ValueError(
            f"{num_classes} classes cannot be sharded over {world_size} ranks: every rank "
            "needs at least one class center"
        )


def resplit_rows(
    pieces: Iterable[tuple[int, int, Callable[[], torch.Tensor]]], start: int, end: int
) -> torch.Tensor:
    """Rows ``[start, end)`` of a class-sharded tensor, assembled from pieces of any split.

    The one implementation of the class-range re-split: the head's in-memory shards and the
    checkpoint's head files both resume on another world size through it.

    Args:
        pieces: ``(lo, hi, rows)`` for each saved slice, covering classes ``[lo, hi)``;
            ``rows()`` returns its ``[hi - lo, ...]`` tensor and is only called for slices
            that overlap ``[start, end)`` (a checkpoint file is then opened only when needed).
        start: first class of the wanted range.
        end: one past its last class.

    Returns:
        ``[end - start, ...]`` tensor (a copy, never a view of a piece).

    Raises:
        ValueError: a piece has the wrong number of rows, or ``[start, end)`` is not exactly
            covered (a gap or an overlap).
    """
    parts, covered = [], start
    for lo, hi, rows in sorted(pieces, key=lambda p: (p[0], p[1])):
        a, b = max(lo, covered), min(hi, end)
        if a >= b:
            continue
        if a != covered:
            raise ValueError(f"saved slices leave classes [{covered}, {a}) uncovered")
        tensor = rows()
        if tensor is None or tensor.shape[0] != hi - lo:
            got = None if tensor is None else tensor.shape[0]
            raise ValueError(f"saved slice [{lo}, {hi}) has {got} rows, expected {hi - lo}")
        parts.append(tensor[a - lo : b - lo])
        covered = b
    if covered != end:
        raise ValueError(f"saved slices leave classes [{covered}, {end}) uncovered")
    return torch.cat(parts, dim=0).clone()
