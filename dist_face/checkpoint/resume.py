"""What a training checkpoint holds for a whole run, and resuming from a verified one.

``state.pt`` (written by rank 0, see manager.py) holds the replicated part of a run::

    step, epoch, consumed      the position: optimizer steps, epoch, samples of it consumed
    best                       the evaluating rank's best results
    config                     the resolved config as YAML (compared on resume: drift.py)
    dataset                    the training set's fingerprint and class count
    backbone, optim_backbone   the engine's weights and optimizer state
    schedulers, scaler         the learning-rate schedulers and the loss scaler
    world_size                 added by the writer

Resuming reads a checkpoint only after every rank has checked the files it will read against
the manifest (:func:`select_checkpoint`): with ``resume=auto`` the ranks agree on the newest
checkpoint that verifies everywhere, passing over damaged ones with one log line; a damaged
explicit checkpoint is refused with one line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from dist_face.checkpoint.manager import (
    CheckpointError,
    checkpoint_root,
    list_checkpoints,
    load_state,
    restore_head,
    restore_rng,
)
from dist_face.checkpoint.manifest import CheckpointCorrupt, read_manifest
from dist_face.dist import ParallelContext, Topology, all_gather_object
from dist_face.heads.sharded.shard_math import class_range

logger = logging.getLogger(__name__)


class _Engine(Protocol):
    scaler: Any

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]: ...

    def load_state(self, weights: dict[str, torch.Tensor], optim: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Position:
    """Where a checkpoint's run stood.

    Attributes:
        step: optimizer steps done.
        epoch: the epoch of that step (0-based).
        consumed: samples all ranks together consumed of that epoch.
        world_size: ranks of the run that wrote it.
        best: the evaluating rank's best results (empty on the other ranks).
    """

    step: int
    epoch: int
    consumed: int
    world_size: int
    best: dict[str, float] = field(default_factory=dict)


def pack_state(
    *,
    step: int,
    epoch: int,
    consumed: int,
    best: dict[str, float],
    config_yaml: str,
    dataset: dict[str, Any],
    engine: _Engine,
    schedulers: list[Any],
) -> dict[str, Any]:
    """The replicated state of a run, as ``state.pt`` holds it (collective under ZeRO)."""
    weights, optim_backbone = engine.state()
    return {
        "step": step,
        "epoch": epoch,
        "consumed": consumed,
        "best": best,
        "config": config_yaml,
        "dataset": dataset,
        "backbone": weights,
        "optim_backbone": optim_backbone,
        "schedulers": [s.state_dict() for s in schedulers],
        "scaler": engine.scaler.state_dict(),
    }


def position(state: dict[str, Any], topology: Topology) -> Position:
    """The position a checkpoint's replicated state resumes at, as seen by ``topology``'s rank."""
    saved_world = int(state["world_size"])
    # checkpoints before ``consumed`` held a per-rank count
    consumed = int(state["consumed"]) if "consumed" in state else int(state["offset"]) * saved_world
    return Position(
        step=int(state["step"]),
        epoch=int(state["epoch"]),
        consumed=consumed,
        world_size=saved_world,
        # only the evaluating rank holds best values; the others report none
        best=dict(state["best"]) if topology.is_main else {},
    )


def files_to_read(path: Path, topology: Topology, num_classes: int) -> list[str]:
    """Names of the files of checkpoint ``path`` that ``topology``'s rank reads on resume.

    ``state.pt``; this rank's ``rank-*.pt`` on the same world size, else rank 0's (the head's
    replicated state); and the head files overlapping this rank's class range.

    Raises:
        CheckpointCorrupt: the manifest is missing or damaged.
    """
    manifest = read_manifest(path)
    same_world = manifest.world_size == topology.world_size
    start, end = class_range(num_classes, topology.rank, topology.world_size)
    heads = [p.name for s, e, p in manifest.shard_ranges() if s < end and e > start]
    return ["state.pt", f"rank-{topology.rank if same_world else 0:05d}.pt", *heads]


def _problem(path: Path, topology: Topology, num_classes: int) -> str | None:
    """Why this rank cannot resume from ``path`` (one line), or None when its files verify."""
    try:
        read_manifest(path).verify(files_to_read(path, topology, num_classes))
    except CheckpointCorrupt as exc:
        return str(exc)
    return None


def select_checkpoint(
    resume: str, run_dir: Path, parallel: ParallelContext, num_classes: int
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint to resume from, verified on every rank, and its replicated state.

    Collective over the control group: each rank checks the files it will read against the
    manifest; a checkpoint counts only when every rank's check passed.

    Args:
        resume: ``checkpoint.resume``: empty (start fresh), ``auto`` (the newest checkpoint of
            ``run_dir`` that verifies everywhere) or a checkpoint directory.
        run_dir: the run directory.
        parallel: the run's groups.
        num_classes: C of the training set (decides each rank's head files).

    Returns:
        ``(directory, replicated state)``, or None to start fresh (nothing to resume).

    Raises:
        CheckpointError: an explicit checkpoint does not verify, or with ``auto`` none does
            (one line naming the file and why).
    """
    if not resume:
        return None
    topology = parallel.topology
    explicit = resume != "auto"
    candidates = [Path(resume)] if explicit else list(reversed(list_checkpoints(run_dir)))
    passed_over: list[str] = []
    for path in candidates:
        problems = all_gather_object(_problem(path, topology, num_classes), parallel.control_group)
        bad = next((p for p in problems if p), None)
        if bad is None:
            if passed_over and topology.is_main:
                logger.warning(
                    "resume=auto: passed over %s; resuming from %s (step %d)",
                    "; ".join(passed_over),
                    path.name,
                    read_manifest(path).step,
                )
            return path, load_state(path)
        if explicit:
            raise CheckpointError(f"{path} does not verify: {bad}")
        passed_over.append(f"{path.name} ({bad})")
    if passed_over:
        raise CheckpointError(
            f"resume=auto: none of the {len(passed_over)} checkpoints in "
            f"{checkpoint_root(run_dir)} verifies (newest: {passed_over[0]}); move them aside "
            "or start over with --overwrite"
        )
    return None


