"""Assemble a Trainer from a resolved config: data, backbone, head, optimizers, hooks, resume."""

from __future__ import annotations

import logging
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from dist_face.checkpoint import save_checkpoint
from dist_face.checkpoint.drift import compare
from dist_face.checkpoint.resume import pack_state, position, restore, select_checkpoint
from dist_face.config import ConfigError, RunConfig, save_config, to_yaml
from dist_face.config.resolve import resolve_run
from dist_face.data.loading.loader import DataSource, build_loader
from dist_face.dist import ParallelContext, Topology, label_group
from dist_face.heads import PartialFC, build_head
from dist_face.heads.auxiliary.aux_losses import WeightedSum, build_aux_losses
from dist_face.heads.sharded.label_path import LabelPrefetch
from dist_face.heads.sharded.shard_math import class_range
from dist_face.metrics import MultiSink, Sink
from dist_face.metrics.build import build_info
from dist_face.metrics.build import build_sinks as metric_sinks
from dist_face.metrics.perf import memory_stats
from dist_face.models import build_backbone, model_kwargs, save_backbone
from dist_face.train.agreement import check_agreement, dataset_digest, run_fields
from dist_face.train.aux_state import aux_rows, load_aux_state
from dist_face.train.engine import DDPEngine, Engine
from dist_face.train.guard import DivergenceGuard
from dist_face.train.hooks import (
    CheckpointHook,
    CloseSinkHook,
    EvalHook,
    LogHook,
    RefusedLabelHook,
    evaluation_group,
)
from dist_face.train.loop import Hook, Trainer, TrainState
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
    data: DataSource | None = None,
) -> tuple[Trainer, RunPlan]:
    """Build every component of a run, resume if asked, and return the trainer and its plan.

    ``parallel`` (from ``init_distributed``) gives the groups every component talks over;
    None builds it from the default group (collective: every rank calls this together).
    ``data``: the data source the start-up checks built (None: built here).
    """
    if parallel is None:
        parallel = ParallelContext.from_default_group(topology, device)
    # the margin's paper defaults and the head's update, so config.yaml shows what trains
    cfg = resolve_run(cfg)
    data, plan, resume, dataset = build_data(cfg, parallel, data)
    model = build_model(cfg, parallel, data.num_classes)
    opt_b, opt_h, scheds = build_optimizers(cfg, model, plan, device)
    timer = StepTimer(device) if cfg.metrics.step_phases else None
    engine = build_engine(cfg, parallel, model.backbone, opt_b, opt_h)
    step_fn = TrainStep(
        engine=engine,
        loss_fn=model.loss_fn,
        head_optimizers=[opt_h],
        schedulers=scheds,
        timer=timer,
    )
    state = TrainState()
    crange = class_range(data.num_classes, topology.rank, topology.world_size)
    if resume is not None:
        pos = restore(
            resume.path,
            resume.state,
            topology,
            seed=cfg.train.seed,
            num_classes=plan.num_classes,
            engine=engine,
            head=model.head,
            head_optimizer=opt_h,
            schedulers=scheds,
            rebase=resume.rebase,
        )
        state = TrainState(step=pos.step, epoch=pos.epoch, consumed=pos.consumed, best=pos.best)
        load_aux_state(model.aux, resume.path, crange)
    if sink is None:
        sink = build_sinks(cfg, topology, plan.run_dir)
    save = _saver(cfg, parallel, plan, engine, model, opt_h, scheds, crange, dataset)
    hooks = build_hooks(cfg, parallel, plan, data, model, engine, scheds, sink, save, timer)
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
        label_prefetch=_label_prefetch(model.head, parallel),
    )
    return trainer, plan


def _label_prefetch(head: torch.nn.Module, parallel: ParallelContext) -> LabelPrefetch | None:
    """The head's label path, run one step ahead on its own gloo group (collective)."""
    if not isinstance(head, PartialFC):
        return None
    return LabelPrefetch(head, label_group(parallel.class_group)).attach()


@dataclass(frozen=True)
class ResumeFrom:
    """A verified checkpoint to resume from and its replicated state.

    ``rebase``: the learning-rate schedule changed; its base rates come from the resuming
    config.
    """

    path: Path
    state: dict
    rebase: bool


