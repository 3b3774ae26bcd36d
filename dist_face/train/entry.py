"""Entry point: parse, build, train, close (``python -m dist_face.train --config RECIPE``)."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from dist_face.checkpoint import CheckpointError
from dist_face.config import ConfigError, RunConfig, describe, list_recipes, load_config
from dist_face.data.loading.labels import LabelError
from dist_face.dist import Topology, destroy_distributed, init_distributed, select_device
from dist_face.log import init_logging
from dist_face.torch_floor import check_torch_version
from dist_face.train.guard import DivergenceError, saved_so_far, unsaved_final_state
from dist_face.train.precision import check_precision
from dist_face.train.preflight import check_run, run_dir, wipe_run_dir
from dist_face.train.signals import EXIT_PREEMPTED, StopAgreement, StopSignals

if TYPE_CHECKING:
    from dist_face.data.loading.loader import DataSource
    from dist_face.dist import ParallelContext

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
        help=f"recipe name ({', '.join(list_recipes())}) or a .py / config.yaml path",
    )
    p.add_argument("--resume", default=None, help="'auto' or a checkpoint directory")
    p.add_argument(
        "--engine", choices=["ddp", "deepspeed"], default=None, help="same as --dist.engine"
    )
    # the deepspeed launcher appends it unless started with --no_local_rank; LOCAL_RANK is read
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    p.add_argument("--init-backbone", default=None, help="backbone-only checkpoint to start from")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="wipe an earlier run's checkpoints, model and metrics in the run directory first",
    )
    p.add_argument(
        "--check-only",
        action="store_true",
        help="check the configuration, paths and run directory, then exit: 0 when training "
        "could start, 2 with one line naming the bad key (the launchers run this before "
        "starting any rank)",
    )
    describe.add_arguments(p)
    args, rest = p.parse_known_args(argv)
    if args.config is None and args.help_config is None:
        p.error("the following arguments are required: --config")
    # --resume.allow_changes=a,b names what a resume may change: checkpoint.allow_changes
    overrides = [_allow_changes(o) for o in rest]
    bad = [o for o in overrides if not (o.startswith("--") and "=" in o)]
    if bad:
        p.error(f"unrecognised arguments {bad}; overrides look like --section.field=value")
    if args.resume is not None:
        overrides.append(f"--checkpoint.resume={args.resume}")
    if args.engine is not None:
        overrides.append(f"--dist.engine={args.engine}")
    if args.init_backbone is not None:
        overrides.append(f"--model.init_backbone={args.init_backbone}")
    if args.overwrite:
        overrides.append("--checkpoint.overwrite=true")
    return args, overrides


def _allow_changes(override: str) -> str:
    """``--resume.allow_changes=a,b`` -> ``--checkpoint.allow_changes=[a,b]``; others unchanged."""
    flag, _, value = override.partition("=")
    if flag != "--resume.allow_changes":
        return override
    keys = value.strip("[]").replace(" ", "")
    return f"--checkpoint.allow_changes=[{keys}]"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trainer; returns the process exit code.

    Returns:
        0 when the run finished; 2 for a bad configuration (one ``bad configuration: <key>: ...``
        line on each rank, no traceback); 1 when training diverged (one line naming the step),
        the data held a label outside the class range (one line naming it, on every rank) or
        the final checkpoint could not be written (one line naming what is on disk);
        :data:`~dist_face.train.signals.EXIT_PREEMPTED` (75) when SIGTERM or SIGUSR1 stopped it
        and its checkpoint was written (``--resume=auto`` continues it).
    """
    args, overrides = parse_args(argv)
    if describe.wants_info(args):  # print and exit: nothing is built
        return describe.run_info(args, overrides)
    topology = Topology.from_env()
    init_logging(topology.rank)
    try:
        check_torch_version()
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    try:
        cfg = load_config(args.config, overrides, prepare=True)  # a recipe's own data
        check_precision(cfg.train.precision, select_device(topology))
        # paths and names, on every rank, before the process group and the build
        data = check_run(cfg, topology, select_device(topology), verify=args.check_only)
        if cfg.dist.engine == "deepspeed":  # imports deepspeed: after the cheap checks
            from dist_face.train.deepspeed_engine import check_deepspeed_version

            check_deepspeed_version()
    except ConfigError as exc:
        logger.error("bad configuration: %s", exc)
        return 2
    if args.check_only:
        return 0
    signals = StopSignals()
    signals.install()  # before the loader forks its workers: they are born with these blocked
    parallel = init_distributed(
        topology,
        cfg.dist.backend,
        cfg.dist.timeout_s,
        force_process_group=cfg.dist.force_process_group,
    )
    try:
        return _train(cfg, topology, parallel, signals, data)
    except ConfigError as exc:  # found while building: ranks disagree
        logger.error("bad configuration: %s", exc)
        return 2
    except CheckpointError as exc:  # the checkpoint to resume from does not fit this run
        logger.error("bad configuration: checkpoint.resume: %s", exc)
        return 2
    except (DivergenceError, LabelError) as exc:
        logger.error("%s", exc)
        return 1
    finally:
        destroy_distributed()
        signals.uninstall()


def _train(
    cfg: RunConfig,
    topology: Topology,
    parallel: ParallelContext,
    signals: StopSignals,
    data: DataSource | None = None,
) -> int:
    """Build and run the trainer in an initialised process group (``data``: the checks')."""
    from dist_face.metrics.build import serve_metrics
    from dist_face.train.build import build_sinks, build_trainer  # heavy imports after checks

    device = parallel.device
    if cfg.checkpoint.overwrite and not cfg.checkpoint.resume:
        if topology.is_main:
            wipe_run_dir(run_dir(cfg))
        parallel.barrier()  # no rank opens its metrics file before the old one is gone
    exporter = None
    try:
        sink = build_sinks(cfg, topology, run_dir(cfg))
        exporter = serve_metrics(sink, cfg.metrics, topology)
        trainer, plan = build_trainer(
            cfg, topology, device, sink=sink, parallel=parallel, data=data
        )
        logger.info("%s", plan.describe(cfg.name))
        stop = trainer.should_stop = StopAgreement(signals, parallel.control_group)
        try:
            state = trainer.fit()
        except DivergenceError as exc:
            raise DivergenceError(f"{exc}; {saved_so_far(trainer, plan.run_dir)}") from None
        # every rank started the same all-reduces (after a failure, a rank may be missing)
        stop.close()
        missing = unsaved_final_state(trainer, plan.run_dir)
        if missing:
            logger.error("%s", missing)
            return 1
        if trainer.stopped:
            logger.warning(
                "stopped by %s at step %d with its checkpoint (saving took %.2f s); continue "
                "with --resume=auto (exit code %d)",
                stop.name,
                state.step,
                trainer.stop_s,
                EXIT_PREEMPTED,
            )
            return EXIT_PREEMPTED
        # only the rank that evaluates holds best values; the others say nothing about them
        best = f"; best {state.best}" if state.best else ""
        logger.info("done at step %d%s", state.step, best)
    finally:
        if exporter is not None:
            exporter.close()
    return 0
