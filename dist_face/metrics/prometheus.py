"""Prometheus exposition of the trainer's metrics: one registry per process, never the global one.

:class:`PrometheusSink` maps the sink keys emitted by the trainer's hooks to Prometheus metrics
named by its conventions (``dist_face_`` prefix, base units, ``_total`` counters) and labelled
with ``rank``, ``node`` and ``job``; :data:`METRICS` is the one table of that mapping. Only the
entry point starts the HTTP exporter (:func:`start_exporter`, one port per local rank); the sink
pushes to a Pushgateway periodically when asked and once more on :meth:`PrometheusSink.close`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
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
LABELS = ("job", "node", "rank")
PUSH_TIMEOUT_S = 5.0  # a slow Pushgateway must not hold the push thread (or close) for long


@dataclass(frozen=True)
class MetricSpec:
    """How one sink key is exported.

    Attributes:
        name: Prometheus metric name; counters without their ``_total`` suffix.
        help: the HELP text.
        counter: the key carries a running total, exported as a counter of its increments.
        labels: constant extra labels of this key's series (e.g. ``{"phase": "forward"}``).
    """

    name: str
    help: str
    counter: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)


_PHASE = ("dist_face_step_phase_seconds", "Mean wall time per step spent in one phase")
#: sink key -> how it is exported. Keys the trainer does not send simply never appear.
METRICS: dict[str, MetricSpec] = {
    # throughput
    "train/samples_per_s": MetricSpec(
        "dist_face_samples_per_second", "Training throughput of all ranks (same on every rank)"
    ),
    "train/rank_samples_per_s": MetricSpec(
        "dist_face_rank_samples_per_second", "This rank's training throughput"
    ),
    "train/rank_samples_per_s_min": MetricSpec(
        "dist_face_slowest_rank_samples_per_second", "Throughput of the slowest rank"
    ),
    "train/rank_samples_per_s_max": MetricSpec(
        "dist_face_fastest_rank_samples_per_second", "Throughput of the fastest rank"
    ),
    # step time and its parts (mean seconds per step over the last log interval)
    "time/step_s": MetricSpec("dist_face_step_seconds", "Mean wall time of one optimizer step"),
    "time/data_wait_share": MetricSpec(
        "dist_face_data_wait_ratio", "Share of wall time spent waiting for data (worst rank)"
    ),
    "time/data_wait_s": MetricSpec(*_PHASE, labels={"phase": "data_wait"}),
    "time/forward_s": MetricSpec(*_PHASE, labels={"phase": "forward"}),
    "time/backward_s": MetricSpec(*_PHASE, labels={"phase": "backward"}),
    "time/head_comm_s": MetricSpec(*_PHASE, labels={"phase": "head_comm"}),
    "time/optimizer_s": MetricSpec(*_PHASE, labels={"phase": "optimizer"}),
    # optimisation
    "train/loss": MetricSpec("dist_face_loss", "Training loss of the global batch"),
    "train/lr": MetricSpec("dist_face_learning_rate", "Learning rate of the backbone"),
    "train/loss_scale": MetricSpec(
        "dist_face_loss_scale", "Dynamic loss scale (1 for bf16 and fp32)"
    ),
    "train/grad_norm": MetricSpec(
        "dist_face_grad_norm", "Backbone gradient L2 norm before clipping"
    ),
    "train/skipped_steps": MetricSpec(
        "dist_face_skipped_steps", "Steps skipped for inf/NaN gradients", counter=True
    ),
    "data/corrupt_records": MetricSpec(
        "dist_face_corrupt_records",
        "Records skipped for a CRC-32 mismatch or a failed decode, summed over ranks",
        counter=True,
    ),
    # progress
    "progress/epoch": MetricSpec("dist_face_epoch", "Current epoch"),
    "progress/total_steps": MetricSpec("dist_face_total_steps", "Optimizer steps of the run"),
    "progress/eta_s": MetricSpec("dist_face_eta_seconds", "Estimated time to the end of the run"),
    # memory (dist_face.metrics.perf.memory_stats)
    "memory/rss_bytes": MetricSpec(
        "dist_face_resident_memory_bytes", "Resident memory of the process"
    ),
    "memory/device_allocated_bytes": MetricSpec(
        "dist_face_device_memory_allocated_bytes", "Device memory held by tensors"
    ),
    "memory/device_reserved_bytes": MetricSpec(
        "dist_face_device_memory_reserved_bytes", "Device memory reserved by the caching allocator"
    ),
}
STEP_METRIC = "dist_face_step"
EVAL_METRIC = "dist_face_eval"
INFO_METRIC = "dist_face_build"  # exported as dist_face_build_info


def exported_names() -> set[str]:
    """Every metric name this sink can expose (counters with ``_total``, info with ``_info``)."""
    names = {s.name + ("_total" if s.counter else "") for s in METRICS.values()}
    return names | {STEP_METRIC, EVAL_METRIC, INFO_METRIC + "_info"}


class PrometheusSink(Sink):
    """Keeps the latest value of every known metric in its own registry.

    Args:
        rank, node, job: label values of every sample.
        info: build and config facts exported as ``dist_face_build_info``.
        pushgateway: ``host:port`` (or URL) of a Pushgateway; empty for none.
        push_every_s: also push from a background thread every this many seconds
            (0: only on :meth:`close`).
    """

    def __init__(
        self,
        *,
        rank: int,
        node: int,
        job: str,
        info: Mapping[str, str] | None = None,
        pushgateway: str = "",
        push_every_s: float = 0.0,
    ) -> None:
        """Create the registry and its metrics (and the push thread when asked)."""
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds
        self.labels = {"job": job, "node": str(node), "rank": str(rank)}
        self.pushgateway = pushgateway
        self._families: dict[str, Counter | Gauge] = {}
        self._series: dict[str, Counter | Gauge] = {}
        for key, spec in METRICS.items():
            family = self._family(spec)
            if spec.counter:  # at 0 from the start, so rate() sees the first increment
                self._series[key] = family.labels(**self.labels, **spec.labels)
        self._totals = {k: 0.0 for k, s in METRICS.items() if s.counter}
        self._step = Gauge(STEP_METRIC, "Optimizer steps done", LABELS, registry=self.registry)
        self._eval = Gauge(
            EVAL_METRIC,
            "Latest verification result",
            (*LABELS, "target", "metric"),
            registry=self.registry,
        )
        build = Info(INFO_METRIC, "Build and run facts", LABELS, registry=self.registry)
        build.labels(**self.labels).info({k: str(v) for k, v in (info or {}).items()})
        self._last_train: tuple[float, int] | None = None  # (monotonic time, step)
        self._stop = threading.Event()
        self._pusher: threading.Thread | None = None
        if pushgateway and push_every_s > 0:
            self._pusher = threading.Thread(
                target=self._push_loop, args=(push_every_s,), name="pushgateway", daemon=True
            )
            self._pusher.start()

    def _family(self, spec: MetricSpec) -> Counter | Gauge:
        family = self._families.get(spec.name)  # the step phases share one family
        if family is None:
            cls = Counter if spec.counter else Gauge
            family = cls(spec.name, spec.help, (*LABELS, *spec.labels), registry=self.registry)
            self._families[spec.name] = family
        return family

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Update the metrics present in ``metrics``; unknown keys are ignored.

        Counter keys carry running totals (as the log hook reads them); their increments are
        added, so a total that goes down (a restart of the count) adds nothing.
        """
        self._step.labels(**self.labels).set(step)
        if "train/rank_samples_per_s" in metrics and "time/step_s" not in metrics:
            metrics = {**metrics, **self._step_time(step)}
        for key, value in metrics.items():
            if key in self._totals:
                delta = float(value) - self._totals[key]
                if delta > 0:
                    self._series[key].inc(delta)
                self._totals[key] = float(value)
            elif key in METRICS:  # gauges appear once sent: no fake zeros for unsent phases
                self._gauge(key).set(float(value))
            elif key.startswith("eval/") and key.count("/") == 2:
                _, target, metric = key.split("/")
                self._eval.labels(**self.labels, target=target, metric=metric).set(value)

    def _gauge(self, key: str) -> Gauge:
        child = self._series.get(key)
        if child is None:
            spec = METRICS[key]
            child = self._families[spec.name].labels(**self.labels, **spec.labels)
            self._series[key] = child
        return child

    def _step_time(self, step: int) -> dict[str, float]:
        """``time/step_s`` from the wall time between two training records, when not sent.

        This fallback includes pauses for evaluation and checkpoints; a trainer that times
        its steps sends ``time/step_s`` itself.
        """
        now, last = time.monotonic(), self._last_train
        self._last_train = (now, step)
        if last is None or step <= last[1]:
            return {}
        return {"time/step_s": (now - last[0]) / (step - last[1])}

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
                timeout=PUSH_TIMEOUT_S,
            )
        except OSError as exc:  # monitoring must never kill a training run
            logger.warning("push to Pushgateway %s failed: %s", self.pushgateway, exc)

    def _push_loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.push()

    def close(self) -> None:
        """Stop periodic pushes and push the final values."""
        self._stop.set()
        if self._pusher is not None:
            self._pusher.join(timeout=PUSH_TIMEOUT_S + 1)
        self.push()


class Exporter:
    """A running ``/metrics`` endpoint; :meth:`close` stops it and frees the port.

    Attributes:
        host, port: where it listens (``port`` is the bound one, also when 0 was asked).
    """

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        """Wrap a server started by :func:`start_exporter`."""
        self._server, self._thread = server, thread
        self.host, self.port = server.server_address[:2]

    @property
    def url(self) -> str:
        """``http://host:port/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_exporter(source: PrometheusSink | CollectorRegistry, host: str, port: int) -> Exporter:
    """Serve a sink's registry at ``http://host:port/metrics`` from a daemon thread.

    Args:
        source: a :class:`PrometheusSink` or a registry.
        host: bind address (127.0.0.1 keeps it local; 0.0.0.0 lets a cluster scrape it).
        port: TCP port; 0 picks a free one (see :attr:`Exporter.port`).

    Raises:
        OSError: the port is taken or the address cannot be bound.
    """
    registry = source.registry if isinstance(source, PrometheusSink) else source
    server, thread = start_http_server(port, addr=host, registry=registry)
    return Exporter(server, thread)
