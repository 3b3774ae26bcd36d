"""The monitoring panels, defined once: the Grafana dashboard and the PNG report both use them.

Every query selects the run with ``job=~"$job"``; Grafana fills ``$job`` from its variable,
:mod:`dist_face.metrics.report` substitutes the regex given on its command line. Metrics the
sink exports once per rank but that are the same on every rank (loss, learning rate) are
reduced ``by (job)`` with ``max``/``avg`` so a 64-rank job still draws one line.
"""

from __future__ import annotations

from dataclasses import dataclass

_EVAL_METRICS = 'metric=~"accuracy|eer|tar_at_far.*"'  # not the threshold: another scale
RATE_WINDOW = "2m"  # rate() window: at least 4 scrapes at the 15-30 s intervals clusters use


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel and the legend of its series.

    Attributes:
        expr: PromQL with ``$job`` where the job regex goes.
        legend: Grafana legend format; ``{{label}}`` is replaced by the series' label value.
    """

    expr: str
    legend: str


@dataclass(frozen=True)
class Panel:
    """A time-series panel.

    Attributes:
        title: panel title.
        unit: Grafana unit id (``short``, ``s``, ``bytes``, ``percentunit``).
        queries: what it draws.
    """

    title: str
    unit: str
    queries: tuple[Query, ...]


def _sel(metric: str, extra: str = "") -> str:
    """``metric{job=~"$job"<,extra>}``."""
    return f'{metric}{{job=~"$job"{"," + extra if extra else ""}}}'


PANELS: tuple[Panel, ...] = (
    Panel(
        "Throughput (samples/s)",
        "short",
        (
            Query(f"sum by (job) ({_sel('dist_face_rank_samples_per_second')})", "global"),
            Query(_sel("dist_face_rank_samples_per_second"), "rank {{rank}}"),
        ),
    ),
    Panel(
        "Step time by phase",
        "s",
        (
            Query(f"max by (job) ({_sel('dist_face_step_seconds')})", "step (slowest rank)"),
            Query(f"max by (job, phase) ({_sel('dist_face_step_phase_seconds')})", "{{phase}}"),
        ),
    ),
    Panel("Loss", "short", (Query(f"avg by (job) ({_sel('dist_face_loss')})", "loss"),)),
    Panel(
        "Loss scale", "short", (Query(f"max by (job) ({_sel('dist_face_loss_scale')})", "scale"),)
    ),
    Panel(
        "Skipped steps per minute",
        "short",
        (
            # every rank skips the same (global) steps: max, not sum
            Query(
                f"60 * max by (job) (rate({_sel('dist_face_skipped_steps_total')}[{RATE_WINDOW}]))",
                "skipped/min",
            ),
        ),
    ),
    Panel(
        "Learning rate",
        "short",
        (Query(f"max by (job) ({_sel('dist_face_learning_rate')})", "lr"),),
    ),
    Panel(
        "Memory",
        "bytes",
        (
            Query(_sel("dist_face_device_memory_allocated_bytes"), "allocated rank {{rank}}"),
            Query(_sel("dist_face_device_memory_reserved_bytes"), "reserved rank {{rank}}"),
            Query(_sel("dist_face_resident_memory_bytes"), "RSS rank {{rank}}"),
        ),
    ),
    Panel(
        "Data wait (share of wall time, worst rank)",
        "percentunit",
        (Query(f"max by (job) ({_sel('dist_face_data_wait_ratio')})", "data wait"),),
    ),
    Panel(
        "Evaluation",
        "short",
        (
            Query(
                f"max by (job, target, metric) ({_sel('dist_face_eval', _EVAL_METRICS)})",
                "{{target}} {{metric}}",
            ),
        ),
    ),
    Panel(
        "Progress and corrupt records",
        "short",
        (
            Query(
                f"max by (job) ({_sel('dist_face_step')})"
                f" / max by (job) ({_sel('dist_face_total_steps')})",
                "done (fraction)",
            ),
            # every rank exports the sum over ranks (gathered on log steps)
            Query(
                f"max by (job) "
                f"(increase({_sel('dist_face_corrupt_records_total')}[{RATE_WINDOW}]))",
                "corrupt records / 2 min",
            ),
        ),
    ),
)
