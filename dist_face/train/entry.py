"""Entry point: parse, build, train, close (``python -m dist_face.train --config RECIPE``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from dist_face.config import ConfigError, list_recipes, load_config
from dist_face.dist import Topology, destroy_distributed, init_distributed, select_device
from dist_face.log import init_logging
from dist_face.train.precision import check_precision

logger = logging.getLogger("dist_face.train")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Split the command line into known flags and ``--section.field=value`` overrides."""
    p = argparse.ArgumentParser(
        prog="dist_face.train",
        description="Train a face-recognition backbone with a sharded class-center head.",
        epilog="Any config field can be overridden as --section.field=value.",
    )
    p.add_argument(
        "--config",
        required=True,
        help=f"recipe name ({', '.join(list_recipes())}) or a .py / config.yaml path",
    )
    p.add_argument("--resume", default=None, help="'auto' or a checkpoint directory")
    p.add_argument(
        "--engine", choices=["ddp", "deepspeed"], default=None, help="same as --dist.engine"
    )
    # the deepspeed launcher appends it unless started with --no_local_rank; LOCAL_RANK is read
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--init-backbone", default=None, help="backbone-only checkpoint to start from")
    args, rest = p.parse_known_args(argv)
    overrides = list(rest)
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        p.error(f"unrecognised arguments {bad}; overrides look like --section.field=value")
    if args.resume is not None:
        overrides.append(f"--checkpoint.resume={args.resume}")
    if args.engine is not None:
        overrides.append(f"--dist.engine={args.engine}")
    if args.init_backbone is not None:
        overrides.append(f"--model.init_backbone={args.init_backbone}")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trainer; returns the process exit code."""
    args, overrides = parse_args(argv)
    topology = Topology.from_env()
    init_logging(topology.rank)
    try:
        cfg = load_config(args.config, overrides)
        check_precision(cfg.train.precision, select_device(topology))
        if cfg.dist.engine == "deepspeed":
            from dist_face.train.deepspeed_engine import check_deepspeed_version

            check_deepspeed_version()
    except ConfigError as exc:
        logger.error("bad configuration: %s", exc)
        return 2
    parallel = init_distributed(
        topology,
        cfg.dist.backend,
        cfg.dist.timeout_s,
        force_process_group=cfg.dist.force_process_group,
    )
    device = parallel.device
    exporter = None
    try:
        from dist_face.metrics.build import serve_metrics
        from dist_face.train.build import build_sinks, build_trainer  # heavy imports after checks

        sink = build_sinks(cfg, topology, Path(cfg.output_root) / cfg.name)
        exporter = serve_metrics(sink, cfg.metrics, topology)
        trainer, plan = build_trainer(cfg, topology, device, sink=sink, parallel=parallel)
        logger.info(
            "run %s: %d ranks, global batch %d, %d steps (%d per epoch), run dir %s",
            cfg.name,
            topology.world_size,
            plan.global_batch,
            plan.total_steps,
            plan.steps_per_epoch,
            plan.run_dir,
        )
        state = trainer.fit()
        logger.info("done at step %d; best %s", state.step, state.best)
    finally:
        if exporter is not None:
            exporter.close()
        destroy_distributed()
    return 0