def build_data(
    cfg: RunConfig, parallel: ParallelContext, data: DataSource | None = None
) -> tuple[DataSource, RunPlan, ResumeFrom | None, dict]:
    """The data, the run's plan, the checkpoint to resume from, and the data set's identity.

    Checks that every rank agrees on the run (collective), that a resume changes nothing it
    must not (:mod:`dist_face.checkpoint.drift`; :class:`ConfigError` naming the keys) and
    writes ``config.yaml``, which then holds what the run uses. ``data`` is used when it was
    built for this config and device: the dataset is opened once.
    """
    topology = parallel.topology
    fits = data is not None and data.cfg == cfg.data and data.device == parallel.device
    if data is None or not fits:
        data = build_loader(cfg.data, topology, parallel.device, seed=cfg.train.seed)
    # the checkpoint's position first: the plan counts the steps left from it; every rank
    # checks the files it will read, and they agree on one that verifies everywhere
    chosen = select_checkpoint(
        cfg.checkpoint.resume, Path(cfg.output_root) / cfg.name, parallel, data.num_classes
    )
    path, saved = chosen if chosen is not None else (None, None)
    start = Start()
    if saved is not None:
        pos = position(saved, topology)
        start = Start(pos.step, pos.epoch, pos.consumed, pos.world_size)
    plan = RunPlan.create(
        cfg,
        topology,
        data.num_classes,
        data.batches_per_epoch,
        start=start,
        batches_left=data.batches_left(start.consumed) if start.resumed else None,
    )
    dataset = {
        "num_samples": data.num_samples,
        "num_classes": data.num_classes,
        "batches_per_epoch": data.batches_per_epoch,
        "backend": data.backend,
        "manifest_sha256": dataset_digest(cfg.data.root, data.dataset),
    }
    # before anything heavy is built
    check_agreement(run_fields(cfg, dataset, plan), parallel.control_group)
    resume = None
    if path is not None:
        drift = compare(
            saved["config"],
            yaml.safe_load(to_yaml(cfg)),
            cfg.checkpoint.allow_changes,
            saved.get("dataset"),
            dataset,
        )
        if drift.refused:  # the same on every rank: each stops with the same line
            raise ConfigError(drift.refusal(str(path)))
        if drift.changes() and topology.is_main:
            logger.warning("resuming %s with changes: %s", path.name, drift.changes())
        resume = ResumeFrom(path, saved, rebase=bool(drift.schedule))
    if topology.is_main:
        save_config(cfg, plan.run_dir / "config.yaml")
    return data, plan, resume, dataset


@dataclass
class Model:
    """The trained modules: the backbone, the sharded head and any auxiliary losses."""

    backbone: torch.nn.Module
    head: torch.nn.Module
    aux: torch.nn.ModuleList
    loss_fn: torch.nn.Module
    """The head, or the weighted sum of the head and the auxiliary losses."""


def build_model(cfg: RunConfig, parallel: ParallelContext, num_classes: int) -> Model:
    """The backbone (identical on every rank), the head and auxiliary losses (this rank's rows)."""
    topology, device = parallel.topology, parallel.device
    seed_everything(cfg.train.seed, topology.rank)
    backbone = build_backbone(cfg.model).to(device)  # honours model.init_backbone
    if device.type == "cuda":
        # the loaders deliver channels-last images: cuDNN's NHWC kernels need no transposes;
        # the batch shape never changes, so the kernel search pays off after one step
        backbone = backbone.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.train.seed + 1000 * (topology.rank + 1))
    head = build_head(
        cfg.head,
        cfg.model.embedding_size,
        num_classes,
        parallel.class_group,
        seed=cfg.train.seed,
        precision=cfg.train.precision,
    )
    head = head.to(device)
    aux = build_aux_losses(cfg.aux, cfg.model.embedding_size, num_classes, parallel.class_group).to(
        device
    )
    aux_rows(aux)  # refuses, before training, a loss whose state checkpoints would not hold
    loss_fn = WeightedSum(head, aux, cfg.aux.weights, cfg.aux.head_weight) if len(aux) else head
    return Model(backbone, head, aux, loss_fn)


def build_optimizers(
    cfg: RunConfig, model: Model, plan: RunPlan, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer, list]:
    """``(backbone optimizer, head optimizer, [their schedulers])``."""
    head_lr = cfg.optim.head_lr or cfg.optim.lr
    head_wd = (
        cfg.optim.weight_decay if cfg.optim.head_weight_decay < 0 else cfg.optim.head_weight_decay
    )
    opt_b = build_optimizer(
        param_groups(model.backbone, cfg.optim.weight_decay, cfg.optim.decay_norm_and_bias),
        cfg.optim,
        cfg.optim.lr,
        device,
    )
    opt_h = build_head_optimizer(model.head, cfg, head_lr, head_wd, device)
    # a skipped first step must not leave SGD momentum uninitialised (DeepSpeed builds its own
    # state for the backbone)
    for opt in (opt_h,) if cfg.dist.engine == "deepspeed" else (opt_b, opt_h):
        init_momentum(opt)
    scheds = [
        build_scheduler(o, cfg.optim, plan.warmup_steps, plan.total_steps) for o in (opt_b, opt_h)
    ]
    return opt_b, opt_h, scheds


def build_engine(
    cfg: RunConfig,
    parallel: ParallelContext,
    backbone: torch.nn.Module,
    opt_b: torch.optim.Optimizer,
    opt_h: torch.optim.Optimizer,
) -> Engine:
    """The backbone's engine: DDP (or the bare backbone at one rank) or DeepSpeed."""
    topology, device = parallel.topology, parallel.device
    if cfg.dist.engine == "deepspeed":
        from dist_face.train import deepspeed_engine as ds  # deepspeed only when asked for

        return ds.DeepSpeedEngine(ds.initialize(backbone, opt_b, cfg, topology.world_size))
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
    return DDPEngine(model, [opt_b], scaler, cfg.train.precision, cfg.train.clip_grad_norm)


