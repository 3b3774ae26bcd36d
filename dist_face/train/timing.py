"""Time spent in each phase of the training step, measured without stalling the device.

On an accelerator every phase boundary records a timing event on the current stream; the
events are read back only when the log hook asks, after one synchronisation it makes anyway.
On the CPU the work is synchronous and the host clock is exact. Collectives issued through
:mod:`dist_face.dist.comm` while a step runs forward or backward (the head's all-gathers and
softmax all-reduces; DDP's bucket all-reduce does not go through it) are timed as their own
phase, ``head_comm``, and taken out of the phase they ran in, so the phases add up to the step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch

PHASES = ("forward", "head_comm", "backward", "optimizer")
"""Device phases of a step, in order; ``head_comm`` nests inside forward and backward."""
_COMM_PHASES = ("forward", "backward")
_KEEP = 32  # steps whose events stay pending at most; older ones have long completed


@dataclass
class _Step:
    marks: list[tuple[str, object]] = field(default_factory=list)
    """(phase starting here, clock token); the last token ends the step (phase "")."""
    comm: list[tuple[str, object, object]] = field(default_factory=list)
    """(phase it ran in, start token, end token) of each timed collective."""


class StepTimer:
    """Per-phase durations of optimizer steps, averaged between two :meth:`read` calls.

    Args:
        device: the training device; CUDA-like devices are timed with events, the CPU with
            ``time.perf_counter``.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._events = device.type != "cpu"
        self._pending: deque[_Step] = deque()
        self._sums = dict.fromkeys(PHASES, 0.0)
        self._steps = 0
        self._step: _Step | None = None
        self._phase = ""

    # --- recording (every step, no synchronisation) -------------------------------------
    def start(self, phase: str) -> None:
        """Begin ``phase`` (one of :data:`PHASES` but ``head_comm``), ending the previous one."""
        if self._step is None:
            self._step = _Step()
        self._phase = phase
        self._step.marks.append((phase, self._now()))

    def end_step(self) -> None:
        """Close the step's last phase and queue the step for :meth:`read`."""
        if self._step is None:
            return
        self._step.marks.append(("", self._now()))
        self._pending.append(self._step)
        self._step, self._phase = None, ""
        while len(self._pending) > _KEEP:  # bound the events held; these are long done
            self._fold(self._pending.popleft())

    def collective_start(self) -> object | None:
        """Token opening a collective span, or None outside forward/backward."""
        if self._step is None or self._phase not in _COMM_PHASES:
            return None
        return self._now()

    def collective_end(self, token: object | None) -> None:
        """Close the span :meth:`collective_start` opened."""
        if token is not None and self._step is not None:
            self._step.comm.append((self._phase, token, self._now()))

    # --- reading (log steps) -------------------------------------------------------------
    def read(self) -> dict[str, float]:
        """Mean seconds per step of every phase since the last read, and reset.

        Waits for the device to finish the last recorded step (on log steps the host reads
        the loss anyway, so this adds no synchronisation of its own).

        Returns:
            ``{"time/forward_s": ..., "time/head_comm_s": ..., "time/backward_s": ...,
            "time/optimizer_s": ...}``; empty if no step completed since the last read.
        """
        while self._pending:
            self._fold(self._pending.popleft())
        if not self._steps:
            return {}
        out = {f"time/{p}_s": s / self._steps for p, s in self._sums.items()}
        self._sums = dict.fromkeys(PHASES, 0.0)
        self._steps = 0
        return out

    def _fold(self, step: _Step) -> None:
        for (phase, start), (_, end) in zip(step.marks, step.marks[1:]):
            self._sums[phase] += self._elapsed(start, end)
        for phase, start, end in step.comm:
            spent = self._elapsed(start, end)
            self._sums[phase] -= spent
            self._sums["head_comm"] += spent
        self._steps += 1

    def _now(self) -> object:
        if not self._events:
            return time.perf_counter()
        event = torch.Event(device=self.device, enable_timing=True)
        event.record()
        return event

    def _elapsed(self, start: object, end: object) -> float:
        if not self._events:
            return end - start  # type: ignore[operator]
        end.synchronize()  # type: ignore[attr-defined]
        return start.elapsed_time(end) / 1000.0  # type: ignore[attr-defined]
