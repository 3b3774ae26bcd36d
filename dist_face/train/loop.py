"""The training loop: pulls batches, runs the step, calls hooks. Nothing else.

Logging, checkpoints and evaluation are hooks; the learning-rate schedule is stepped inside the
step. The loop keeps the position in the data (epoch, samples all ranks together consumed in
the epoch), so a checkpoint taken after any step resumes exactly there, on any world size.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from dist_face.heads.sharded.label_path import LabelPrefetch
    from dist_face.train.step import Batch, TrainStep

LoaderFactory = Callable[[int, int], Iterable["Batch"]]
"""``(epoch, consumed) -> iterable of (images, labels)``: the rest of that epoch for this rank."""


@dataclass
class TrainState:
    """Where the run is; saved in checkpoints."""

    step: int = 0
    """Optimizer steps done."""
    epoch: int = 0
    """Current epoch (0-based)."""
    consumed: int = 0
    """Samples all ranks together consumed in the current epoch (the global data position)."""
    best: dict[str, float] = field(default_factory=dict)
    """Best value so far of each evaluation metric."""


class Hook:
    """Base hook: every method is a no-op. ``trainer`` is the running :class:`Trainer`."""

    def before_train(self, trainer: Trainer) -> None:
        """Called once before the first step (after any resume)."""

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        """Called after every optimizer step with the step's device tensors."""

    def after_train(self, trainer: Trainer) -> None:
        """Called once after the last step."""

    def on_stop(self, trainer: Trainer) -> None:
        """Called once instead of :meth:`after_train` when the run stops early (a signal)."""


class Trainer:
    """Runs :class:`TrainStep` over the data until the plan's last step.

    Args:
        step_fn: one optimizer step over a list of micro-batches.
        loader_factory: the data of one epoch from a global position.
        steps_per_epoch: optimizer steps per epoch (identical on all ranks).
        total_steps: optimizer steps of the run.
        samples_per_step: samples this rank consumes per optimizer step (B · accumulation).
        grad_accum: micro-batches per step.
        hooks: called in order.
        state: the starting position (restored by resume).
        world_size: ranks consuming ``samples_per_step`` each per step.
        steps_left: ``consumed -> optimizer steps`` left in an epoch from that position; by
            default the rest of ``steps_per_epoch``. A run resumed on another world size
            mid-epoch has a different number of steps left (the loader knows how many).
        label_prefetch: receives the labels of every micro-batch pulled; the loop pulls
            step ``t + 1``'s micro-batches before it runs step ``t`` (within an epoch), so
            their label path runs beside step ``t`` (:mod:`dist_face.heads.sharded.label_path`).
            Closed when :meth:`fit` returns.

    :attr:`should_stop`, when set, is asked after every step's hooks; True (on every rank at
    the same step: see :class:`dist_face.train.signals.StopAgreement`) ends the run there,
    calling each hook's :meth:`Hook.on_stop` instead of :meth:`Hook.after_train`.
    """

    def __init__(
        self,
        *,
        step_fn: TrainStep,
        loader_factory: LoaderFactory,
        steps_per_epoch: int,
        total_steps: int,
        samples_per_step: int,
        grad_accum: int,
        hooks: Sequence[Hook],
        state: TrainState | None = None,
        world_size: int = 1,
        steps_left: Callable[[int], int] | None = None,
        label_prefetch: LabelPrefetch | None = None,
    ) -> None:
        self.step_fn = step_fn
        self.loader_factory = loader_factory
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps
        self.samples_per_step = samples_per_step
        self.grad_accum = grad_accum
        self.hooks = list(hooks)
        self.state = state or TrainState()
        self.global_samples_per_step = samples_per_step * world_size
        self.steps_left = steps_left or (
            lambda consumed: steps_per_epoch - consumed // self.global_samples_per_step
        )
        self.data_wait_s = 0.0
        """Host seconds spent waiting for batches since the start (read by the log hook)."""
        self.pause_s = 0.0
        """Seconds hooks spent outside training (evaluation, checkpoints): not throughput."""
        self.should_stop: Callable[[], bool] | None = None
        """Asked after every step: True stops the run at this step boundary."""
        self.stopped = False
        """True when :attr:`should_stop` ended the run before its last step."""
        self.stop_s = 0.0
        """Seconds the hooks' :meth:`Hook.on_stop` took (the checkpoint of a stopped run)."""
        self.label_prefetch = label_prefetch

    def fit(self) -> TrainState:
        """Train to ``total_steps`` and return the final state."""
        for hook in self.hooks:
            hook.before_train(self)
        state = self.state
        try:
            while state.step < self.total_steps and not self.stopped:
                batches = iter(self.loader_factory(state.epoch, state.consumed))
                try:
                    self._run_epoch(batches)
                finally:
                    # stops the loader's background threads now, not at interpreter exit
                    close = getattr(batches, "close", None)
                    if close is not None:
                        close()
        finally:  # a step pulled ahead and not run leaves the sampling stream untouched
            if self.label_prefetch is not None:
                self.label_prefetch.close()
        if self.stopped:
            start = time.perf_counter()
            for hook in self.hooks:
                hook.on_stop(self)
            self.stop_s = time.perf_counter() - start
            return state
        for hook in self.hooks:
            hook.after_train(self)
        return state

    def _run_epoch(self, batches: Iterator[Batch]) -> None:
        """Steps over ``batches`` until the epoch or the run ends; advances the state."""
        state = self.state
        steps = min(self.steps_left(state.consumed), self.total_steps - state.step)
        ahead = self._pull(batches) if steps > 0 else []
        for i in range(steps):
            micro = ahead
            # the next step's batches now: their labels are gathered while this step runs
            ahead = self._pull(batches) if i + 1 < steps else []
            metrics = self.step_fn(micro)
            state.step += 1
            state.consumed += self.global_samples_per_step
            for hook in self.hooks:
                hook.after_step(self, metrics)
            if state.step >= self.total_steps:
                return
            if self.should_stop is not None and self.should_stop():
                self.stopped = True
                return
        state.epoch += 1
        state.consumed = 0

    def _pull(self, batches: Iterator[Batch]) -> list[Batch]:
        """One step's micro-batches, their labels handed to the label path."""
        start = time.perf_counter()
        micro = [next(batches) for _ in range(self.grad_accum)]
        self.data_wait_s += time.perf_counter() - start
        if self.label_prefetch is not None:
            for _, labels in micro:
                self.label_prefetch.submit(labels)
        return micro
