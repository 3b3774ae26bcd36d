"""Numbers derived from a config and the job's size, computed once and never written back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dist_face.config import RunConfig
from dist_face.dist import Topology


@dataclass(frozen=True)
class Start:
    """Where a run starts: step 0 for a fresh run, a checkpoint's position for a resumed one.

    Attributes:
        step: optimizer steps already done.
        epoch: the epoch the position is in (0-based, as the progress line counts).
        consumed: samples all ranks together consumed of that epoch (the global data position,
            independent of the world size that consumed them).
        world_size: ranks of the run that wrote the checkpoint (0 for a fresh run).
    """

    step: int = 0
    epoch: int = 0
    consumed: int = 0
    world_size: int = 0

    @property
    def resumed(self) -> bool:
        """Whether the run continues from a checkpoint."""
        return self.world_size > 0


@dataclass(frozen=True)
class RunPlan:
    """The immutable schedule of a run.

    A resumed run keeps its step count and data position and plans the steps that finish
    ``train.epochs`` from there under the current world size: the rest of the current epoch
    (what the loader has left from the position), then whole epochs of ``steps_per_epoch``.

    Attributes:
        run_dir: where the config, checkpoints, metrics and reports go.
        num_classes: identities in the training set (C).
        world_size: ranks (W).
        global_batch: samples per optimizer step over all ranks (B · W · accumulation).
        steps_per_epoch: optimizer steps per whole epoch (every rank runs the same number).
        total_steps: the step number the run ends at (``train.max_steps`` caps it).
        warmup_steps: optimizer steps of linear warm-up.
        epochs: ``train.epochs``: the run ends in epoch ``epochs - 1`` (0-based).
        start: where the run starts.
        first_epoch_steps: steps left in the start epoch from the start position.
    """

    run_dir: Path
    num_classes: int
    world_size: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    epochs: int = 1
    start: Start = Start()
    first_epoch_steps: int = 0

    @classmethod
    def create(
        cls,
        cfg: RunConfig,
        topology: Topology,
        num_classes: int,
        batches_per_epoch: int,
        start: Start | None = None,
        batches_left: int | None = None,
    ) -> RunPlan:
        """Derive the plan.

        Args:
            cfg: the resolved config.
            topology: the job's ranks.
            num_classes: identities (from the shard set's metadata or the config).
            batches_per_epoch: micro-batches each rank's loader yields per epoch.
            start: the resumed position (default: a fresh start).
            batches_left: micro-batches each rank's loader yields in the start epoch from
                ``start.consumed`` (default: a whole epoch).
        """
        if batches_per_epoch < cfg.train.grad_accum:
            raise ValueError(
                f"an epoch has {batches_per_epoch} batches per rank, fewer than "
                f"train.grad_accum={cfg.train.grad_accum}: use a smaller data.batch_size"
            )
        start = start or Start()
        steps_per_epoch = batches_per_epoch // cfg.train.grad_accum
        first = steps_per_epoch if batches_left is None else batches_left // cfg.train.grad_accum
        epochs_after = max(cfg.train.epochs - start.epoch - 1, 0)
        left = first + epochs_after * steps_per_epoch if start.epoch < cfg.train.epochs else 0
        total = start.step + left
        if cfg.train.max_steps:
            total = max(min(total, cfg.train.max_steps), start.step)
        return cls(
            run_dir=Path(cfg.output_root) / cfg.name,
            num_classes=num_classes,
            world_size=topology.world_size,
            global_batch=cfg.data.batch_size * topology.world_size * cfg.train.grad_accum,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=math.floor(cfg.optim.warmup_epochs * steps_per_epoch),
            epochs=cfg.train.epochs,
            start=start,
            first_epoch_steps=first if start.epoch < cfg.train.epochs else 0,
        )

    @property
    def steps_left(self) -> int:
        """Optimizer steps this run will take."""
        return self.total_steps - self.start.step

    def describe(self, name: str) -> str:
        """The one-line summary the trainer logs before the first step: what the run will do."""
        head = (
            f"run {name}: {_count(self.world_size, 'rank')}, global batch {self.global_batch}, "
            f"{self.steps_per_epoch} steps per epoch, train.epochs={self.epochs} "
            "(epochs count from 0)"
        )
        end = f"run dir {self.run_dir}"
        if not self.start.resumed:
            return f"{head}: {self.total_steps} steps; {end}"
        s = self.start
        where = (
            f"resumed at step {s.step} in epoch {s.epoch} ({s.consumed} samples of it consumed "
            f"on {_count(s.world_size, 'rank')})"
        )
        if self.steps_left == 0:
            return f"{head}; {where}: nothing left to do, the run ends at step {s.step}; {end}"
        more = max(self.epochs - s.epoch - 1, 0)
        return (
            f"{head}; {where}: {_count(self.steps_left, 'step')} left "
            f"({self.first_epoch_steps} to finish epoch {s.epoch}, then "
            f"{_count(more, 'more epoch')} of {self.steps_per_epoch}"
            f"{', cut by train.max_steps' if self._capped else ''}), "
            f"ending at step {self.total_steps}; {end}"
        )

    @property
    def _capped(self) -> bool:
        full = self.first_epoch_steps + max(self.epochs - self.start.epoch - 1, 0) * (
            self.steps_per_epoch
        )
        return self.steps_left < full


def _count(n: int, noun: str) -> str:
    """``1 rank``, ``2 ranks``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
