"""A job driven through the Python API exits 0: nothing the library started (process groups,
loader workers, their threads) aborts the interpreter at exit ("terminate called without an
active exception").

Each job is two plain processes (``init_distributed`` from the launcher's variables, as torchrun
sets them) that build the trainer, train two steps and end without ``destroy_distributed``. The
default run runs 1 job; ``DIST_FACE_SOAK=1`` runs 10 (5 at a time).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SOAK = bool(os.environ.get("DIST_FACE_SOAK"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _job(data: Path, out: Path) -> list[tuple[int, str]]:
    """Exit code and the end of stderr of each of the two ranks."""
    port = str(_free_port())
    base = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.api_job", str(data), str(out)],
            cwd=REPO,
            env={
                **base,
                "PYTHONPATH": str(REPO),
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "OMP_NUM_THREADS": "1",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    return [(p.wait(timeout=300), p.stderr.read()[-2000:]) for p in procs]


def _check(small_dataset: Path, tmp_path: Path, jobs: int, at_once: int) -> None:
    with ThreadPoolExecutor(at_once) as pool:
        results = list(pool.map(lambda i: _job(small_dataset, tmp_path / f"job{i}"), range(jobs)))
    failed = [(i, r) for i, ranks in enumerate(results) for r in ranks if r[0] != 0]
    assert not failed, failed
    for i in range(jobs):
        assert (tmp_path / f"job{i}" / "api" / "model.pt").is_file()


@pytest.mark.timeout(300)
def test_a_python_api_job_exits_0(small_dataset: Path, tmp_path: Path) -> None:
    _check(small_dataset, tmp_path, jobs=1, at_once=1)


@pytest.mark.soak
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not SOAK, reason="10 jobs run with DIST_FACE_SOAK=1")
def test_ten_python_api_jobs_exit_0(small_dataset: Path, tmp_path: Path) -> None:
    _check(small_dataset, tmp_path, jobs=10, at_once=5)
