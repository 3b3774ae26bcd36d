"""The Prometheus sink and exporter: names, labels, counters from totals, pushes, a real scrape."""

from __future__ import annotations

import http.server
import logging
import resource
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from typing import ClassVar

import pytest
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dist_face.config.base import FieldError
from dist_face.config.schema import MetricsConfig
from dist_face.dist import Topology
from dist_face.metrics import MultiSink
from dist_face.metrics import prometheus as prom
from dist_face.metrics.build import build_info, build_sinks, find_prometheus, serve_metrics
from dist_face.metrics.perf import memory_stats
from dist_face.metrics.prometheus import METRICS, PrometheusSink, exported_names, start_exporter

LABELS = {"job": "j", "node": "1", "rank": "3"}
# one log record of the trainer as LogHook and EvalHook emit it, plus the documented extra keys
RECORD = {
    "train/loss": 7.25,
    "train/lr": 0.1,
    "train/loss_scale": 65536.0,
    "train/skipped_steps": 1,
    "train/grad_norm": 3.5,
    "train/samples_per_s": 1234.5,
    "train/rank_samples_per_s": 617.0,
    "train/rank_samples_per_s_min": 600.0,
    "train/rank_samples_per_s_max": 634.5,
    "time/data_wait_share": 0.05,
    "time/step_s": 0.25,
    "time/data_wait_s": 0.0125,
    "time/forward_s": 0.08,
    "time/backward_s": 0.1,
    "time/head_comm_s": 0.03,
    "time/optimizer_s": 0.02,
    "progress/epoch": 2,
    "progress/total_steps": 1000,
    "progress/eta_s": 3600.0,
    "data/corrupt_records": 0,
    "memory/rss_bytes": 2.0e9,
    "eval/lfw/accuracy": 0.99,
    "eval/lfw/tar_at_far_0.001": 0.95,
    "unknown/key": 1,
}


