"""Under real torchrun, a bad configuration is one line per rank and exit code 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bad_data_root_is_one_line_on_every_rank(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "--redirects=0:0,1:0",  # keep the workers' stderr on ours
            # torchrun stops the other ranks at the first failure it sees; checking every 5 s
            # (not 0.1 s) lets a rank slowed by a busy machine reach its own error line first
            "--monitor-interval=5",
            "-m",
            "dist_face.train",
            "--config",
            "debug_cpu",
            f"--data.root={tmp_path}/missing",
            f"--output_root={tmp_path}/runs",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    lines = proc.stderr.splitlines()
    expected = f"bad configuration: data.root: {tmp_path}/missing does not exist"
    for rank in (0, 1):
        mine = [line for line in lines if line.startswith(f"[rank{rank}]")]
        assert len(mine) == 1 and expected in mine[0], proc.stderr
    # no worker traceback: the only one is torchrun's own report of the exit code
    frames = [line for line in lines if line.strip().startswith('File "')]
    assert not any("dist_face" in line for line in frames), proc.stderr
    assert "exitcode  : 2" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_bad_data_root_through_the_launcher_is_one_line_before_any_rank(tmp_path: Path) -> None:
    # the launcher checks the configuration once, before torchrun starts a rank
    proc = subprocess.run(
        [
            "bash",
            str(Path(__file__).resolve().parents[2] / "launch" / "torchrun.sh"),
            f"--data.root={tmp_path}/missing",
            f"--output_root={tmp_path}/runs",
        ],
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "NPROC_PER_NODE": "2",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    (line,) = proc.stderr.splitlines()  # one line, no traceback, no rank started
    assert line.startswith("[rank0] ")
    assert line.endswith(f"bad configuration: data.root: {tmp_path}/missing does not exist")
    assert not (tmp_path / "runs").exists()
