"""Training curves from a run's own ``metrics-rank*.jsonl`` files (no metrics server needed).

Every rank's :class:`~dist_face.metrics.sinks.JsonlSink` writes one JSON object per log step
(``{"step": …, "time": …, "train/loss": …}``) and per evaluation (``eval/NAME/accuracy`` …).
:func:`load_run` reads them back; :func:`render_runs` draws one figure with a panel per
quantity and one line per run (per rank for the per-rank throughput), so several runs can be
compared on the same axes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


class RunReportError(ValueError):
    """A run directory has no readable metrics; the message names the file and line."""


@dataclass
class RunMetrics:
    """Series of one run: ``series[rank][key] = [(step, value), …]`` in file order."""

    name: str
    series: dict[int, dict[str, list[tuple[int, float]]]] = field(default_factory=dict)

    def get(self, key: str, rank: int = 0) -> list[tuple[int, float]]:
        """``(step, value)`` points of ``key`` on ``rank`` (empty if never logged)."""
        return self.series.get(rank, {}).get(key, [])

    def keys(self) -> set[str]:
        """Every metric name logged by any rank."""
        return {k for per_rank in self.series.values() for k in per_rank}


_RANK_FILE = re.compile(r"metrics-rank(\d+)\.jsonl")


def load_run(run_dir: str | Path) -> RunMetrics:
    """Read every ``metrics-rank<r>.jsonl`` of ``run_dir``.

    A truncated last line (a run killed while writing) is skipped; any other line that is not
    a JSON object with an integer ``step`` is an error.

    Raises:
        RunReportError: no metrics file, or a malformed line (file and line number named).
    """
    run_dir = Path(run_dir)
    files = sorted(
        (int(m.group(1)), p)
        for p in run_dir.glob("metrics-rank*.jsonl")
        if (m := _RANK_FILE.fullmatch(p.name))
    )
    if not files:
        raise RunReportError(f"{run_dir}: no metrics-rank*.jsonl (is it a run directory?)")
    run = RunMetrics(run_dir.name)
    for rank, path in files:
        per_key: dict[str, list[tuple[int, float]]] = {}
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                step = int(record["step"])
            except (ValueError, KeyError, TypeError) as exc:
                if number == len(lines):
                    break  # a half-written last line
                raise RunReportError(f"{path}:{number}: not a metrics record ({exc})") from None
            for key, value in record.items():
                if key in ("step", "time") or not isinstance(value, int | float):
                    continue
                per_key.setdefault(key, []).append((step, float(value)))
        run.series[rank] = per_key
    return run


@dataclass(frozen=True)
class CurvePanel:
    """One panel: a title and the metric keys drawn in it (``{rank}`` = every rank)."""

    title: str
    keys: tuple[str, ...]
    per_rank: bool = False
    log_y: bool = False


CURVE_PANELS: tuple[CurvePanel, ...] = (
    CurvePanel("training loss", ("train/loss",)),
    CurvePanel("samples/s per rank", ("train/rank_samples_per_s",), per_rank=True),
    CurvePanel("learning rate", ("train/lr",)),
    CurvePanel("fp16 loss scale", ("train/loss_scale",), log_y=True),
    CurvePanel("data-wait share of the step", ("time/data_wait_share",)),
    CurvePanel("evaluation accuracy", ("eval/*/accuracy",)),
    CurvePanel("evaluation EER", ("eval/*/eer",)),
)
LOSS_SCALE = "train/loss_scale"


def panels_for(runs: list[RunMetrics]) -> list[CurvePanel]:
    """The panels worth drawing for ``runs``: the loss-scale panel only for a scaled run.

    An fp32 or bf16 run logs a constant loss scale of 1 (no scaler); that panel would be a flat
    line, so it is left out unless some run's scale differs from 1.
    """
    scaled = any(v != 1.0 for run in runs for _, v in run.get(LOSS_SCALE))
    return [p for p in CURVE_PANELS if scaled or LOSS_SCALE not in p.keys]


def _matching(run: RunMetrics, pattern: str) -> list[str]:
    if "*" not in pattern:
        return [pattern]
    rx = re.compile(re.escape(pattern).replace(r"\*", "[^/]+"))
    return sorted(k for k in run.keys() if rx.fullmatch(k))


def panel_lines(
    panel: CurvePanel, runs: list[RunMetrics]
) -> list[tuple[str, int, list[int], list[float]]]:
    """What ``panel`` draws: ``(label, run index, steps, values)`` per line.

    One line per run (and per rank for per-rank panels, per evaluation target for ``*``);
    labels name the run only when several runs are compared.
    """
    lines = []
    for k, run in enumerate(runs):
        for pattern in panel.keys:
            for key in _matching(run, pattern):
                for rank in sorted(run.series) if panel.per_rank else [0]:
                    points = run.get(key, rank)
                    if not points:
                        continue
                    label = run.name if len(runs) > 1 else ""
                    if panel.per_rank:
                        label = f"{label} rank {rank}"
                    if "*" in pattern:
                        label = f"{label} {key.split('/')[1]}"
                    steps, values = zip(*points)
                    lines.append((label.strip(), k, list(steps), list(values)))
    return lines


def render_runs(runs: list[RunMetrics], out: str | Path, title: str = "") -> Path:
    """Draw :func:`panels_for` ``runs`` into the PNG ``out`` and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = panels_for(runs)
    rows = -(-len(panels) // 3)
    fig, axes = plt.subplots(rows, 3, figsize=(15, 3.75 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    styles = ["-", "--", ":", "-."]
    for ax, panel in zip(axes.flat, panels):
        lines = panel_lines(panel, runs)
        for label, k, steps, values in lines:
            ax.plot(steps, values, styles[k % len(styles)], label=label or None, lw=1.2)
        ax.set_title(panel.title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if not lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            continue
        if panel.log_y:
            ax.set_yscale("log")
        if any(label for label, *_ in lines):
            ax.legend(fontsize=7)
    fig.suptitle(title or ", ".join(r.name for r in runs))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