def _parse(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _samples(sink: PrometheusSink) -> dict[tuple[str, tuple], float]:
    return _parse(generate_latest(sink.registry).decode())


def _key(name: str, **extra: str) -> tuple[str, tuple]:
    return name, tuple(sorted({**LABELS, **extra}.items()))


def test_values_names_and_labels() -> None:
    sink = PrometheusSink(rank=3, node=1, job="j", info={"recipe": "debug_cpu"})
    sink.log(RECORD, step=10)
    sink.log({"train/skipped_steps": 3, "train/loss": 6.5}, step=20)
    got = _samples(sink)
    assert got[_key("dist_face_samples_per_second")] == 1234.5
    assert got[_key("dist_face_rank_samples_per_second")] == 617.0
    assert got[_key("dist_face_fastest_rank_samples_per_second")] == 634.5
    assert got[_key("dist_face_loss")] == 6.5
    assert got[_key("dist_face_step")] == 20
    assert got[_key("dist_face_step_seconds")] == 0.25
    assert got[_key("dist_face_step_phase_seconds", phase="forward")] == 0.08
    assert got[_key("dist_face_step_phase_seconds", phase="head_comm")] == 0.03
    assert got[_key("dist_face_skipped_steps_total")] == 3  # running totals become increments
    assert got[_key("dist_face_corrupt_records_total")] == 0  # present before the first one
    assert got[_key("dist_face_resident_memory_bytes")] == 2.0e9
    assert got[_key("dist_face_eval", target="lfw", metric="accuracy")] == 0.99
    assert got[_key("dist_face_eval", target="lfw", metric="tar_at_far_0.001")] == 0.95
    assert got[_key("dist_face_build_info", recipe="debug_cpu")] == 1
    ours = {name for name, _ in got if not name.startswith("process_")}
    assert {n for n in ours if not n.endswith("_created")} <= exported_names()
    # every key sent shows up under its documented name
    sent = [METRICS[k] for k in RECORD if k in METRICS]
    assert {s.name + ("_total" if s.counter else "") for s in sent} <= ours


def test_unsent_gauges_are_absent_not_zero() -> None:
    sink = PrometheusSink(rank=3, node=1, job="j")
    sink.log({"train/loss": 1.0, "memory/rss_bytes": 1e9}, step=1)  # no phases, no CUDA memory
    names = {name for name, _ in _samples(sink)}
    assert {"dist_face_loss", "dist_face_resident_memory_bytes"} <= names
    assert not names & {"dist_face_step_phase_seconds", "dist_face_device_memory_allocated_bytes"}
    assert "dist_face_skipped_steps_total" in names  # counters start at 0 for rate()


def test_counter_follows_a_restarted_total() -> None:
    sink = PrometheusSink(rank=3, node=1, job="j")
    for total in (2, 5, 1, 3):  # the count restarts at 1 (a resumed process): +2 more after it
        sink.log({"data/corrupt_records": total}, step=1)
    assert _samples(sink)[_key("dist_face_corrupt_records_total")] == 5 + 2


def test_step_time_is_derived_when_not_sent(monkeypatch) -> None:
    clock = iter([100.0, 105.0, 105.5])
    monkeypatch.setattr(prom.time, "monotonic", lambda: next(clock))
    sink = PrometheusSink(rank=3, node=1, job="j")
    sink.log({"train/rank_samples_per_s": 1.0}, step=10)
    assert _key("dist_face_step_seconds") not in _samples(sink)  # no interval yet
    sink.log({"train/rank_samples_per_s": 1.0}, step=20)
    assert _samples(sink)[_key("dist_face_step_seconds")] == pytest.approx(0.5)
    sink.log({"eval/lfw/accuracy": 0.9}, step=20)  # evaluation records do not count
    sink.log({"train/rank_samples_per_s": 1.0, "time/step_s": 0.125}, step=25)  # sent wins
    assert _samples(sink)[_key("dist_face_step_seconds")] == 0.125


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exporter_serves_on_loopback_and_frees_its_port() -> None:
    sink = PrometheusSink(rank=0, node=0, job="j")
    sink.log({"train/samples_per_s": 42.0}, step=1)
    port = _free_port()
    with start_exporter(sink, "127.0.0.1", port) as exporter:
        assert exporter.url == f"http://127.0.0.1:{port}/metrics"
        body = urllib.request.urlopen(exporter.url, timeout=10).read()
    assert b'dist_face_samples_per_second{job="j",node="0",rank="0"} 42.0' in body
    with socket.socket() as s:  # closed: the port can be bound again (the way servers bind:
        # SO_REUSEADDR ignores the client connection's TIME_WAIT, never a listening socket)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_promtool_accepts_the_served_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; tests/run.sh adds it)")
    sink = PrometheusSink(rank=0, node=0, job="j", info=build_info("debug_cpu", 2))
    sink.log(RECORD, step=1)
    sink.log({**RECORD, "train/skipped_steps": 2}, step=2)
    with start_exporter(sink, "127.0.0.1", 0) as exporter:
        text = urllib.request.urlopen(exporter.url, timeout=10).read()
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert b"dist_face_step_phase_seconds" in text


class _Gateway(http.server.BaseHTTPRequestHandler):
    """Records pushes like a Pushgateway would receive them."""

    pushes: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_PUT(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.pushes.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_periodic_and_final_pushes_group_by_job_and_rank() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Gateway.pushes = []
    try:
        url = f"127.0.0.1:{server.server_address[1]}"
        sink = PrometheusSink(rank=1, node=0, job="run7", pushgateway=url, push_every_s=0.1)
        sink.log({"train/loss": 3.0}, step=5)
        deadline = time.monotonic() + 10
        while len(_Gateway.pushes) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(_Gateway.pushes) >= 2, "no periodic pushes"
        sink.log({"train/loss": 2.0}, step=6)
        sink.close()
        count = len(_Gateway.pushes)
        time.sleep(0.3)
        assert len(_Gateway.pushes) == count  # the push thread has stopped
    finally:
        server.shutdown()
        server.server_close()
    method, path, body = _Gateway.pushes[-1]
    assert (method, path) == ("PUT", "/metrics/job/run7/rank/1")
    assert b'dist_face_loss{job="run7",node="0",rank="1"} 2.0' in body


def test_failed_push_does_not_raise(caplog) -> None:
    sink = PrometheusSink(rank=0, node=0, job="j", pushgateway=f"127.0.0.1:{_free_port()}")
    with caplog.at_level(logging.WARNING):
        sink.close()  # connection refused is logged, never raised into the training run
    assert "push to Pushgateway" in caplog.text


def test_build_sinks_and_serve_per_local_rank(tmp_path, caplog) -> None:
    topo = Topology(rank=3, world_size=4, local_rank=1, local_world_size=2, node_rank=1)
    off = build_sinks(MetricsConfig(), topo, tmp_path)
    assert find_prometheus(off) is None and serve_metrics(off, MetricsConfig(), topo) is None
    base = _free_port() - 1  # local rank 1 serves base + 1, a port known to be free
    cfg = MetricsConfig(prometheus=True, base_port=base)
    sink = build_sinks(cfg, topo, tmp_path, job="fallback", info=build_info("r", 4))
    assert isinstance(sink, MultiSink)
    prom_sink = find_prometheus(sink)
    assert prom_sink is not None
    assert prom_sink.labels == {"job": "fallback", "node": "1", "rank": "3"}
    exporter = serve_metrics(sink, cfg, topo)
    assert exporter is not None and exporter.port == base + 1
    try:
        with caplog.at_level(logging.WARNING):  # the port is taken now: logged, not raised
            assert serve_metrics(sink, cfg, topo) is None
        assert "metrics.base_port" in caplog.text
    finally:
        exporter.close()
    sink.close()
    assert (tmp_path / "metrics-rank3.jsonl").exists()


def test_build_info_and_config_checks() -> None:
    info = build_info("debug_cpu", 8, backbone="r50")
    assert info["recipe"] == "debug_cpu" and info["world_size"] == "8" and info["backbone"] == "r50"
    assert info["version"] != ""
    if shutil.which("git"):  # the tests run from a checkout
        assert len(info["git_commit"]) == 12 and int(info["git_commit"], 16) >= 0
    with pytest.raises(FieldError, match="push_every_s"):
        MetricsConfig(push_every_s=-1)
    with pytest.raises(FieldError, match="base_port"):
        MetricsConfig(base_port=70000)


def test_cpu_memory_is_the_resident_set() -> None:
    stats = memory_stats(torch.device("cpu"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    assert 10e6 < stats["memory/rss_bytes"] <= peak * 1.01
