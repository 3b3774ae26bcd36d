"""launch/torchrun.sh for real: two "nodes" of 2 processes on loopback vs one node of 4."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(env: dict[str, str], args: list[str]) -> subprocess.Popen:
    full = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "RESUME": "none",
        "CONFIG": "debug_cpu",
        "DIST_FACE_VENV": sys.prefix,
        **env,
    }
    return subprocess.Popen(
        ["bash", str(REPO / "launch" / "torchrun.sh"), *args],
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics-rank0.jsonl").read_text().splitlines()
    return [json.loads(line)["train/loss"] for line in lines if "train/loss" in line]


def test_dry_run_prints_the_rendezvous() -> None:
    out = subprocess.run(
        ["bash", str(REPO / "launch" / "torchrun.sh"), "--head.scale=32"],
        env={
            **os.environ,
            "DRY_RUN": "1",
            "NNODES": "2",
            "RDZV_ENDPOINT": "10.1.2.3:29400",
            "NPROC_PER_NODE": "8",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--nnodes=2 --nproc_per_node=8" in out
    assert "--rdzv_backend=c10d --rdzv_endpoint=10.1.2.3:29400" in out
    assert out.strip().endswith("--config debug_cpu --resume auto --head.scale=32")


@pytest.mark.timeout(600)
def test_two_nodes_over_c10d_match_one_node(small_dataset: Path, tmp_path: Path) -> None:
    common = [
        f"--data.root={small_dataset}/shards",
        "--eval.targets=[]",
        "--train.max_steps=4",
        "--train.log_every=1",
        f"--output_root={tmp_path}",
        "--data.batch_size=16",
        "--data.num_workers=0",
    ]
    endpoint = f"127.0.0.1:{_free_port()}"
    nodes = [
        _launch(
            {
                "NNODES": "2",
                "NPROC_PER_NODE": "2",
                "RDZV_ENDPOINT": endpoint,
                "RDZV_ID": f"test-{os.getpid()}",
            },
            [*common, "--name=two_nodes"],
        )
        for _ in range(2)
    ]
    try:
        outputs = [n.communicate(timeout=300)[0] for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [0, 0], outputs
    single = _launch({"NPROC_PER_NODE": "4"}, [*common, "--name=one_node"])
    try:
        out = single.communicate(timeout=300)[0]
    finally:
        single.kill()
    assert single.returncode == 0, out
    two, one = _losses(tmp_path / "two_nodes"), _losses(tmp_path / "one_node")
    assert len(two) == len(one) == 4
    assert two == pytest.approx(one, rel=1e-6)