def _saver(
    cfg: RunConfig,
    parallel: ParallelContext,
    plan: RunPlan,
    engine: Engine,
    model: Model,
    opt_h: torch.optim.Optimizer,
    scheds: list,
    crange: tuple[int, int],
    dataset: dict,
) -> Callable[[Trainer], Path | None]:
    """The checkpoint writer: ``save(trainer)`` writes the run's state collectively."""
    topology = parallel.topology

    def save(trainer: Trainer) -> Path | None:
        replicated = pack_state(  # collective under ZeRO
            step=trainer.state.step,
            epoch=trainer.state.epoch,
            consumed=trainer.state.consumed,
            best=trainer.state.best,
            config_yaml=to_yaml(cfg),
            dataset=dataset,
            engine=engine,
            schedulers=scheds,
        )
        weights = replicated["backbone"]

        def export() -> None:  # the backbone alone, for evaluation, export and fine-tuning
            path = plan.run_dir / "model.pt"
            best = plan.run_dir / "model_best.pt"
            if cfg.eval.select_best and best.is_file():
                step, eer = trainer.state.best["select/step"], trainer.state.best["select/eer"]
                shutil.copyfile(best, path.with_suffix(".pt.tmp"))
                os.replace(path.with_suffix(".pt.tmp"), path)
                logger.info(
                    "model.pt is the best evaluated backbone: step %d (EER %.4f on %s), "
                    "checkpoint of step %d",
                    int(step),
                    eer,
                    Path(cfg.eval.targets[0]).name,
                    trainer.state.step,
                )
                return
            save_backbone(model.backbone, path, cfg.model.name, weights, **model_kwargs(cfg.model))

        return save_checkpoint(
            plan.run_dir,
            trainer.state.step,
            topology,
            replicated=replicated,
            head=model.head,
            head_optimizer=opt_h,
            class_range=crange,
            num_classes=plan.num_classes,
            keep=cfg.checkpoint.keep,
            extra_rows=aux_rows(model.aux),
            export=export,
            parallel=parallel,
        )

    return save


def build_hooks(
    cfg: RunConfig,
    parallel: ParallelContext,
    plan: RunPlan,
    data: DataSource,
    model: Model,
    engine: Engine,
    scheds: list,
    sink: Sink,
    save: Callable[[Trainer], Path | None],
    timer: StepTimer | None = None,
) -> list[Hook]:
    """Logging, evaluation, the divergence guard, checkpoints and closing the sink, in order."""
    topology, device, scaler = parallel.topology, parallel.device, engine.scaler
    return [
        LogHook(
            cfg.train.log_every,
            sink,
            scaler.state_dict,
            lambda: scheds[0].get_last_lr()[0],
            device,
            extra=lambda: {
                "data/rank_corrupt_records": data.corrupt_records,
                **model.head.log_values(),
                **memory_stats(device),
            },
            timer=timer,
            summed=lambda: {"data/corrupt_records": data.corrupt_records},
        ),
        RefusedLabelHook(cfg.train.log_every, lambda: data.refused, parallel.control_group),
        EvalHook(
            cfg.eval.targets,
            cfg.eval.every,
            model.backbone,
            topology,
            sink,
            plan.run_dir,
            cfg.eval.batch_size,
            device,
            evaluation_group(cfg.eval.timeout_s) if cfg.eval.targets else None,
            resize_mode=cfg.data.resize_mode,
            save_best=_best_saver(cfg, model) if cfg.eval.select_best else None,
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


def _best_saver(cfg: RunConfig, model: Model) -> Callable[[Path], object]:
    """Writes the backbone as evaluated (``eval.select_best``), on rank 0 alone."""
    return lambda path: save_backbone(
        model.backbone, path, cfg.model.name, **model_kwargs(cfg.model)
    )


def _advice(cfg: RunConfig) -> str:
    """What to lower when the run diverges, with the values it ran with."""
    knobs = [f"optim.lr (now {cfg.optim.lr:g})"]
    if cfg.optim.head_lr:
        knobs.append(f"optim.head_lr (now {cfg.optim.head_lr:g})")
    scale = cfg.head.margin_args.get("scale")  # softmax and L-Softmax have none
    if scale is not None:
        knobs.append(f"head.margin_args.scale (now {scale:g})")
    if cfg.train.precision == "fp16":
        knobs.append(f"train.loss_scale_init (now {cfg.train.loss_scale_init:g})")
    return ", ".join(knobs[:-1]) + " or " + knobs[-1]


def build_sinks(cfg: RunConfig, topology: Topology, run_dir: Path) -> MultiSink:
    """JSONL on every rank, the console on rank 0, Prometheus on every rank when enabled.

    The entry point serves the Prometheus sink (``dist_face.metrics.build.serve_metrics``).
    """
    info = build_info(
        cfg.name, topology.world_size, backbone=cfg.model.name, margin=cfg.head.margin
    )
    return metric_sinks(cfg.metrics, topology, run_dir, job=cfg.name, info=info)
