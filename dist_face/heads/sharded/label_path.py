"""The host label path of the sharded head, and running it one step ahead of the step.

The loaders deliver labels on the host. Each step the head needs the labels of the whole
global batch (``N = W·B``, gathered over a gloo group, since they are CPU tensors), their
range checked, and Partial FC's sample drawn from them (:class:`~dist_face.heads.sharded.sampling.
ClassSampler`). Done inside the step, on the main thread, this is a barrier across every host
process and a host computation on the critical path: a gloo all-gather is a ring of ``W − 1``
TCP hops (tens of µs each: milliseconds at W = 64, tens of them at W = 512) and the sample is
a top-k over the rank's ``C/W`` classes (tens of ms at 257k local classes).

:class:`LabelPrefetch` moves it off the critical path. The trainer pulls the micro-batches
of step ``t + 1`` from the loader before it runs step ``t`` (:class:`~dist_face.train.loop.
Trainer`) and hands their labels to :meth:`LabelPrefetch.submit`; a worker thread gathers
them over a group of its own (:func:`~dist_face.dist.comm.label_group`), checks them and
draws the sample while step ``t`` runs. Step ``t + 1``'s forward then takes the finished
:class:`HostLabels` (:meth:`LabelPrefetch.take`) instead of computing them.

The sample is the same as inline: the worker draws from the head's one stream, in the order
the steps take the samples; the stream's position of record stays the one before the first
sample not yet taken (:meth:`ClassSampler.state <dist_face.heads.sharded.sampling.ClassSampler.
state>`), so checkpoints, resumes (on any world size) and a run stopped with a sample waiting
all see the stream as the inline path leaves it.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.distributed import ProcessGroup

from dist_face.dist import comm
from dist_face.heads.sharded.sampling import ClassSampler, host_work

logger = logging.getLogger(__name__)

CLOSE_WAIT_S = 60.0
"""How long :meth:`LabelPrefetch.close` waits for a gather still running (a peer gone)."""


@dataclass(frozen=True)
class HostLabels:
    """The labels of one micro-batch as the head's loss needs them, all on the host.

    Attributes:
        mine: ``[B]`` int64, this rank's labels as gathered.
        gathered: ``[N = W·B]`` int64, the global batch's labels in rank order.
        index: ``[K]`` sorted local classes kept by Partial FC, or None (every class).
        local: ``[N]`` each row's target column among the kept classes, or ``-1`` (the class
            lives on another rank).
    """

    mine: torch.Tensor
    gathered: torch.Tensor
    index: torch.Tensor | None
    local: torch.Tensor


class LabelledHead(Protocol):
    """What the label path reads of the sharded head (``PartialFC`` is one).

    A protocol, so that the head can import this module without this module importing it.
    """

    num_classes: int
    class_start: int
    num_local: int
    check_labels: bool
    sampler: ClassSampler
    label_prefetch: LabelPrefetch | None


def check_label_range(gathered: torch.Tensor, batch: int, num_classes: int) -> None:
    """Raise on the first label outside ``[0, num_classes)`` (host labels; no device read).

    Every rank holds the same gathered labels, so every rank raises together.

    Raises:
        ValueError: naming the value, the rank and the row.
    """
    with host_work(gathered):
        bad = (gathered < 0) | (gathered >= num_classes)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"labels: value {int(gathered[i])} (rank {i // batch}, row {i % batch}) is "
                f"outside [0, {num_classes})"
            )


def host_label_path(
    head: LabelledHead,
    labels: torch.Tensor,
    group: ProcessGroup | None,
    ahead: bool = False,
) -> HostLabels:
    """Gather ``labels`` over ``group``, check their range, draw the head's sample.

    Args:
        head: the sharded head (its class slice, its sampler).
        labels: ``[B]`` integer labels on the host.
        group: a group serving CPU tensors over the head's ranks.
        ahead: run beside the step (a worker thread): the gather is not reported to the
            step's collective timer, and the sample is one drawn ahead
            (:meth:`~dist_face.heads.sharded.sampling.ClassSampler.select`).

    Returns:
        The micro-batch's :class:`HostLabels`.
    """
    mine = labels.to(torch.long)
    gathered = comm.all_gather(mine, group, timed=not ahead)
    if head.check_labels:
        check_label_range(gathered, mine.shape[0], head.num_classes)
    local = gathered - head.class_start
    local = torch.where((local >= 0) & (local < head.num_local), local, -1)
    index, local = head.sampler.select(local, ahead=ahead)
    return HostLabels(mine, gathered, index, local)


class LabelPrefetch:
    """Runs the head's label path for the micro-batches ahead on one worker thread.

    Every rank must submit the same number of micro-batches in the same order (the trainer
    does: the same steps on every rank), and the head takes them in that order.

    Args:
        head: the sharded head; :meth:`attach` makes its forward take from here.
        group: a gloo group used by this worker only (:func:`~dist_face.dist.comm.
            label_group`); None without a process group.
    """

    def __init__(self, head: LabelledHead, group: ProcessGroup | None) -> None:
        self.head, self.group = head, group
        self._pending: list[tuple[torch.Tensor, Future[HostLabels]]] = []
        self._jobs: queue.SimpleQueue[tuple[torch.Tensor, Future[HostLabels]] | None]
        self._jobs = queue.SimpleQueue()
        # a daemon: a peer that vanished must not keep this process alive at exit
        self._thread = threading.Thread(target=self._work, name="label-path", daemon=True)
        self._thread.start()

    def attach(self) -> LabelPrefetch:
        """Make the head's forward take its labels from here (returns ``self``)."""
        self.head.label_prefetch = self
        return self

    def submit(self, labels: torch.Tensor) -> None:
        """Start the label path of a micro-batch the head will get later.

        Args:
            labels: ``[B]`` the loader's labels (host); refused labels (``-1``) are passed on
                as the step passes them, replaced by 0
                (:func:`~dist_face.train.step.screen_refused`). Labels on a device are left
                to the forward.
        """
        if labels.device.type != "cpu":
            return
        future: Future[HostLabels] = Future()
        labels = labels.clamp(min=0)
        self._pending.append((labels, future))
        self._jobs.put((labels, future))

    def take(self, labels: torch.Tensor) -> HostLabels | None:
        """The prepared labels of the oldest submitted micro-batch, or None when none waits.

        Raises:
            ValueError: a label out of range (raised by the worker, on every rank).
            RuntimeError: ``labels`` are not the ones submitted next (the order broke).
        """
        if not self._pending:
            return None
        out = self._pending.pop(0)[1].result()
        self.head.sampler.used()
        with host_work(labels):
            if not torch.equal(out.mine, labels.to(torch.long)):
                raise RuntimeError("label path: the head got other labels than were prepared")
        return out

    @property
    def waiting(self) -> int:
        """Micro-batches submitted and not yet taken."""
        return len(self._pending)

    def redraw(self, state: torch.Tensor) -> None:
        """Return the sampling stream to ``state`` and prepare the waiting micro-batches again.

        A skipped step puts the stream back to before its own draw
        (:class:`~dist_face.train.snapshot.HostSnapshot`): the samples already drawn ahead for
        the next steps came from the stream after that draw, so they are dropped and drawn
        again, in order, from ``state``, as a run that never saw the skipped batch draws them.
        Every rank skips together, so every rank gathers again together.

        Args:
            state: the stream's state to return to (:meth:`ClassSampler.state
                <dist_face.heads.sharded.sampling.ClassSampler.state>` before the skipped step).
        """
        waiting = [labels for labels, _ in self._pending]
        self._drain()
        self.head.sampler.load_state(state)
        for labels in waiting:
            self.submit(labels)

    def _drain(self) -> None:
        """Wait for the submitted micro-batches, drop them and the samples drawn for them."""
        for _, future in self._pending:
            try:
                future.result(timeout=CLOSE_WAIT_S)
            except FutureTimeout:
                logger.warning("label path: a gather still runs (a peer is gone)")
                break
            except Exception:  # reported by take() when the step uses it; dropped here
                pass
        self._pending.clear()
        self.head.sampler.rewind()

    def close(self) -> None:
        """Stop the worker; drop the samples not taken (the stream returns to before them)."""
        self._jobs.put(None)
        self._drain()
        if self.head.label_prefetch is self:
            self.head.label_prefetch = None

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            labels, future = job
            try:
                future.set_result(host_label_path(self.head, labels, self.group, ahead=True))
            except BaseException as exc:  # raised on the main thread by take()
                future.set_exception(exc)
