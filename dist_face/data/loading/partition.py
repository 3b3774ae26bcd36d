"""Which samples each rank and loader worker reads in an epoch: pure, deterministic arithmetic.

Every epoch draws one global permutation of ``[0, N)`` from ``(seed, epoch)``; every rank
draws the same one. Ranks take strided slices of it, so rank ``r`` of ``W`` reads
``perm[r::W]``. Every rank gets the same number of samples, because the sharded classifier
runs collectives every step and a rank with one batch more would hang the others:

* ``drop_last=False`` (default) pads: the permutation is extended by its own first
  ``ceil(N/W)·W − N`` entries, so a few samples are seen twice per epoch;
* ``drop_last=True`` drops the last ``N mod W`` entries of the permutation.

Within a rank, batches of ``batch_size`` consecutive samples are dealt round-robin to the
loader workers (batch ``b`` to worker ``b mod K``), which is the order in which
``torch.utils.data.DataLoader`` collects batches from iterable workers, so the rank sees its
samples in exactly the partition's order.

The position in an epoch is global: ``start`` counts the samples all ranks together consumed,
i.e. the first ``start`` entries of the (padded) epoch order. The rest of the epoch is dealt
strided over the ranks of the job that resumes, whatever its size, so a run resumed on another
number of ranks mid-epoch still sees every sample of the epoch exactly once. Position ``p``
always holds sample ``perm[p mod N]``, for any world size, which is what per-sample randomness
(flips, augmentations) is keyed on.
"""

from __future__ import annotations

import numpy as np


def samples_per_rank(num_samples: int, world_size: int, drop_last: bool = False) -> int:
    """Samples every rank reads per epoch: ``ceil(N/W)`` (padded) or ``floor(N/W)`` (dropped)."""
    _check(num_samples, world_size, 0)
    if drop_last:
        return num_samples // world_size
    return -(-num_samples // world_size)


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The global order of one epoch: a permutation of ``[0, N)`` (int64) from ``(seed, epoch)``."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64([int(seed), int(epoch)]))
    return rng.permutation(num_samples).astype(np.int64)


def rank_positions(
    num_samples: int, world_size: int, rank: int, *, start: int = 0, drop_last: bool = False
) -> np.ndarray:
    """Positions in the epoch's global order that rank ``rank`` reads, from ``start`` on.

    The ``N - start`` positions left are dealt strided: rank ``r`` reads ``start + r + W·j``.
    Every rank gets ``ceil((N - start)/W)`` of them (padding past ``N`` wraps around to the
    start of the permutation) or ``floor((N - start)/W)`` with ``drop_last``. From ``start=0``
    this is :func:`samples_per_rank` positions; resuming with the same ``W`` at a multiple of
    ``W`` continues each rank's own sequence exactly.

    Args:
        num_samples: N, records in the dataset.
        world_size: W, number of ranks now.
        rank: This rank, in ``[0, W)``.
        start: Samples all ranks together consumed in this epoch (any earlier world size).
        drop_last: Drop the tail instead of padding.

    Returns:
        int64 positions, shape ``(count,)``; position ``p`` holds sample ``perm[p mod N]``.
    """
    _check(num_samples, world_size, rank)
    count = samples_left(num_samples, world_size, start, drop_last)
    return start + rank + world_size * np.arange(count, dtype=np.int64)


def samples_left(num_samples: int, world_size: int, start: int, drop_last: bool = False) -> int:
    """Samples each rank still reads in an epoch whose first ``start`` positions are consumed."""
    _check(num_samples, world_size, 0)
    if start < 0:
        raise ValueError(f"epoch position {start} is negative")
    left = max(num_samples - start, 0)
    return left // world_size if drop_last else -(-left // world_size)


def rank_samples(
    num_samples: int,
    world_size: int,
    rank: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = False,
    start: int = 0,
) -> np.ndarray:
    """Global sample indices rank ``rank`` reads in ``epoch``, from global position ``start`` on.

    Args:
        num_samples: N, records in the dataset.
        world_size: W, number of ranks.
        rank: This rank, in ``[0, W)``.
        seed: Shared seed (the same on every rank).
        epoch: Epoch number; each epoch has its own permutation.
        shuffle: False keeps the dataset order (then strided across ranks).
        drop_last: Drop the tail instead of padding (see the module docstring).
        start: Samples all ranks consumed in this epoch so far.

    Returns:
        int64 array of the positions' samples (see :func:`rank_positions`).
    """
    positions = rank_positions(num_samples, world_size, rank, start=start, drop_last=drop_last)
    return epoch_permutation(num_samples, seed, epoch, shuffle)[positions % num_samples]


def worker_samples(
    samples: np.ndarray, num_workers: int, worker_id: int, batch_size: int
) -> np.ndarray:
    """The part of a rank's ``samples`` that loader worker ``worker_id`` reads.

    Batch ``b`` (``samples[b·B:(b+1)·B]``, the last possibly short) goes to worker
    ``b mod num_workers``. ``num_workers`` 0 (loading in the main process) counts as 1.
    """
    workers = max(num_workers, 1)
    if not 0 <= worker_id < workers:
        raise ValueError(f"worker id {worker_id} is outside [0, {workers})")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batch_of = np.arange(samples.size) // batch_size
    return samples[batch_of % workers == worker_id]


def partition(
    num_samples: int,
    *,
    world_size: int,
    rank: int,
    num_workers: int,
    worker_id: int,
    batch_size: int,
    seed: int,
    epoch: int,
    start: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples of one (rank, worker) in one epoch, resumed at global position ``start``.

    Combines :func:`rank_positions` and :func:`worker_samples`; see the module docstring.

    Returns:
        ``(indices, positions)``: int64 global sample indices in the order this worker reads
        them, and their positions in the epoch's global order (the key of per-sample
        randomness).
    """
    positions = worker_samples(
        rank_positions(num_samples, world_size, rank, start=start, drop_last=drop_last),
        num_workers,
        worker_id,
        batch_size,
    )
    perm = epoch_permutation(num_samples, seed, epoch, shuffle)
    return perm[positions % num_samples], positions


def _check(num_samples: int, world_size: int, rank: int) -> None:
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if num_samples < 1:
        raise ValueError(f"cannot partition an empty dataset ({num_samples} samples)")
