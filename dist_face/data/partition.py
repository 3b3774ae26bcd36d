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
samples in exactly the partition's order. Resuming from ``offset`` (samples this rank already
consumed in the epoch) deals the remaining samples anew, starting at worker 0.
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


def rank_samples(
    num_samples: int,
    world_size: int,
    rank: int,
    *,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    drop_last: bool = False,
    offset: int = 0,
) -> np.ndarray:
    """Global sample indices rank ``rank`` reads in ``epoch``, from position ``offset`` on.

    Args:
        num_samples: N, records in the dataset.
        world_size: W, number of ranks.
        rank: This rank, in ``[0, W)``.
        seed: Shared seed (the same on every rank).
        epoch: Epoch number; each epoch has its own permutation.
        shuffle: False keeps the dataset order (then strided across ranks).
        drop_last: Drop the tail instead of padding (see the module docstring).
        offset: Samples this rank already consumed in this epoch.

    Returns:
        int64 array of shape ``(samples_per_rank − offset,)``.
    """
    _check(num_samples, world_size, rank)
    per_rank = samples_per_rank(num_samples, world_size, drop_last)
    if not 0 <= offset <= per_rank:
        raise ValueError(f"resume offset {offset} is outside [0, {per_rank}] samples per rank")
    perm = epoch_permutation(num_samples, seed, epoch, shuffle)
    total = per_rank * world_size
    if total > num_samples:  # pad by wrapping around the permutation
        perm = np.concatenate([perm, np.resize(perm, total - num_samples)])
    return perm[:total][rank::world_size][offset:]


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
    offset: int = 0,
    shuffle: bool = True,
    drop_last: bool = False,
) -> np.ndarray:
    """Global sample indices for one (rank, worker) in one epoch, resumed at ``offset``.

    Combines :func:`rank_samples` and :func:`worker_samples`; see the module docstring.

    Returns:
        int64 array of global sample indices, in the order this worker reads them.
    """
    samples = rank_samples(
        num_samples,
        world_size,
        rank,
        seed=seed,
        epoch=epoch,
        shuffle=shuffle,
        drop_last=drop_last,
        offset=offset,
    )
    return worker_samples(samples, num_workers, worker_id, batch_size)


def _check(num_samples: int, world_size: int, rank: int) -> None:
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside [0, {world_size})")
    if num_samples < 1:
        raise ValueError(f"cannot partition an empty dataset ({num_samples} samples)")
