"""Assemble a Trainer from a resolved config: data, backbone, head, optimizers, hooks, resume."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dist_face.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_state,
    restore_head,
    restore_rng,
    save_checkpoint,
)
from dist_face.config import RunConfig, save_config, to_yaml
from dist_face.config.resolve import resolve_run
from dist_face.data.loader import build_loader
from dist_face.dist import ParallelContext, Topology
from dist_face.heads import build_head
from dist_face.heads.aux_losses import WeightedSum, build_aux_losses
from dist_face.heads.shard_math import class_range
from dist_face.metrics import MultiSink, Sink
from dist_face.metrics.build import build_info
from dist_face.metrics.build import build_sinks as metric_sinks
from dist_face.metrics.perf import memory_stats
from dist_face.models import build_backbone, model_kwargs, save_backbone
from dist_face.train.agreement import check_agreement, dataset_digest, run_fields
from dist_face.train.aux_state import aux_rows, load_aux_state
from dist_face.train.guard import DivergenceGuard
from dist_face.train.hooks import CheckpointHook, CloseSinkHook, EvalHook, LogHook
from dist_face.train.loop import Trainer, TrainState
from dist_face.train.optim import (
    build_head_optimizer,
    build_optimizer,
    build_scheduler,
    init_momentum,
    param_groups,
)
from dist_face.train.plan import RunPlan, Start
from dist_face.train.precision import LossScaler
from dist_face.train.step import TrainStep
from dist_face.train.timing import StepTimer
from dist_face.train.wrap import wrap_backbone

logger = logging.getLogger(__name__)


def seed_everything(seed: int, rank: int) -> None:
    """Seed Python, numpy and torch; identical backbone init on every rank, per-rank streams after.

    Every rank builds the backbone from the same seed (DDP also broadcasts rank 0's weights),
    then re-seeds with the rank so dropout and sampling differ across ranks.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_trainer(
    cfg: RunConfig,
    topology: Topology,
    device: torch.device,
    sink: Sink | None = None,
    parallel: ParallelContext | None = None,
) -> tuple[Trainer, RunPlan]:
    """Build every component of a run, resume if asked, and return the trainer and its plan.

    ``parallel`` (from ``init_distributed``) gives the groups every component talks over;
    None builds it from the default group (collective: every rank calls this together).
    """
    if parallel is None:
        parallel = ParallelContext.from_default_group(topology, device)
    # the margin's paper defaults and the head's update, so config.yaml shows what trains
    cfg = resolve_run(cfg)
    data = build_loader(cfg.data, topology, device, seed=cfg.train.seed)
    num_classes = data.num_classes
    # the checkpoint's position first: the plan counts the steps left from it
    resume = _resume_path(cfg, Path(cfg.output_root) / cfg.name)
    saved = load_state(resume) if resume is not None else None
    start = _start(saved) if saved is not None else Start()
    plan = RunPlan.create(
        cfg,
        topology,
        num_classes,
        data.batches_per_epoch,
        start=start,
        batches_left=data.batches_left(start.consumed) if start.resumed else None,
    )
    dataset = {
        "num_samples": data.num_samples,
        "num_classes": num_classes,
        "batches_per_epoch": data.batches_per_epoch,
        "backend": data.backend,
        "manifest_sha256": dataset_digest(cfg.data.root),
    }
    # before anything heavy is built
    check_agreement(run_fields(cfg, dataset, plan), parallel.control_group)
    if topology.is_main:
        save_config(cfg, plan.run_dir / "config.yaml")

    seed_everything(cfg.train.seed, topology.rank)
    backbone = build_backbone(cfg.model).to(device)  # honours model.init_backbone
    torch.manual_seed(cfg.train.seed + 1000 * (topology.rank + 1))
    head = build_head(
        cfg.head, cfg.model.embedding_size, num_classes, parallel.class_group, seed=cfg.train.seed
    )
    head = head.to(device)
    aux = build_aux_losses(cfg.aux, cfg.model.embedding_size, num_classes, parallel.class_group).to(
        device
    )
    aux_rows(aux)  # refuses, before training, a loss whose state checkpoints would not hold
    loss_fn = WeightedSum(head, aux, cfg.aux.weights, cfg.aux.head_weight) if len(aux) else head
    head_lr = cfg.optim.head_lr or cfg.optim.lr
    head_wd = (
        cfg.optim.weight_decay if cfg.optim.head_weight_decay < 0 else cfg.optim.head_weight_decay
    )
    opt_b = build_optimizer(
        param_groups(backbone, cfg.optim.weight_decay, cfg.optim.decay_norm_and_bias),
        cfg.optim,
        cfg.optim.lr,
        device,
    )
    opt_h = build_head_optimizer(head, cfg, head_lr, head_wd, device)
    # a skipped first step must not leave SGD momentum uninitialised (DeepSpeed builds its own
    # state for the backbone)
    for opt in (opt_h,) if cfg.dist.engine == "deepspeed" else (opt_b, opt_h):
        init_momentum(opt)
    scheds = [
        build_scheduler(o, cfg.optim, plan.warmup_steps, plan.total_steps) for o in (opt_b, opt_h)
    ]
    timer = StepTimer(device) if cfg.metrics.step_phases else None
    engine = _build_step(cfg, parallel, backbone, loss_fn, opt_b, opt_h, scheds, timer)
    step_fn = engine.step_fn
    scaler = step_fn.scaler
    if scaler.dynamic and hasattr(opt_h, "loss_scale"):  # fp16: updates in backward see it
        opt_h.loss_scale = scaler.scale

    state = TrainState()
    crange = class_range(num_classes, topology.rank, topology.world_size)
    if resume is not None:
        state = _resume(
            resume, saved, topology, cfg, plan, engine, head, opt_h, scheds, scaler, crange
        )
        load_aux_state(aux, resume, crange)

    def save(trainer: Trainer) -> Path | None:
        weights, optim_backbone = engine.state()  # collective under ZeRO
        replicated = {
            "step": trainer.state.step,
            "epoch": trainer.state.epoch,
            "consumed": trainer.state.consumed,
            "best": trainer.state.best,
            "config": to_yaml(cfg),
            "backbone": weights,
            "optim_backbone": optim_backbone,
            "schedulers": [s.state_dict() for s in scheds],
            "scaler": scaler.state_dict(),
        }

        def export() -> None:  # the backbone alone, for evaluation, export and fine-tuning
            path = plan.run_dir / "model.pt"
            save_backbone(backbone, path, cfg.model.name, weights, **model_kwargs(cfg.model))

        return save_checkpoint(
            plan.run_dir,
            trainer.state.step,
            topology,
            replicated=replicated,
            head=head,
            head_optimizer=opt_h,
            class_range=crange,
            num_classes=num_classes,
            keep=cfg.checkpoint.keep,
            extra_rows=aux_rows(aux),
            export=export,
            parallel=parallel,
        )

    if sink is None:
        sink = build_sinks(cfg, topology, plan.run_dir)
    hooks = [
        LogHook(
            cfg.train.log_every,
            sink,
            scaler.state_dict,
            lambda: scheds[0].get_last_lr()[0],
            device,
            extra=lambda: {
                "data/rank_corrupt_records": data.corrupt_records,
                **memory_stats(device),
            },
            timer=timer,
            summed=lambda: {"data/corrupt_records": data.corrupt_records},
        ),
        EvalHook(
            cfg.eval.targets,
            cfg.eval.every,
            backbone,
            topology,
            sink,
            plan.run_dir,
            cfg.eval.batch_size,
            device,
        ),
        DivergenceGuard(
            cfg.train.log_every,
            cfg.train.max_skipped_steps,
            cfg.train.max_nonfinite_logs,
            lambda: scaler.state_dict()["scale"],
            _advice(cfg),
        ),
        CheckpointHook(cfg.checkpoint.every, save),
        CloseSinkHook(sink),
    ]
    trainer = Trainer(
        step_fn=step_fn,
        loader_factory=data.epoch,
        steps_per_epoch=plan.steps_per_epoch,
        total_steps=plan.total_steps,
        samples_per_step=cfg.data.batch_size * cfg.train.grad_accum,
        grad_accum=cfg.train.grad_accum,
        hooks=hooks,
        state=state,
        world_size=topology.world_size,
        steps_left=lambda consumed: data.batches_left(consumed) // cfg.train.grad_accum,
    )
    return trainer, plan


def _advice(cfg: RunConfig) -> str:
    """What to lower when the run diverges, with the values it ran with."""
    knobs = [f"optim.lr (now {cfg.optim.lr:g})"]
    if cfg.optim.head_lr:
        knobs.append(f"optim.head_lr (now {cfg.optim.head_lr:g})")
    if cfg.head.scale is not None:  # margins without a scale (softmax, L-Softmax) resolve to None
        knobs.append(f"head.scale (now {cfg.head.scale:g})")
    if cfg.train.precision == "fp16":
        knobs.append(f"train.loss_scale_init (now {cfg.train.loss_scale_init:g})")
    return ", ".join(knobs[:-1]) + " or " + knobs[-1]


@dataclass
class BackboneEngine:
    """The step of one engine and the backbone's checkpoint state in the DDP layout."""

    step_fn: TrainStep
    state: Callable[[], tuple[dict[str, torch.Tensor], dict]]
    """``() -> (fp32 weights by name, torch.optim state dict)``; collective under ZeRO."""
    load_state: Callable[[dict[str, torch.Tensor], dict], None]
    """Inverse of :attr:`state`, on any world size."""


def _build_step(
    cfg: RunConfig,
    parallel: ParallelContext,
    backbone: torch.nn.Module,
    loss_fn: torch.nn.Module,
    opt_b: torch.optim.Optimizer,
    opt_h: torch.optim.Optimizer,
    scheds: list,
    timer: StepTimer | None,
) -> BackboneEngine:
    """The step over DDP (or the bare backbone at one rank) or over a DeepSpeed engine."""
    topology, device = parallel.topology, parallel.device
    if cfg.dist.engine == "deepspeed":
        from dist_face.train import deepspeed_engine as ds  # deepspeed only when asked for

        engine = ds.initialize(backbone, opt_b, cfg, topology.world_size)
        step_fn = ds.DeepSpeedStep(
            engine=engine, loss_fn=loss_fn, head_optimizer=opt_h, schedulers=scheds, timer=timer
        )
        return BackboneEngine(
            step_fn,
            state=lambda: ds.backbone_state(engine),
            load_state=lambda w, o: ds.load_backbone_state(engine, w, o),
        )
    model = wrap_backbone(
        backbone, cfg.dist, topology, device, cfg.train.grad_accum, parallel.data_group
    )
    scaler = LossScaler(
        cfg.train.precision,
        device,
        cfg.train.loss_scale_init,
        cfg.train.loss_scale_growth_interval,
        group=parallel.data_group,
    )
    step_fn = TrainStep(
        backbone=model,
        loss_fn=loss_fn,
        optimizers=[opt_b, opt_h],
        schedulers=scheds,
        scaler=scaler,
        precision=cfg.train.precision,
        clip_params=list(backbone.parameters()),
        clip_grad_norm=cfg.train.clip_grad_norm,
        timer=timer,
    )

    def load(weights: dict[str, torch.Tensor], optim_state: dict) -> None:
        backbone.load_state_dict(weights)
        opt_b.load_state_dict(optim_state)

    return BackboneEngine(
        step_fn, state=lambda: (backbone.state_dict(), opt_b.state_dict()), load_state=load
    )


def build_sinks(cfg: RunConfig, topology: Topology, run_dir: Path) -> MultiSink:
    """JSONL on every rank, the console on rank 0, Prometheus on every rank when enabled.

    The entry point serves the Prometheus sink (``dist_face.metrics.build.serve_metrics``).
    """
    info = build_info(
        cfg.name, topology.world_size, backbone=cfg.model.name, margin=cfg.head.margin
    )
    return metric_sinks(cfg.metrics, topology, run_dir, job=cfg.name, info=info)


def _resume_path(cfg: RunConfig, run_dir: Path) -> Path | None:
    if not cfg.checkpoint.resume:
        return None
    if cfg.checkpoint.resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(cfg.checkpoint.resume)
    if not (path / "state.pt").exists():
        raise CheckpointError(f"checkpoint.resume={path}: not a complete checkpoint directory")
    return path


def _start(state: dict) -> Start:
    """The position a checkpoint's replicated state resumes at."""
    saved_world = int(state["world_size"])
    return Start(
        step=int(state["step"]),
        epoch=int(state["epoch"]),
        consumed=_consumed(state, saved_world),
        world_size=saved_world,
    )


def _resume(
    path, state, topology, cfg, plan, engine, head, opt_h, scheds, scaler, crange
) -> TrainState:
    saved_world = int(state["world_size"])
    engine.load_state(state["backbone"], state["optim_backbone"])
    for sched, sd in zip(scheds, state["schedulers"]):
        sched.load_state_dict(sd)
    scaler.load_state_dict(state["scaler"])
    restore_head(path, topology, head, opt_h, crange, plan.num_classes, saved_world)
    consumed = _consumed(state, saved_world)
    if saved_world == topology.world_size:
        restore_rng(path, topology)
    else:
        # the per-rank RNG streams and the head's sampling generators belong to the old
        # ranks: each new rank starts its own from (seed, its rank, the step) instead
        torch.manual_seed(cfg.train.seed + 1000 * (topology.rank + 1) + int(state["step"]))
        reseed = getattr(head, "reseed_sampler", None)
        if reseed is not None:
            reseed(int(state["step"]))
        logger.warning(
            "resuming a %d-rank checkpoint on %d ranks: class centers re-split by class "
            "range; the data continues at sample %d of epoch %d, dealt over %d ranks",
            saved_world,
            topology.world_size,
            consumed,
            state["epoch"],
            topology.world_size,
        )
    logger.info(
        "resumed from %s at step %d (epoch %d, %d samples of it consumed)",
        path,
        state["step"],
        state["epoch"],
        consumed,
    )
    return TrainState(
        step=int(state["step"]),
        epoch=int(state["epoch"]),
        consumed=consumed,
        best=dict(state["best"]),
    )


def _consumed(state: dict, saved_world: int) -> int:
    """Global samples consumed in the saved epoch (checkpoints before it held a per-rank count)."""
    if "consumed" in state:
        return int(state["consumed"])
    return int(state["offset"]) * saved_world
