"""Prometheus exposition of the trainer's metrics: one registry per process, never the global one.

:class:`PrometheusSink` maps the sink keys emitted by the trainer's hooks to Prometheus metrics
named by its conventions (``dist_face_`` prefix, base units, ``_total`` counters) and labelled
with ``rank``, ``node`` and ``job``. Only the entry point starts the HTTP exporter
(:func:`start_exporter`, one port per local rank); :meth:`PrometheusSink.close` pushes the last
values to a Pushgateway when one is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    ProcessCollector,
    push_to_gateway,
    start_http_server,
)

from dist_face.metrics.sinks import Sink

logger = logging.getLogger(__name__)
_LABELS = ("job", "node", "rank")

#: sink key -> (Prometheus gauge name, help)
GAUGES: dict[str, tuple[str, str]] = {
    "train/samples_per_s": ("dist_face_samples_per_second", "Training throughput of all ranks"),
    "train/rank_samples_per_s": ("dist_face_rank_samples_per_second", "This rank's throughput"),
    "train/rank_samples_per_s_min": (
        "dist_face_slowest_rank_samples_per_second",
        "Throughput of the slowest rank",
    ),
    "train/loss": ("dist_face_loss", "Training loss of the global batch"),
    "train/lr": ("dist_face_learning_rate", "Learning rate of the backbone"),
    "train/loss_scale": ("dist_face_loss_scale", "Dynamic loss scale (1 for bf16 and fp32)"),
    "train/grad_norm": ("dist_face_grad_norm", "Backbone gradient L2 norm before clipping"),
    "time/data_wait_share": (
        "dist_face_data_wait_ratio",
        "Share of wall time spent waiting for data (worst rank)",
    ),
    "progress/epoch": ("dist_face_epoch", "Current epoch"),
    "progress/total_steps": ("dist_face_total_steps", "Optimizer steps of the run"),
    "progress/eta_s": ("dist_face_eta_seconds", "Estimated time to the end of the run"),
    "memory/rss_bytes": ("dist_face_resident_memory_bytes", "Resident memory of the process"),
    "memory/device_allocated_bytes": (
        "dist_face_device_memory_allocated_bytes",
        "Device memory held by tensors",
    ),
    "memory/device_reserved_bytes": (
        "dist_face_device_memory_reserved_bytes",
        "Device memory reserved by the caching allocator",
    ),
}
#: sink key (a running total) -> (Prometheus counter name without _total, help)
COUNTERS: dict[str, tuple[str, str]] = {
    "train/skipped_steps": ("dist_face_skipped_steps", "Steps skipped for inf/NaN gradients"),
    "data/corrupt_records": ("dist_face_corrupt_records", "Records skipped as undecodable"),
}


class PrometheusSink(Sink):
    """Keeps the latest value of every known metric in its own registry.

    Args:
        rank, node, job: label values of every sample.
        info: build and config facts exported as ``dist_face_build_info``.
        pushgateway: ``host:port`` of a Pushgateway to push to on :meth:`push` and
            :meth:`close`; empty for none.
    """

    def __init__(
        self,
        *,
        rank: int,
        node: int,
        job: str,
        info: Mapping[str, str] | None = None,
        pushgateway: str = "",
    ) -> None:
        """Create the registry and its metrics."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds
        self.labels = {"job": job, "node": str(node), "rank": str(rank)}
        self.pushgateway = pushgateway
        self._gauges = {
            k: Gauge(n, h, _LABELS, registry=self.registry) for k, (n, h) in GAUGES.items()
        }
        self._counters = {
            k: Counter(n, h, _LABELS, registry=self.registry) for k, (n, h) in COUNTERS.items()
        }
        self._totals = dict.fromkeys(COUNTERS, 0.0)
        for counter in self._counters.values():  # exported at 0 from the start, for rate()
            counter.labels(**self.labels)
        self._step = Gauge(
            "dist_face_step", "Optimizer steps done", _LABELS, registry=self.registry
        )
        self._eval = Gauge(
            "dist_face_eval",
            "Latest verification result",
            (*_LABELS, "target", "metric"),
            registry=self.registry,
        )
        build = Info("dist_face_build", "Build and run facts", _LABELS, registry=self.registry)
        build.labels(**self.labels).info(dict(info or {}))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Update the metrics present in ``metrics``; unknown keys are ignored."""
        self._step.labels(**self.labels).set(step)
        for key, value in metrics.items():
            if key in self._gauges:
                self._gauges[key].labels(**self.labels).set(value)
            elif key in self._counters:  # sinks get running totals; counters take increments
                delta = float(value) - self._totals[key]
                if delta > 0:
                    self._counters[key].labels(**self.labels).inc(delta)
                    self._totals[key] = float(value)
            elif key.startswith("eval/") and key.count("/") == 2:
                _, target, metric = key.split("/")
                self._eval.labels(**self.labels, target=target, metric=metric).set(value)

    def push(self) -> None:
        """Push the current values to the Pushgateway (grouped by job and rank), if configured."""
        if not self.pushgateway:
            return
        try:
            push_to_gateway(
                self.pushgateway,
                job=self.labels["job"],
                registry=self.registry,
                grouping_key={"rank": self.labels["rank"]},
            )
        except OSError as exc:  # monitoring must never kill a training run
            logger.warning("push to Pushgateway %s failed: %s", self.pushgateway, exc)

    def close(self) -> None:
        """Push the final values."""
        self.push()


def start_exporter(registry: CollectorRegistry, host: str, port: int) -> WSGIServer:
    """Serve ``registry`` at ``http://host:port/metrics`` (a daemon thread); return the server."""
    server, _ = start_http_server(port, addr=host, registry=registry)
    return server
