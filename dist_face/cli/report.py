"""PNG report of training curves (``dist-face-report``).

Two sources: ``--run RUN_DIR`` (repeatable) reads the runs' own ``metrics-rank*.jsonl`` and
compares them on one figure; without it, the dashboard panels are queried from a Prometheus
server.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.extras import require
from dist_face.log import init_logging
from dist_face.metrics.report import ReportError, fetch, render

logger = logging.getLogger("dist_face.report")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``6h``, ``2d`` (or plain seconds) -> seconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"bad duration {text!r}; use e.g. 90s, 30m, 6h, 2d")
    return float(m.group(1)) * _UNITS.get(m.group(2) or "s", 1)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="dist-face-report", description=__doc__)
    p.add_argument(
        "--run",
        action="append",
        type=Path,
        default=[],
        help="run directory to draw from its metrics-rank*.jsonl (repeat to compare runs)",
    )
    p.add_argument("--prometheus", default="http://127.0.0.1:9090", help="server base URL")
    p.add_argument("--job", default=".+", help="regex of the runs' job label (the run name)")
    p.add_argument("--last", type=parse_duration, default=3600.0, help="time range (1h)")
    p.add_argument("--end", type=float, default=None, help="end, unix seconds (default: now)")
    p.add_argument("--step", type=parse_duration, default=None, help="resolution (range/300)")
    p.add_argument("--out", type=Path, default=Path("dist_face_report.png"))
    return p.parse_args(argv)


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Query, draw, print where the PNG went; return the exit code."""
    args = _parse(argv)
    init_logging()
    require("matplotlib", purpose="dist-face-report")
    if args.run:
        return _from_runs(args.run, args.out)
    end = args.end if args.end is not None else time.time()
    start = end - args.last
    step = args.step or max(1.0, args.last / 300)
    try:
        data = fetch(args.prometheus, args.job, start, end, step)
    except ReportError as exc:
        logger.error("%s", exc)
        return 1
    when = datetime.fromtimestamp(end, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
    title = f"dist_face: job=~{args.job!r}, {args.last / 60:g} min to {when}"
    out = render(data, args.out, title, start)
    for panel, lines in data:
        logger.info("%-45s %d series", panel.title, len(lines))
    print(out)
    return 0


def _from_runs(run_dirs: list[Path], out: Path) -> int:
    """Curves of ``run_dirs`` from their JSONL metrics into ``out``."""
    from dist_face.metrics.run_report import RunReportError, load_run, render_runs

    try:
        runs = [load_run(d) for d in run_dirs]
    except RunReportError as exc:
        logger.error("%s", exc)
        return 1
    if len({r.name for r in runs}) < len(runs):  # same run name under different roots
        for run, d in zip(runs, run_dirs):
            run.name = str(d)
    print(render_runs(runs, out))
    return 0
