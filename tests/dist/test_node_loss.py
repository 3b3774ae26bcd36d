"""A lost node, for real: two "nodes" on this machine, each in its own network namespace with
its own address (a veth pair), each running torchrun with a c10d rendezvous on node 0's address,
``--nnodes=1:2`` and restarts allowed.

Every process of node 1 is killed (SIGKILL) mid-epoch: node 0's torchrun re-forms the job at
half the world size, which resumes from the last checkpoint on 1 rank. Node 1 is then started
again and the job grows back to 2 ranks, resuming once more, and finishes its 2 epochs. The
ranks run the trainer recording the record number of every image each step trains on
(tests/helpers/recording_train.py, colour-coded records): over the steps of the final run, every
record of each epoch is trained on exactly once, but for the trailing partial batch.

Needs root and ``ip netns`` (iproute2); skipped, with the reason, where namespaces cannot be
made.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.datasets import color_coded_shards

REPO = Path(__file__).resolve().parents[2]
TAG = f"df{os.getpid() % 100000}"
NODES = {0: (f"{TAG}n0", "10.213.0.1"), 1: (f"{TAG}n1", "10.213.0.2")}
PORT = 29455
RECORDS, BATCH = 240, 8  # 15 steps an epoch on 2 ranks, 30 on 1


@pytest.fixture(scope="module")
def coded_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """240 solid-colour records whose red channel is the record number."""
    return color_coded_shards(tmp_path_factory.mktemp("coded"), records=RECORDS, classes=12)


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


@pytest.fixture
def namespaces() -> object:
    """Two namespaces joined by a veth pair (``eth0`` in each), torn down afterwards."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    try:
        made = _ip("netns", "add", NODES[0][0])
    except FileNotFoundError:
        pytest.skip("no `ip` command (iproute2)")
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
    try:
        _ip("netns", "add", NODES[1][0])
        steps = [
            ("link", "add", f"{TAG}a", "type", "veth", "peer", "name", f"{TAG}b"),
            ("link", "set", f"{TAG}a", "netns", NODES[0][0]),
            ("link", "set", f"{TAG}b", "netns", NODES[1][0]),
        ]
        for node, (ns, addr) in NODES.items():
            end = f"{TAG}{'ab'[node]}"
            steps += [
                ("-n", ns, "link", "set", end, "name", "eth0"),
                ("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0"),
                ("-n", ns, "link", "set", "eth0", "up"),
                ("-n", ns, "link", "set", "lo", "up"),
            ]
        for step in steps:
            done = _ip(*step)
            assert done.returncode == 0, (step, done.stderr)
        yield
    finally:
        for ns, _ in NODES.values():
            _kill_namespace(ns)
            _ip("netns", "del", ns)


def _kill_namespace(ns: str) -> None:
    """SIGKILL every process in ``ns``: a node that dies."""
    pids = _ip("netns", "pids", ns).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


