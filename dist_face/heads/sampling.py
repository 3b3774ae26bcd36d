"""Class-center initialisation independent of the world size, and Partial FC class sampling."""

from __future__ import annotations

import torch

_INIT_BLOCK = 4096  # rows drawn per generator; a row's value depends on (seed, class id) only


def init_class_centers(
    start: int,
    end: int,
    dim: int,
    seed: int,
    std: float = 0.01,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Initial centers ``[end - start, D]`` (``N(0, std²)``, ``dtype``) of ``[start, end)``.

    Classes are drawn in blocks of 4096 from a generator seeded by ``(seed, block)``, so the
    value of class ``j`` does not depend on how classes are split over ranks: a run on one
    device and a run on W ranks start from the same matrix, without any rank materialising it.
    """
    out = torch.empty((end - start, dim), dtype=dtype)  # drawn in float32, a block at a time
    block = start // _INIT_BLOCK
    while block * _INIT_BLOCK < end:
        lo, hi = block * _INIT_BLOCK, (block + 1) * _INIT_BLOCK
        gen = torch.Generator().manual_seed((seed * 1_000_003 + block) % (2**63))
        rows = torch.randn((_INIT_BLOCK, dim), generator=gen) * std
        a, b = max(lo, start), min(hi, end)
        out[a - start : b - start] = rows[a - lo : b - lo]
        block += 1
    return out


def sampler_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank ``rank``'s sampling generator: distinct per rank, fixed per run.

    ``step`` > 0 restarts the stream at a resume on another world size (a new rank's state
    must not depend on which old rank's file it would otherwise have read).
    """
    return (seed * 1_000_003 + 7919 * (rank + 1) + 104_729 * step) % (2**63)


def num_sampled(num_local: int, sample_rate: float) -> int:
    """Class budget per rank and step, ``⌊r · num_local⌋`` (the positives count towards it)."""
    return int(sample_rate * num_local)


def sample_size(num_local: int, budget: int, rows: int) -> int:
    """Classes kept per step: the budget, raised to ``min(rows, num_local)`` when below it.

    ``rows`` gathered labels hold at most ``min(rows, num_local)`` distinct positives of this
    rank, so every positive fits in a sample of this size, whatever the batch. The size
    depends on shapes only, never on label values: no host synchronisation.
    """
    return min(num_local, max(budget, rows))


@torch.no_grad()
def sample_classes(
    local_labels: torch.Tensor, num_local: int, budget: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep every positive class plus uniform negatives: a fixed-size top-k of random scores.

    Every class gets a uniform score in ``[0, 1)``; positives get 2, above any draw; the
    :func:`sample_size` highest are kept. The count is fixed by the shapes, so nothing is read
    back to the host (no ``unique``, no boolean indexing); labels are remapped to positions in
    the sorted kept set by a binary search.

    Args:
        local_labels: ``[N]`` int64, local class index of each row or ``-1`` (not on this rank).
        num_local: classes held by this rank.
        budget: classes to keep (``⌊r · num_local⌋``); raised to ``min(N, num_local)`` if
            below it, so that every positive fits.
        generator: CPU generator (the draw is identical on every device type).

    Returns:
        ``index`` ``[K]`` sorted local class ids kept (``K = sample_size(num_local, budget,
        N)``), and ``labels`` ``[N]`` remapped to positions in ``index`` (``-1`` stays ``-1``).
    """
    device = local_labels.device
    k = sample_size(num_local, budget, local_labels.shape[0])
    owned = local_labels >= 0
    # one spare slot at the end absorbs the rows whose class lives on another rank
    score = _to_device(torch.rand(num_local + 1, generator=generator), device)
    score.index_fill_(0, torch.where(owned, local_labels, num_local), 2.0)
    index = torch.topk(score[:num_local], k, sorted=False).indices.sort().values
    labels = torch.where(owned, torch.searchsorted(index, local_labels), -1)
    return index, labels


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without blocking the host (pinned, non-blocking)."""
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()  # a pageable copy would wait for the device's queue to drain
    return t.to(device, non_blocking=True)


class ClassSampler:
    """Partial FC sampling state of one rank: its budget and its random stream.

    The stream is a CPU generator seeded from ``(seed, rank)``; it travels in checkpoints
    (:meth:`state`) so a resumed run on the same ranks samples the same classes, and restarts
    deterministically from ``(seed, new rank, step)`` after a re-split (:meth:`reseed`).

    Args:
        num_local: classes held by this rank.
        sample_rate: r in ``[0, 1]``; 1 keeps every class (no sampling).
        seed: the run's seed.
        rank: this rank in the class group.
    """

    def __init__(self, num_local: int, sample_rate: float, seed: int, rank: int) -> None:
        self.num_local, self.sample_rate = num_local, sample_rate
        self.budget = num_sampled(num_local, sample_rate)
        self.seed, self.rank = seed, rank
        self.generator = torch.Generator().manual_seed(sampler_seed(seed, rank))

    @property
    def active(self) -> bool:
        """Whether classes are sampled (``sample_rate < 1``)."""
        return self.sample_rate < 1.0

    def select(self, local_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Kept rows and remapped labels (see :func:`sample_classes`); all rows when inactive.

        Returns:
            ``(index, labels)``: ``index`` ``[K]`` sorted local rows, or None for all of them;
            ``labels`` ``[N]`` column of each row's target among the kept ones, or ``-1``.
        """
        if not self.active:
            return None, local_labels
        return sample_classes(local_labels, self.num_local, self.budget, self.generator)

    def reseed(self, step: int) -> None:
        """Restart the stream from ``(seed, rank, step)`` (a resume on another world size)."""
        self.generator.manual_seed(sampler_seed(self.seed, self.rank, step))

    def state(self) -> torch.Tensor:
        """The generator state (a ``uint8`` tensor)."""
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        """Restore :meth:`state`."""
        self.generator.set_state(state)
