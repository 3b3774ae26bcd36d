"""The dashboard's panels as a PNG, from a Prometheus server's HTTP API (for headless clusters).

Queries every :data:`~dist_face.metrics.panels.PANELS` expression with ``/api/v1/query_range``
and draws them with matplotlib (imported lazily: the ``report`` extra).
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dist_face.metrics.panels import PANELS, Panel


class ReportError(RuntimeError):
    """A query failed; the message names the server, the query and the reason."""


@dataclass(frozen=True)
class Series:
    """One returned time series.

    Attributes:
        labels: its label set.
        times: unix seconds, ``n`` of them.
        values: the values at ``times``.
    """

    labels: dict[str, str]
    times: list[float]
    values: list[float]


def query_range(
    url: str, expr: str, start: float, end: float, step: float, timeout: float = 30.0
) -> list[Series]:
    """Run one range query.

    Args:
        url: server base URL, e.g. ``http://127.0.0.1:9090``.
        expr: PromQL.
        start: first point, unix seconds.
        end: last point, unix seconds.
        step: resolution in seconds.
        timeout: HTTP timeout in seconds.

    Raises:
        ReportError: the server is unreachable or rejected the query.
    """
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    target = f"{url.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:  # 400/422 carry Prometheus's own error message
        detail = exc.read().decode(errors="replace")
        raise ReportError(f"{url}: query {expr!r} failed ({exc.code}): {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ReportError(f"{url}: cannot query {expr!r}: {exc}") from exc
    if body.get("status") != "success":
        raise ReportError(f"{url}: query {expr!r} failed: {body.get('error', body)}")
    return [
        Series(
            labels=r["metric"],
            times=[float(t) for t, _ in r["values"]],
            values=[float(v) for _, v in r["values"]],
        )
        for r in body["data"]["result"]
    ]


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Fill a Grafana legend format (``rank {{rank}}``) from ``labels``."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def fetch(
    url: str, job: str, start: float, end: float, step: float
) -> list[tuple[Panel, list[tuple[str, Series]]]]:
    """Every panel's series with their legends, for the runs whose job matches regex ``job``."""
    out = []
    for panel in PANELS:
        lines = []
        for q in panel.queries:
            for s in query_range(url, q.expr.replace("$job", job), start, end, step):
                lines.append((legend(q.legend, s.labels), s))
        out.append((panel, lines))
    return out


_SCALE = {"bytes": (2.0**30, "GiB"), "percentunit": (0.01, "%"), "s": (1.0, "s")}
_MAX_LINES = 12  # legends of more series than this are unreadable; the rest are drawn unlabelled


def render(
    data: list[tuple[Panel, list[tuple[str, Series]]]], out: Path, title: str, start: float
) -> Path:
    """Draw ``data`` (from :func:`fetch`) as a grid of panels into the PNG ``out``.

    The x axis is minutes since ``start``; bytes are shown in GiB, shares in percent.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    cols = 2
    rows = math.ceil(len(data) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11, 2.3 * rows), squeeze=False)
    for ax, (panel, lines) in zip(axes.flat, data):
        div, unit = _SCALE.get(panel.unit, (1.0, ""))
        for i, (name, s) in enumerate(lines):
            minutes = [(t - start) / 60 for t in s.times]
            label = name if i < _MAX_LINES else None
            ax.plot(minutes, [v / div for v in s.values], label=label, linewidth=1.2)
        ax.set_title(panel.title + (f" [{unit}]" if unit else ""), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(fontsize=6, loc="best", ncol=2 if len(lines) > 4 else 1)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in axes.flat[len(data) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("minutes", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
