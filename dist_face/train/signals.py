"""Stop a run at a step boundary on SIGTERM or SIGUSR1, with a checkpoint, on every rank.

A scheduler ends a job with a signal and a grace period: Kubernetes and SLURM preemption send
SIGTERM, SLURM's ``--signal=USR1@<seconds>`` warns ahead of the time limit. torchrun forwards
both to every worker when started with ``--signals-to-handle`` including SIGUSR1 (the
launchers do; SIGTERM is forwarded by default).

:class:`StopSignals` only records the first signal (a Python signal handler must not do more).
:class:`StopAgreement` is asked at every step boundary whether the run should stop. Ranks do not
receive the signal at the same step, so they agree over the control group (gloo, CPU tensors:
no device synchronisation): at each boundary a rank starts an asynchronous MAX all-reduce of
the signal it has seen (0 for none) and reads the one it started at the previous boundary.
Every rank therefore reads the same value at the same step and all stop together, one step
after the first rank saw the signal. The trainer then writes a checkpoint (atomic: see
:mod:`dist_face.checkpoint.manager`) and the entry point exits with :data:`EXIT_PREEMPTED`.

Further signals during the save are counted and ignored: the save goes on. A launcher that
cannot wait any longer sends SIGKILL; the save being atomic, the previous checkpoint stays
the newest complete one.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from types import FrameType

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup, ReduceOp

from dist_face.dist import comm

EXIT_PREEMPTED = 75
"""Exit code of a rank that stopped on a signal after writing its checkpoint (``EX_TEMPFAIL``:
the run is incomplete and continues with ``--resume=auto``)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopSignals:
    """Records the first of ``signals`` this process receives (handlers on the main thread).

    torchrun signals the rank's whole process group, DataLoader workers included, and a torch
    DataLoader worker dies on SIGTERM, failing the rank at its next batch. Processes forked
    while the handlers are installed are therefore born with these signals blocked: the rank
    alone handles them, and its workers keep delivering batches until it closes them.
    """

    def __init__(self, signals: Iterable[signal.Signals] = STOP_SIGNALS) -> None:
        """Nothing is installed before :meth:`install`."""
        self.signals = tuple(signals)
        self.received: int = 0
        """Number of the first signal received (0: none yet)."""
        self.ignored = 0
        """Signals received after the first (ignored)."""
        self._pid = os.getpid()
        self._previous: dict[signal.Signals, object] = {}

    def install(self) -> bool:
        """Install the handlers; False (nothing installed) off the main thread."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._pid = os.getpid()
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        _fork_blocked.update(self.signals)
        _block_in_forked_children()
        return True

    def uninstall(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        _fork_blocked.difference_update(self._previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:  # a forked loader worker: its rank handles the stop
            return
        if self.received:
            self.ignored += 1
        else:
            self.received = signum


_fork_blocked: set[signal.Signals] = set()
"""Signals a forked child starts with blocked (the installed :class:`StopSignals`)."""
_at_fork_registered = False


def _block_in_forked_children() -> None:
    """Fork with :data:`_fork_blocked` blocked: the child keeps the mask, the parent restores it.

    A signal arriving during the fork stays pending in the parent and is handled right after.
    """
    global _at_fork_registered
    if _at_fork_registered:
        return
    saved: list[set[signal.Signals]] = []

    def before() -> None:
        saved.append(signal.pthread_sigmask(signal.SIG_BLOCK, _fork_blocked))

    def after_in_parent() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, saved.pop())

    os.register_at_fork(before=before, after_in_parent=after_in_parent)
    _at_fork_registered = True


class StopAgreement:
    """Whether to stop, asked at every step boundary: the same answer on every rank.

    True on every rank at the same step once any rank received a stop signal.

    Args:
        signals: this rank's recorded signals.
        group: the control group (serves CPU tensors); None is the default group or no group.
    """

    def __init__(self, signals: StopSignals, group: ProcessGroup | None) -> None:
        """Nothing is communicated before the first call."""
        self.signals, self.group = signals, group
        self.signal = 0
        """The agreed signal's number once the ranks agreed to stop (0 before)."""
        self._flag = torch.zeros(1, dtype=torch.int32)
        self._pending: dist.Work | None = None

    def __call__(self) -> bool:
        """Whether every rank stops now (reads the previous boundary's all-reduce)."""
        if not comm.is_active(self.group):  # one process: nothing to agree on
            self.signal = self.signals.received
            return bool(self.signal)
        if self._pending is not None:
            self._pending.wait()
            self._pending = None
            if int(self._flag):
                self.signal = int(self._flag)
                return True
        self._flag.fill_(self.signals.received)  # one buffer for the run: no per-step allocation
        self._pending = dist.all_reduce(self._flag, ReduceOp.MAX, group=self.group, async_op=True)
        return False

    def requested_here(self) -> int:
        """The stop signal this rank received (0: none), without asking the other ranks.

        Work that runs between step boundaries (evaluation) reads it to give way early; the
        run itself stops at the next boundaries' agreement.
        """
        return self.signals.received

    def close(self) -> None:
        """Wait for the all-reduce in flight (before the process group goes)."""
        if self._pending is not None:
            self._pending.wait()
            self._pending = None

    @property
    def name(self) -> str:
        """The agreed signal's name (``SIGTERM``), empty before an agreement."""
        return signal.Signals(self.signal).name if self.signal else ""
