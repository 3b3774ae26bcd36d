"""Sample partition across ranks and workers: coverage, equal counts, determinism, resume."""

from __future__ import annotations

import numpy as np
import pytest

from dist_face.data.loading.partition import (
    epoch_permutation,
    partition,
    rank_samples,
    samples_per_rank,
    worker_samples,
)


def dataloader_order(num_samples: int, world: int, rank: int, workers: int, batch: int, **kw):
    """What a DataLoader collecting batches round-robin from its workers would yield."""
    per_worker = [
        partition(num_samples, world_size=world, rank=rank, num_workers=workers,
                  worker_id=w, batch_size=batch, **kw)[0]
        for w in range(max(workers, 1))
    ]  # fmt: skip
    batches = [
        np.array_split(p, np.arange(batch, p.size, batch)) if p.size else [] for p in per_worker
    ]
    out = []
    for b in range(max(len(x) for x in batches)):
        for x in batches:
            if b < len(x):
                out.append(x[b])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


@pytest.mark.parametrize("num_samples", [1, 7, 100, 101, 1003])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_cover_the_epoch_with_equal_counts(num_samples, world, drop_last) -> None:
    per_rank = samples_per_rank(num_samples, world, drop_last)
    parts = [
        rank_samples(num_samples, world, r, seed=3, epoch=1, drop_last=drop_last)
        for r in range(world)
    ]
    assert all(p.size == per_rank for p in parts)
    everything = np.concatenate(parts)
    if drop_last:
        assert per_rank == num_samples // world
        assert np.unique(everything).size == everything.size  # nothing seen twice
    else:
        assert per_rank == -(-num_samples // world)
        assert set(everything.tolist()) == set(range(num_samples))  # everything seen
        assert everything.size - num_samples < world  # padding is less than one per rank


def test_epochs_differ_and_are_deterministic() -> None:
    a = epoch_permutation(1000, seed=0, epoch=0)
    assert np.array_equal(a, epoch_permutation(1000, seed=0, epoch=0))
    assert not np.array_equal(a, epoch_permutation(1000, seed=0, epoch=1))
    assert not np.array_equal(a, epoch_permutation(1000, seed=1, epoch=0))
    assert np.array_equal(np.sort(a), np.arange(1000))
    assert np.array_equal(epoch_permutation(5, 0, 0, shuffle=False), np.arange(5))


@pytest.mark.parametrize("workers", [0, 1, 3])
@pytest.mark.parametrize("batch", [1, 4, 7])
def test_workers_reassemble_the_rank_order(workers: int, batch: int) -> None:
    full = rank_samples(103, 2, 1, seed=5, epoch=2)
    got = dataloader_order(103, 2, 1, workers, batch, seed=5, epoch=2)
    assert np.array_equal(got, full)


@pytest.mark.parametrize("offset", [0, 1, 13, 16, 51, 52])
def test_resume_yields_exactly_the_unseen_samples(offset: int) -> None:
    full = rank_samples(103, 2, 0, seed=9, epoch=4)
    assert full.size == 52
    # the position is global: both ranks consumed `offset` samples each
    resumed = dataloader_order(103, 2, 0, 3, 4, seed=9, epoch=4, start=2 * offset)
    assert np.array_equal(resumed, full[offset:])
    assert np.array_equal(np.concatenate([full[:offset], resumed]), full)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="epoch position -1 is negative"):
        rank_samples(103, 2, 0, seed=0, epoch=0, start=-1)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        rank_samples(10, 2, 2, seed=0, epoch=0)
    with pytest.raises(ValueError, match="worker id 3"):
        worker_samples(np.arange(4), 3, 3, 2)
    with pytest.raises(ValueError, match="empty dataset"):
        samples_per_rank(0, 2)


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2), (4, 1), (1, 5)])
@pytest.mark.parametrize("steps", [1, 3, 6])
def test_resize_mid_epoch_sees_every_sample_exactly_once(before, after, steps) -> None:
    n, batch = 120, 4
    seen = np.concatenate(
        [rank_samples(n, before, r, seed=2, epoch=1)[: steps * batch] for r in range(before)]
    )
    start = steps * batch * before  # the global position saved in the checkpoint
    rest = [rank_samples(n, after, r, seed=2, epoch=1, start=start) for r in range(after)]
    assert len({p.size for p in rest}) == 1  # equal counts after the resize too
    everything = np.concatenate([seen, *rest])
    if (n - start) % after == 0:
        assert np.array_equal(np.sort(everything), np.arange(n))  # each exactly once
    else:  # padded: every sample, and fewer than `after` repeats
        assert set(everything.tolist()) == set(range(n)) and everything.size - n < after
