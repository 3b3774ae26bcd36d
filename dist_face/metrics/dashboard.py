"""Grafana dashboard JSON generated from :data:`dist_face.metrics.panels.PANELS`.

``python tools/make_dashboard.py`` rewrites ``configs/monitoring/grafana/dist_face.json``; a test
checks that the committed file matches, so the dashboard and the PNG report never drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from dist_face.metrics.panels import PANELS, Panel

_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_WIDTH, _HEIGHT = 12, 8  # two panels per row on Grafana's 24-column grid


def _panel(index: int, panel: Panel) -> dict[str, Any]:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": panel.title,
        "datasource": _DATASOURCE,
        "gridPos": {
            "x": (index % 2) * _WIDTH,
            "y": (index // 2) * _HEIGHT,
            "w": _WIDTH,
            "h": _HEIGHT,
        },
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(panel.queries)
        ],
    }


def grafana_dashboard() -> dict[str, Any]:
    """The dashboard as a JSON-ready dict, with ``datasource`` and ``job`` variables."""
    return {
        "uid": "dist-face-training",
        "title": "dist_face training",
        "tags": ["dist_face"],
        "timezone": "browser",
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {
                    "name": "job",
                    "label": "run (job)",
                    "type": "query",
                    "datasource": _DATASOURCE,
                    "query": "label_values(dist_face_step, job)",
                    "refresh": 2,
                    "multi": True,
                    "includeAll": True,
                    "allValue": ".+",
                },
            ]
        },
        "panels": [_panel(i, p) for i, p in enumerate(PANELS)],
    }


def dashboard_json() -> str:
    """:func:`grafana_dashboard` as the text of the committed file."""
    return json.dumps(grafana_dashboard(), indent=2) + "\n"
