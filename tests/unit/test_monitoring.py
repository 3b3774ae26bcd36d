"""Dashboard, scrape config and alert rules: valid for promtool, tested, in step with the sink."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dist_face.metrics.dashboard import dashboard_json, grafana_dashboard
from dist_face.metrics.panels import PANELS
from dist_face.metrics.prometheus import exported_names

MONITORING = Path(__file__).resolve().parents[2] / "configs" / "monitoring"
RECORDED = {"job:dist_face_samples_per_second:sum"}


def _promtool(*args: str) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; tests/run.sh adds it)")
    return subprocess.run(
        [promtool, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60
    )


def _names(expr: str) -> set[str]:
    return set(re.findall(r"\b(?:job:)?dist_face_[a-z_:]+", expr))


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "alerts.yml"),
        ("check", "config", "prometheus.yml"),
        ("test", "rules", "alerts_test.yml"),  # each alert fires on its pattern, not before
    ],
    ids=lambda a: " ".join(a),
)
def test_promtool(args: tuple[str, ...]) -> None:
    result = _promtool(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_committed_dashboard_is_generated_from_the_panels() -> None:
    committed = (MONITORING / "grafana" / "dist_face.json").read_text()
    assert committed == dashboard_json(), "run: python tools/make_dashboard.py"
    panels = grafana_dashboard()["panels"]
    assert [p["title"] for p in panels] == [p.title for p in PANELS]
    assert len({(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels}) == len(panels)


def test_queries_only_use_exported_metrics() -> None:
    known = exported_names() | RECORDED
    exprs = [q.expr for p in PANELS for q in p.queries]
    rules = [r for g in yaml.safe_load(_read("alerts.yml"))["groups"] for r in g["rules"]]
    exprs += [r["expr"] for r in rules]
    used = set().union(*map(_names, exprs))
    assert used and used <= known, used - known
    assert {"dist_face_step_phase_seconds", "dist_face_rank_samples_per_second"} <= used
    for expr in (q.expr for p in PANELS for q in p.queries):
        assert 'job=~"$job"' in expr, expr  # every panel follows the dashboard's run selector


def test_file_sd_example_is_valid_json_with_targets() -> None:
    groups = json.loads(_read("targets/example.json"))
    assert all(re.fullmatch(r"[\w.-]+:\d+", t) for g in groups for t in g["targets"])


def _read(name: str) -> str:
    return (MONITORING / name).read_text()
