"""A real Prometheus server scrapes two ranks' exporters; throughput is read back by its HTTP API.

The ranks are stand-ins (tests/helpers/metrics_rank.py) that log trainer-like records through
PrometheusSink; the server also loads the shipped alert rules. Loopback only.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from dist_face.cli.report import main as report_main
from dist_face.metrics.report import fetch

pytestmark = pytest.mark.dist
ROOT = Path(__file__).resolve().parents[2]
RANK = ROOT / "tests" / "helpers" / "metrics_rank.py"
JOB = "it_run"
RATES = {"0": 100.0, "1": 200.0}  # what metrics_rank.py reports per rank


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(url: str, expr: str) -> list[dict]:
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _wait(what: str, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}")


def _config(tmp: Path, targets: list[str]) -> Path:
    cfg = tmp / "prometheus.yml"
    cfg.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{ROOT / 'configs/monitoring/alerts.yml'}]\n"
        "scrape_configs:\n"
        "  - job_name: dist_face\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: {json.dumps(targets)}}}]\n"
    )
    return cfg


def test_real_server_scrapes_two_ranks(tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.skip("prometheus not installed (Debian package 'prometheus'; tests/run.sh adds it)")
    procs: list[subprocess.Popen] = []
    try:
        for rank in RATES:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(RANK), rank, JOB], stdout=subprocess.PIPE, text=True
                )
            )
        ports = [int(p.stdout.readline()) for p in procs]
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(
            subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={_config(tmp_path, [f'127.0.0.1:{p}' for p in ports])}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / "prometheus.log").open("w"),
            )
        )
        _wait("the server", lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2))
        per_rank = f'dist_face_rank_samples_per_second{{job="{JOB}"}}'
        _wait("two scraped ranks", lambda: len(_query(url, per_rank)) == 2)
        # at least two scrapes of each rank, so increases and the report have two points
        _wait("a second scrape", lambda: _query(url, f"count_over_time({per_rank}[1m]) >= 2"))

        got = {r["metric"]["rank"]: float(r["value"][1]) for r in _query(url, per_rank)}
        assert got == RATES
        total = _query(url, f'sum(dist_face_rank_samples_per_second{{job="{JOB}"}})')
        assert float(total[0]["value"][1]) == sum(RATES.values())
        reported = _query(url, f'dist_face_samples_per_second{{job="{JOB}"}}')
        assert [float(r["value"][1]) for r in reported] == [sum(RATES.values())] * 2
        # the shipped rules load and evaluate on real data (once both ranks are in)
        recorded = f'job:dist_face_samples_per_second:sum{{job="{JOB}"}} == {sum(RATES.values())}'
        _wait("the recording rule", lambda: _query(url, recorded))
        moved = f'delta(dist_face_step{{job="{JOB}"}}[1m]) > 0'
        _wait("both step counters to advance", lambda: len(_query(url, moved)) == 2)
        phases = _query(url, f'dist_face_step_phase_seconds{{job="{JOB}",rank="0"}}')
        assert {r["metric"]["phase"] for r in phases} == {
            "data_wait",
            "forward",
            "backward",
            "head_comm",
            "optimizer",
        }

        end = time.time()
        data = dict((p.title, lines) for p, lines in fetch(url, JOB, end - 60, end, 1.0))
        global_rate = [s for name, s in data["Throughput (samples/s)"] if name == "global"]
        assert global_rate and set(global_rate[0].values) == {sum(RATES.values())}
        out = tmp_path / "report.png"
        argv = ["--prometheus", url, "--job", JOB, "--last", "60s", "--step", "1s"]
        assert report_main([*argv, "--out", str(out)]) == 0
        png = out.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
            if p.stdout:
                p.stdout.close()


def test_report_names_an_unreachable_server(tmp_path: Path, capfd) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    assert report_main(["--prometheus", url, "--out", str(tmp_path / "r.png")]) == 1
    err = capfd.readouterr().err
    assert f"{url}: cannot query" in err and not (tmp_path / "r.png").exists()
