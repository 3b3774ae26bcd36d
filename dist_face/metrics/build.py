"""The metric sinks of a run and the per-rank Prometheus exporter, from ``RunConfig.metrics``."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from dist_face.metrics.sinks import ConsoleSink, JsonlSink, MultiSink, Sink

if TYPE_CHECKING:
    from dist_face.config.schema import MetricsConfig
    from dist_face.dist import Topology
    from dist_face.metrics.prometheus import Exporter, PrometheusSink

logger = logging.getLogger(__name__)


def build_info(recipe: str, world_size: int, **extra: str) -> dict[str, str]:
    """Facts for ``dist_face_build_info``: package version, git commit, recipe, world size.

    Args:
        recipe: the run's recipe (config) name.
        world_size: number of ranks.
        extra: more string facts (backbone, margin, ...).
    """
    try:
        version = metadata.version("dist_face")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "version": version,
        "git_commit": _git_commit(),
        "recipe": recipe,
        "world_size": str(world_size),
        **extra,
    }


def _git_commit() -> str:
    """The source tree's commit, or ``unknown`` outside a git checkout (e.g. an installed wheel)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def build_sinks(
    cfg: MetricsConfig,
    topology: Topology,
    run_dir: Path,
    *,
    job: str = "run",
    info: Mapping[str, str] | None = None,
) -> MultiSink:
    """JSONL on every rank, the console on rank 0; Prometheus (every rank), TensorBoard (rank 0).

    Prometheus and TensorBoard only when enabled in ``cfg``. No server is started here: the
    entry point calls :func:`serve_metrics` on the result.

    Args:
        cfg: the ``metrics`` section of the run config.
        topology: this process's place in the job (rank, node, local rank).
        run_dir: where ``metrics-rank<r>.jsonl`` goes.
        job: ``job`` label when ``cfg.job`` is empty (the run name).
        info: facts for ``dist_face_build_info`` (see :func:`build_info`).
    """
    sinks: list[Sink] = [JsonlSink(Path(run_dir) / f"metrics-rank{topology.rank}.jsonl")]
    if topology.is_main:
        sinks.append(ConsoleSink())
    if cfg.tensorboard and topology.is_main:
        from dist_face.metrics.tensorboard import TensorBoardSink  # the tensorboard extra

        sinks.append(TensorBoardSink(Path(run_dir) / "tensorboard"))
    if cfg.prometheus:
        from dist_face.metrics.prometheus import PrometheusSink  # prometheus_client only if used

        sinks.append(
            PrometheusSink(
                rank=topology.rank,
                node=topology.node_rank,
                job=cfg.job or job,
                info=info,
                pushgateway=cfg.pushgateway,
                push_every_s=cfg.push_every_s,
            )
        )
    return MultiSink(sinks)


def find_prometheus(sink: Sink) -> PrometheusSink | None:
    """The first :class:`PrometheusSink` in ``sink`` (searching through :class:`MultiSink`)."""
    from dist_face.metrics.prometheus import PrometheusSink

    if isinstance(sink, PrometheusSink):
        return sink
    for child in getattr(sink, "sinks", ()):
        found = find_prometheus(child)
        if found is not None:
            return found
    return None


def serve_metrics(sink: Sink, cfg: MetricsConfig, topology: Topology) -> Exporter | None:
    """Serve the Prometheus sink inside ``sink`` on ``cfg.host:cfg.base_port + local_rank``.

    A busy port is logged and yields ``None``: monitoring never stops a training run.

    Returns:
        The running exporter (close it at the end), or ``None`` without a Prometheus sink or
        when the port could not be bound.
    """
    prom = find_prometheus(sink)
    if prom is None:
        return None
    from dist_face.metrics.prometheus import start_exporter

    port = cfg.base_port + topology.local_rank
    try:
        exporter = start_exporter(prom, cfg.host, port)
    except OSError as exc:
        logger.warning(
            "metrics.base_port: cannot serve Prometheus metrics on %s:%d (%s); "
            "training goes on without the endpoint",
            cfg.host,
            port,
            exc,
        )
        return None
    logger.info("Prometheus metrics of rank %d: %s", topology.rank, exporter.url)
    return exporter
