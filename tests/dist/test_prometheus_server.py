"""A real Prometheus server scrapes a real 2-rank training run; values are read back by its API.

torchrun starts two gloo ranks of the ``debug_cpu`` recipe on the small embedded dataset, each
serving its exporter on loopback; a Prometheus server (1 s scrapes, the shipped alert rules)
scrapes both. The run is given many epochs so it outlasts the checks, then it is stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from dist_face.cli.report import main as report_main
from dist_face.metrics.report import fetch

pytestmark = pytest.mark.dist
ROOT = Path(__file__).resolve().parents[2]
JOB = "it_run"
RANKS = {"0", "1"}
STARTUP_S = 120.0  # torchrun, imports and the first logged step on a loaded 2-core machine
SETTLE_S = 2.0  # instants this far back have every scrape before them stored (1 s interval)
PROMETHEUS = shutil.which("prometheus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reserve_ports() -> tuple[int, int, int]:
    """Distinct free loopback ports: exporter base (base + 1 free too), rendezvous, Prometheus.

    Every socket stays bound until all are chosen, so no two of them can be the same port; the
    ports are released for the processes to take right after.
    """
    with ExitStack() as stack:

        def bind(port: int) -> int:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", port))
            return s.getsockname()[1]

        for _ in range(100):
            base = bind(0)
            if base >= 65535:
                continue
            try:
                bind(base + 1)  # local rank 1 serves on base_port + 1
            except OSError:
                continue
            return base, bind(0), bind(0)
    pytest.fail("no two adjacent free loopback ports")


def _query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """Instant query ``expr`` (at unix time ``at``, default now); the result vector."""
    params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    q = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _by_rank(result: list[dict[str, Any]]) -> dict[str, float]:
    return {r["metric"]["rank"]: float(r["value"][1]) for r in result}


def _tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return f"({path.name}: nothing written)"
    return f"--- {path.name} ---\n" + "\n".join(path.read_text().splitlines()[-lines:])


class Processes:
    """The trainer and the server under test, with their logs, for waiting and failing clearly."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], **kwargs: Any) -> None:
        """Start ``argv`` in its own process group, stdout and stderr into ``<name>.log``."""
        with (self.log_dir / f"{name}.log").open("wb") as log:
            self.procs[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs
            )

    def logs(self) -> str:
        return "\n".join(_tail(self.log_dir / f"{name}.log") for name in self.procs)

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Poll ``check`` until it returns something truthy; fail early if a process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    pytest.fail(f"{name} exited ({p.returncode}) before {what}\n{self.logs()}")
            try:
                got = check()
            except OSError:  # the server is not listening yet
                got = None
            if got:
                return got
            time.sleep(0.25)
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def stop(self) -> None:
        """SIGTERM each process group (torchrun and its ranks), SIGKILL what is left after 15 s."""
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@contextmanager
def _processes(log_dir: Path) -> Iterator[Processes]:
    procs = Processes(log_dir)
    try:
        yield procs
    finally:
        procs.stop()


def _server_config(tmp: Path, targets: list[str]) -> Path:
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


def _trainer_argv(base_port: int, master_port: int, data: Path, runs: Path) -> list[str]:
    """torchrun with 2 local ranks of ``debug_cpu``, each rank serving on base_port + rank."""
    return [
        *(sys.executable, "-m", "torch.distributed.run"),  # torchrun of this environment
        *("--nproc-per-node", "2", "--master-port", str(master_port)),
        *("-m", "dist_face.train", "--config", "debug_cpu"),
        "--metrics.prometheus=true",
        f"--metrics.base_port={base_port}",
        f"--metrics.job={JOB}",
        f"--data.root={data}/shards",
        "--data.num_workers=0",
        "--eval.targets=[]",
        f"--output_root={runs}",
        "--train.log_every=1",
        "--train.epochs=100",  # ~11 steps of ~1 s per epoch: far longer than the test needs
    ]


def _rule_matches_the_sum(url: str) -> bool:
    """The recorded global rate equals ``sum`` over the ranks at the instant it was recorded."""
    recorded = f'job:dist_face_samples_per_second:sum{{job="{JOB}"}}'
    stamped = _query(url, f"timestamp({recorded})")
    if not stamped:
        return False
    at = float(stamped[0]["value"][1])
    rule = _query(url, recorded, at)
    total = _query(url, f'sum(dist_face_rank_samples_per_second{{job="{JOB}"}})', at)
    # a scrape stored just after the rule ran can still change the sum at that instant: retry
    return bool(rule and total) and float(rule[0]["value"][1]) == pytest.approx(
        float(total[0]["value"][1]), rel=1e-9
    )


# a decorator, not a skip in the body: without the server the dataset is not built either
@pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian package 'prometheus'; tests/run.sh adds it)",
)
def test_real_server_scrapes_two_ranks(small_dataset: Path, tmp_path: Path) -> None:
    assert PROMETHEUS is not None
    base_port, master_port, port = _reserve_ports()
    url = f"http://127.0.0.1:{port}"
    targets = [f"127.0.0.1:{base_port + int(r)}" for r in sorted(RANKS)]
    # the ranks import this checkout, whatever copy of dist_face the environment has installed
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    with _processes(tmp_path) as procs:
        procs.start(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={_server_config(tmp_path, targets)}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
        )
        procs.start(
            "train",
            _trainer_argv(base_port, master_port, small_dataset, tmp_path / "runs"),
            cwd=ROOT,
            env=env,
        )
        procs.wait_for("the server", lambda: urllib.request.urlopen(f"{url}/-/ready", timeout=2))
        per_rank = f'dist_face_rank_samples_per_second{{job="{JOB}"}}'
        procs.wait_for(
            "both ranks' throughput to be scraped",
            lambda: set(_by_rank(_query(url, per_rank))) == RANKS,
            timeout=STARTUP_S,
        )
        # four 1 s scrapes of each rank: both have a sample before `at` below, and the rule and
        # the report have a history
        scrapes = f"count_over_time({per_rank}[1m]) >= 4"
        procs.wait_for("four scrapes of each rank", lambda: len(_query(url, scrapes)) == 2)

        at = time.time() - SETTLE_S
        rates = _by_rank(_query(url, per_rank, at))
        assert set(rates) == RANKS and all(v > 0 for v in rates.values()), rates
        total = _query(url, f"sum({per_rank})", at)
        assert float(total[0]["value"][1]) == pytest.approx(sum(rates.values()), rel=1e-9)

        step = f'dist_face_step{{job="{JOB}"}}'
        moved = f"max_over_time({step}[1m]) - min_over_time({step}[1m]) > 0"
        procs.wait_for("both step gauges to advance", lambda: len(_query(url, moved)) == 2)
        # the shipped rules load and evaluate on the run's data
        procs.wait_for("the recording rule", lambda: _rule_matches_the_sum(url))

        end = time.time()
        data = {p.title: lines for p, lines in fetch(url, JOB, end - 60, end, 1.0)}
        throughput = dict(data["Throughput (samples/s)"])
        assert {"global", "rank 0", "rank 1"} <= set(throughput), sorted(throughput)
        assert max(throughput["global"].values) > 0
        out = tmp_path / "report.png"
        argv = ["--prometheus", url, "--job", JOB, "--last", "60s", "--step", "1s"]
        assert report_main([*argv, "--out", str(out)]) == 0
        png = out.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_report_names_an_unreachable_server(tmp_path: Path, capfd) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    assert report_main(["--prometheus", url, "--out", str(tmp_path / "r.png")]) == 1
    err = capfd.readouterr().err
    assert f"{url}: cannot query" in err and not (tmp_path / "r.png").exists()
