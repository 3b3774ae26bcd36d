"""Class-center initialisation independent of the world size, and Partial FC class sampling."""

from __future__ import annotations

import contextlib
import math
import threading
from collections import deque
from collections.abc import Iterator

import torch

from dist_face.heads.sharded.staging import Staging

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
    """Class budget per rank and step, ``⌈r · num_local⌉`` (the positives count towards it)."""
    # r·C rounds up, as Partial FC does; the epsilon keeps 0.05·2000 from becoming 101
    return min(num_local, math.ceil(sample_rate * num_local - 1e-9))


def sample_size(num_local: int, budget: int, positives: int) -> int:
    """Classes kept per step: ``max(budget, positives)``, at most ``num_local``.

    ``positives`` is the number of distinct classes of this rank in the gathered batch (the
    exact rule, labels on the host), or a bound on it (``min(N, num_local)`` for ``N``
    gathered rows, when the labels live on the device only and counting them would make the
    host wait).
    """
    return min(num_local, max(budget, positives))


_host = threading.local()


@contextlib.contextmanager
def host_work(*tensors: torch.Tensor) -> Iterator[None]:
    """Declare that the enclosed reads of tensor values act on host memory only.

    Reading a CPU tensor's values costs the host nothing on any machine; the step's
    synchronisation counters (which on a CPU-only run cannot tell host from device tensors)
    skip what runs inside. ``tensors`` are checked to be on the CPU, so the declaration
    cannot hide a read of device memory.
    """
    for t in tensors:
        if t.device.type != "cpu":
            raise RuntimeError(f"host_work: a tensor on {t.device} would make the host wait")
    depth = getattr(_host, "depth", 0)
    _host.depth = depth + 1
    try:
        yield
    finally:
        _host.depth = depth


def in_host_work() -> bool:
    """Whether this thread is inside :func:`host_work`."""
    return getattr(_host, "depth", 0) > 0


@torch.no_grad()
def sample_classes(
    local_labels: torch.Tensor,
    num_local: int,
    budget: int,
    generator: torch.Generator,
    staging: Staging | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep every positive class plus uniform negatives: a top-k of random scores.

    Every class gets a uniform score in ``[0, 1)`` (drawn on the host, so the sample is the
    same on every device type); positives get 2, above any draw; the :func:`sample_size`
    highest are kept. On the host (CPU labels) the size is Partial FC's rule, ``max(budget,
    positives of this rank)``, counted from the labels the host already holds. Labels on
    another device are never read: the size is then the bound ``max(budget, min(N,
    num_local))``, which fixes it by the shapes alone. Either way no ``unique`` and no boolean
    indexing run on the device; labels are remapped to positions in the sorted kept set by a
    binary search.

    Args:
        local_labels: ``[N]`` int64, local class index of each row or ``-1`` (not on this rank).
        num_local: classes held by this rank.
        budget: classes to keep at least (``⌈r · num_local⌉``).
        generator: CPU generator.
        staging: pinned buffers for the scores' copy when the labels are on a CUDA device.

    Returns:
        ``index`` ``[K]`` sorted local class ids kept, and ``labels`` ``[N]`` remapped to
        positions in ``index`` (``-1`` stays ``-1``), on ``local_labels``' device.
    """
    device = local_labels.device
    staging = staging or Staging()
    owned = local_labels >= 0
    # one spare slot at the end absorbs the rows whose class lives on another rank
    score = torch.rand(num_local + 1, generator=generator)
    if device.type == "cpu":
        score.index_fill_(0, torch.where(owned, local_labels, num_local), 2.0)
        with host_work(score):
            positives = int((score[:num_local] == 2.0).sum())
    else:
        score = staging.to_device(score, device)
        score.index_fill_(0, torch.where(owned, local_labels, num_local), 2.0)
        positives = local_labels.shape[0]
    k = sample_size(num_local, budget, positives)
    index = torch.topk(score[:num_local], k, sorted=False).indices.sort().values
    labels = torch.where(owned, torch.searchsorted(index, local_labels), -1)
    return index, labels


class ClassSampler:
    """Partial FC sampling state of one rank: its budget and its random stream.

    The stream is a CPU generator seeded from ``(seed, rank)``; it travels in checkpoints
    (:meth:`state`) so a resumed run on the same ranks samples the same classes, and restarts
    deterministically from ``(seed, new rank, step)`` after a re-split (:meth:`reseed`).

    Samples may be drawn ahead of the step that uses them (``ahead=True``, on the label
    path's worker thread: :mod:`dist_face.heads.sharded.label_path`). The stream's position of
    record is then the one before the first draw not yet used: :meth:`state` returns it, so a
    checkpoint taken while a sample waits resumes exactly where the run stood, and
    :meth:`rewind` returns the stream there when the waiting samples are dropped.

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
        self.staging = Staging()
        self._lock = threading.Lock()  # the worker thread draws, the main thread saves
        self._ahead: deque[torch.Tensor] = deque()  # state before each draw not yet used

    @property
    def active(self) -> bool:
        """Whether classes are sampled (``sample_rate < 1``)."""
        return self.sample_rate < 1.0

    def select(
        self, local_labels: torch.Tensor, ahead: bool = False
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Kept rows and remapped labels (see :func:`sample_classes`); all rows when inactive.

        Args:
            local_labels: ``[N]`` local class of each gathered row, or ``-1``.
            ahead: the sample is for a later step: :meth:`used` must be called when that step
                takes it (until then :meth:`state` is the stream before this draw).

        Returns:
            ``(index, labels)``: ``index`` ``[K]`` sorted local rows, or None for all of them;
            ``labels`` ``[N]`` column of each row's target among the kept ones, or ``-1``.
        """
        if not self.active:
            return None, local_labels
        with self._lock:
            if ahead:
                self._ahead.append(self.generator.get_state())
            return sample_classes(
                local_labels, self.num_local, self.budget, self.generator, self.staging
            )

    def used(self) -> None:
        """The oldest sample drawn ahead is now the step's (its draw becomes of record)."""
        if self.active:
            with self._lock:
                self._ahead.popleft()

    def rewind(self) -> None:
        """Drop the samples drawn ahead: the stream returns to before the first of them."""
        with self._lock:
            if self._ahead:
                self.generator.set_state(self._ahead[0])
            self._ahead.clear()

    def _settled(self) -> None:
        if self._ahead:
            raise RuntimeError("the sampling stream moved while samples drawn ahead wait")

    def reseed(self, step: int) -> None:
        """Restart the stream from ``(seed, rank, step)`` (a resume on another world size)."""
        with self._lock:
            self._settled()
            self.generator.manual_seed(sampler_seed(self.seed, self.rank, step))

    def state(self) -> torch.Tensor:
        """The generator state of record (a ``uint8`` tensor): before any draw not yet used."""
        with self._lock:
            return self._ahead[0].clone() if self._ahead else self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        """Restore :meth:`state`."""
        with self._lock:
            self._settled()
            self.generator.set_state(state)
