"""Numbers derived from a config and the job's size, computed once and never written back."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dist_face.config import RunConfig
from dist_face.dist import Topology


@dataclass(frozen=True)
class RunPlan:
    """The immutable schedule of a run.

    Attributes:
        run_dir: where the config, checkpoints, metrics and reports go.
        num_classes: identities in the training set (C).
        world_size: ranks (W).
        global_batch: samples per optimizer step over all ranks (B · W · accumulation).
        steps_per_epoch: optimizer steps per epoch (every rank runs the same number).
        total_steps: optimizer steps of the whole run.
        warmup_steps: optimizer steps of linear warm-up.
    """

    run_dir: Path
    num_classes: int
    world_size: int
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def create(
        cls, cfg: RunConfig, topology: Topology, num_classes: int, batches_per_epoch: int
    ) -> RunPlan:
        """Derive the plan.

        Args:
            cfg: the resolved config.
            topology: the job's ranks.
            num_classes: identities (from the shard set's metadata or the config).
            batches_per_epoch: micro-batches each rank's loader yields per epoch.
        """
        if batches_per_epoch < cfg.train.grad_accum:
            raise ValueError(
                f"an epoch has {batches_per_epoch} batches per rank, fewer than "
                f"train.grad_accum={cfg.train.grad_accum}: use a smaller data.batch_size"
            )
        steps_per_epoch = batches_per_epoch // cfg.train.grad_accum
        total = steps_per_epoch * cfg.train.epochs
        if cfg.train.max_steps:
            total = min(total, cfg.train.max_steps)
        return cls(
            run_dir=Path(cfg.output_root) / cfg.name,
            num_classes=num_classes,
            world_size=topology.world_size,
            global_batch=cfg.data.batch_size * topology.world_size * cfg.train.grad_accum,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=math.floor(cfg.optim.warmup_epochs * steps_per_epoch),
        )