def restore(
    path: Path,
    state: dict[str, Any],
    topology: Topology,
    *,
    seed: int,
    num_classes: int,
    engine: _Engine,
    head: nn.Module,
    head_optimizer: torch.optim.Optimizer,
    schedulers: list[Any],
    rebase: bool = False,
) -> Position:
    """Load a verified checkpoint into the run's engine, schedulers, head and RNG streams.

    On another world size the class centers are re-split by class range, and the per-rank RNG
    streams and the head's sampling generators start anew from ``(seed, rank, step)``.
    With ``rebase`` the schedulers keep the base learning rates they were built with (the
    resuming config's) and the rate of the next step is that schedule's at the saved step;
    otherwise the saved schedulers continue as they were.

    Returns:
        The position to continue from.
    """
    pos = position(state, topology)
    engine.load_state(state["backbone"], state["optim_backbone"])
    for sched, sd in zip(schedulers, state["schedulers"]):
        base = list(sched.base_lrs)
        sched.load_state_dict(sd)
        if rebase:
            _rebase(sched, base)
    engine.scaler.load_state_dict(state["scaler"])
    crange = class_range(num_classes, topology.rank, topology.world_size)
    restore_head(path, topology, head, head_optimizer, crange, num_classes, pos.world_size)
    if pos.world_size == topology.world_size:
        restore_rng(path, topology)
    else:
        # the per-rank RNG streams and the head's sampling generators belong to the old
        # ranks: each new rank starts its own from (seed, its rank, the step) instead
        torch.manual_seed(seed + 1000 * (topology.rank + 1) + pos.step)
        reseed = getattr(head, "reseed_sampler", None)
        if reseed is not None:
            reseed(pos.step)
        logger.warning(
            "resuming a %d-rank checkpoint on %d ranks: class centers re-split by class "
            "range; the data continues at sample %d of epoch %d, dealt over %d ranks",
            pos.world_size,
            topology.world_size,
            pos.consumed,
            pos.epoch,
            topology.world_size,
        )
    logger.info(
        "resumed from %s at step %d (epoch %d, %d samples of it consumed)",
        path,
        pos.step,
        pos.epoch,
        pos.consumed,
    )
    return pos


def _rebase(sched: Any, base_lrs: list[float]) -> None:
    """Put a ``LambdaLR`` on ``base_lrs`` at its loaded step (the next step's learning rate)."""
    sched.base_lrs = list(base_lrs)
    lrs = [b * f(sched.last_epoch) for b, f in zip(base_lrs, sched.lr_lambdas)]
    for group, b, lr in zip(sched.optimizer.param_groups, base_lrs, lrs):
        group["lr"], group["initial_lr"] = lr, b
    sched._last_lr = lrs
    logger.warning(
        "learning-rate schedule re-based at step %d: base rates %s, next step at %s",
        sched.last_epoch,
        [f"{b:g}" for b in base_lrs],
        [f"{lr:g}" for lr in lrs],
    )


__all__ = [
    "CheckpointError",
    "Position",
    "files_to_read",
    "pack_state",
    "position",
    "restore",
    "select_checkpoint",
]
