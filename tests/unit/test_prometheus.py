"""The Prometheus sink and exporter: names, labels, counters from totals, a real scrape."""

from __future__ import annotations

import shutil
import socket
import subprocess
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dist_face.metrics.prometheus import COUNTERS, GAUGES, PrometheusSink, start_exporter

LABELS = {"job": "j", "node": "1", "rank": "3"}


def _samples(sink: PrometheusSink) -> dict[tuple[str, tuple], float]:
    text = generate_latest(sink.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _key(name: str, **extra: str) -> tuple[str, tuple]:
    return name, tuple(sorted({**LABELS, **extra}.items()))


def test_values_names_and_labels() -> None:
    sink = PrometheusSink(rank=3, node=1, job="j", info={"recipe": "debug_cpu"})
    sink.log(
        {
            "train/samples_per_s": 1234.5,
            "train/loss": 7.25,
            "train/skipped_steps": 1,
            "data/corrupt_records": 0,
            "eval/lfw/accuracy": 0.99,
            "unknown/key": 1,
        },
        step=10,
    )
    sink.log({"train/skipped_steps": 3, "train/loss": 6.5}, step=20)
    got = _samples(sink)
    assert got[_key("dist_face_samples_per_second")] == 1234.5
    assert got[_key("dist_face_loss")] == 6.5
    assert got[_key("dist_face_step")] == 20
    assert got[_key("dist_face_skipped_steps_total")] == 3  # running totals become increments
    assert got[_key("dist_face_corrupt_records_total")] == 0  # present before the first one
    assert got[_key("dist_face_eval", target="lfw", metric="accuracy")] == 0.99
    assert got[_key("dist_face_build_info", recipe="debug_cpu")] == 1
    for name, _ in got:
        assert name.startswith(("dist_face_", "process_")), name
    for name, _ in COUNTERS.values():
        assert name.startswith("dist_face_") and not name.endswith("_total")
    for name, _ in GAUGES.values():
        assert not name.endswith("_total")


def test_exporter_serves_the_registry_on_loopback() -> None:
    sink = PrometheusSink(rank=0, node=0, job="j")
    sink.log({"train/samples_per_s": 42.0}, step=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_exporter(sink.registry, "127.0.0.1", port)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        server.shutdown()
    assert b'dist_face_samples_per_second{job="j",node="0",rank="0"} 42.0' in body


def test_promtool_accepts_the_exposition(tmp_path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus')")
    sink = PrometheusSink(rank=0, node=0, job="j", info={"recipe": "x"})
    sink.log({k: 1.0 for k in [*GAUGES, *COUNTERS]}, step=1)
    text = generate_latest(sink.registry)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_failed_push_does_not_raise() -> None:
    sink = PrometheusSink(rank=0, node=0, job="j", pushgateway="127.0.0.1:1")
    sink.close()  # connection refused is logged, never raised into the training run