def _node(node: int, data: Path, out: Path, log: Path) -> subprocess.Popen:
    ns, addr = NODES[node]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GLOO_SOCKET_IFNAME": "eth0",  # the node's own address, not the host's
        "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",  # as launch/torchrun.sh
        "OMP_NUM_THREADS": "1",
        "DIST_FACE_RECORD_DIR": str(out / "records"),
    }
    cmd = [
        *("ip", "netns", "exec", ns),
        str(Path(sys.executable).parent / "torchrun"),
        "--nnodes=1:2",
        "--nproc_per_node=1",
        "--max_restarts=3",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={NODES[0][1]}:{PORT}",
        "--rdzv_id=node-loss",
        # node 0 hosts the rendezvous store; a re-formed job starts 1 s after enough nodes joined
        f"--rdzv_conf=is_host={int(node == 0)},last_call_timeout=1,keep_alive_interval=1",
        f"--local_addr={addr}",
        "--monitor-interval=0.5",
        # the trainer, recording the record number of every image each step trains on
        *("-m", "tests.helpers.recording_train", "--config", "debug_cpu", "--resume", "auto"),
        f"--data.root={data}",
        "--eval.targets=[]",
        f"--output_root={out}",
        "--name=nl",
        f"--data.batch_size={BATCH}",
        "--data.num_workers=0",
        "--train.epochs=2",
        "--train.log_every=1",
        "--checkpoint.every=1",
        "--checkpoint.keep=100",
        "--dist.timeout_s=60",
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_for(what: str, check: object, procs: list, logs: list[Path], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        for proc, log in zip(procs, logs):
            if proc is not None and proc.poll() is not None and proc.returncode != 0:
                pytest.fail(f"{what}: a node exited {proc.returncode}\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s\n{logs[0].read_text()[-3000:]}")
        time.sleep(0.1)


def _checkpoints(run: Path) -> list[dict]:
    found = []
    for path in sorted((run / "checkpoints").glob("step_????????")):
        try:
            state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError):
            continue
        found.append({k: state[k] for k in ("step", "world_size", "consumed", "epoch")})
    return found


def _trained_on(records: Path) -> dict[int, list[int]]:
    """Epoch -> record numbers of every image the final run trained on, step by step.

    A step done by a round that was lost before its checkpoint is done again by a later round
    (which resumed from an earlier step); for each step, only the last round that did it counts.
    """
    lines = [json.loads(x) for f in records.glob("*.jsonl") for x in f.read_text().splitlines()]
    started = {}
    for line in lines:
        started[line["round"]] = min(started.get(line["round"], line["t"]), line["t"])
    last: dict[int, str] = {}
    for line in sorted(lines, key=lambda x: started[x["round"]]):
        last[line["step"]] = line["round"]
    epochs: dict[int, list[int]] = {}
    for line in sorted(lines, key=lambda x: x["step"]):
        if last[line["step"]] == line["round"]:
            epochs.setdefault(line["epoch"], []).extend(line["ids"])
    return epochs


@pytest.mark.timeout(300)
def test_a_lost_node_shrinks_the_job_and_a_new_one_grows_it_back(
    namespaces: object, coded_shards: Path, tmp_path: Path
) -> None:
    run = tmp_path / "nl"
    (tmp_path / "records").mkdir()
    logs = [tmp_path / "node0.log", tmp_path / "node1.log"]
    node1 = _node(1, coded_shards, tmp_path, logs[1])
    node0 = _node(0, coded_shards, tmp_path, logs[0])
    procs = [node0, node1]
    try:
        _wait_for(
            "2-rank checkpoint of step 2",
            lambda: any(c["world_size"] == 2 and c["step"] >= 2 for c in _checkpoints(run)),
            procs,
            logs,
            150,
        )
        _kill_namespace(NODES[1][0])  # every process of node 1, mid-epoch
        node1.wait(timeout=30)
        lost_at = max(c["step"] for c in _checkpoints(run))
        procs[1] = None
        _wait_for(
            "a 1-rank checkpoint",
            lambda: any(c["world_size"] == 1 for c in _checkpoints(run)),
            procs,
            logs,
            150,
        )
        node1 = _node(1, coded_shards, tmp_path, logs[1])
        procs[1] = node1
        for proc, log in zip(procs, logs):
            assert proc.wait(timeout=200) == 0, log.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    text = logs[0].read_text()
    # shrank to 1 rank from the checkpoint of the step node 1 died at, then grew back
    resizes = re.findall(r"resuming a (\d)-rank checkpoint on (\d) ranks", text)
    assert ("2", "1") in resizes, text[-3000:]
    # (a slow node 1 may also have joined the first round late: a 1 -> 2 before the loss)
    assert ("1", "2") in resizes[resizes.index(("2", "1")) :], text[-3000:]
    resumed = [
        (int(s), int(n))
        for s, n in re.findall(r"\[rank0\].*resumed from \S+ at step (\d+) \(epoch \d, (\d+)", text)
    ]
    assert any(step >= lost_at - 1 for step, _ in resumed), (resumed, lost_at)
    # the position carries over: each resume starts where its checkpoint's samples ended
    saved = {c["step"]: c for c in _checkpoints(run)}
    for step, consumed in resumed:
        assert saved[step]["consumed"] == consumed
    # what the steps really trained on, read back from the pixels: in each epoch every record
    # at most once, and all but fewer than a global batch (the trailing partial batch)
    epochs = _trained_on(tmp_path / "records")
    assert sorted(epochs) == [0, 1]
    for epoch, ids in epochs.items():
        assert len(ids) == len(set(ids)), (epoch, sorted(ids))
        assert set(ids) <= set(range(RECORDS))
        assert RECORDS - len(ids) < 2 * BATCH, (epoch, RECORDS - len(ids))
    assert saved[max(saved)]["world_size"] == 2
