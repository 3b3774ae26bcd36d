"""launch/torchrun.sh for real: two "nodes" of 2 processes on loopback vs one node of 4."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import slurm

REPO = Path(__file__).resolve().parents[2]
# what launch/torchrun.sh and launch/slurm.sbatch read; a caller's own values must not leak in
LAUNCH_VARS = frozenset(
    "CONFIG NNODES NPROC_PER_NODE RDZV_ENDPOINT RDZV_ID RDZV_PORT MAX_RESTARTS RESUME LOG_RANKS"
    " DRY_RUN DIST_FACE_REPO BASH_ENV PREFLIGHT CHECK_ONLY STOP_GRACE_S".split()
)


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
        ["bash", str(REPO / "launch" / "torchrun.sh"), "--head.margin_args.scale=32"],
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
    assert out.strip().endswith("--config debug_cpu --resume auto --head.margin_args.scale=32")


def test_restarts_rendezvous_on_a_fresh_store(tmp_path: Path) -> None:
    """torchrun must not share its rendezvous store across restarts (pytorch#135712)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "torchrun"  # prints what the real torchrun would read
    stand_in.write_text('#!/bin/sh\necho "share=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE-unset}"\n')
    stand_in.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.pop("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", None)
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        MAX_RESTARTS="1",
        PREFLIGHT="0",  # no recipe data here: only the torchrun command matters
    )
    out = subprocess.run(
        ["bash", str(REPO / "launch" / "torchrun.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.strip() == "share=1"


def test_slurm_dry_run_prints_one_torchrun_per_node(tmp_path: Path) -> None:
    """launch/slurm.sbatch in a 2-node allocation, with stand-ins for scontrol and srun."""
    seen = tmp_path / "seen.txt"
    # bash sources BASH_ENV before every script it runs: this records what slurm.sbatch and
    # each node's torchrun.sh (whose environment torchrun inherits) see
    probe = tmp_path / "probe.sh"
    probe.write_text(
        'echo "${0##*/} ${SLURMD_NODENAME-} SLURM_PROCID=${SLURM_PROCID-unset}'
        f' SLURM_LOCALID=${{SLURM_LOCALID-unset}}" >> {shlex.quote(str(seen))}\n'
    )
    caller = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    stand_ins = slurm.install(tmp_path / "bin")  # scontrol and srun
    env = {
        **{k: v for k, v in caller.items() if k not in LAUNCH_VARS},  # only the job's own below
        "PATH": f"{stand_ins}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DRY_RUN": "1",
        "BASH_ENV": str(probe),
        # the batch step of `sbatch --nodes=2 launch/slurm.sbatch`, on the first node
        "SLURM_JOB_ID": "4242",
        "SLURM_JOBID": "4242",
        "SLURM_JOB_NAME": "dist_face",
        "SLURM_JOB_NODELIST": "gpu-node-[07-08]",
        "SLURM_NODELIST": "gpu-node-[07-08]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_GPUS_PER_NODE": "a100:8",  # as given by --gpus-per-node=a100:8
        "SLURM_CPUS_PER_TASK": "32",
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_NODEID": "0",
        "SLURMD_NODENAME": "gpu-node-07",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
    }
    # sbatch runs a copy of the script from its spool directory: the repository comes from
    # SLURM_SUBMIT_DIR, not from the script's path or the working directory
    run = subprocess.run(
        ["bash", str(REPO / "launch" / "slurm.sbatch"), "--head.margin_args.scale=32"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    srun_line, *torchrun_lines = run.stdout.splitlines()
    assert shlex.split(srun_line) == [
        *("srun", "--kill-on-bad-exit=1", "--ntasks-per-node=1"),
        *("env", "-u", "SLURM_PROCID", "-u", "SLURM_LOCALID"),
        *("bash", str(REPO / "launch" / "torchrun.sh"), "--head.margin_args.scale=32"),
    ]
    # one torchrun per node, the same command on both: c10d finds each node its rank
    assert [shlex.split(line) for line in torchrun_lines] == 2 * [
        [
            *("torchrun", "--nnodes=2", "--nproc_per_node=8", "--max_restarts=0"),
            "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",  # SLURM's --signal
            "--shutdown-timeout=120",  # the ranks' time to checkpoint before SIGKILL
            "--rdzv_backend=c10d",
            "--rdzv_endpoint=gpu-node-07:29400",  # the first host of the allocation
            "--rdzv_id=dist_face-4242",  # from the job id: shared by the nodes of one job only
            *("-m", "dist_face.train", "--config", "debug_cpu", "--resume", "auto"),
            "--head.margin_args.scale=32",
        ]
    ]
    # the batch step has SLURM's rank variables; torchrun on each node must not inherit them
    # (the trainer would read them if torchrun's own were missing)
    assert seen.read_text().splitlines() == [
        "slurm.sbatch gpu-node-07 SLURM_PROCID=0 SLURM_LOCALID=0",
        "torchrun.sh gpu-node-07 SLURM_PROCID=unset SLURM_LOCALID=unset",
        "torchrun.sh gpu-node-08 SLURM_PROCID=unset SLURM_LOCALID=unset",
    ]


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


def test_slurm_time_limit_warning_reaches_the_step_and_requeues(tmp_path: Path) -> None:
    """SIGUSR1 to the batch script (``--signal=B:USR1@180``) goes on to the running step; once
    the step has exited, the job is requeued."""
    log = tmp_path / "log.txt"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # srun stands in for the step: it records the signal and exits as the ranks do (75)
    (bin_dir / "srun").write_text(
        f"#!/bin/bash\ntrap 'echo srun got USR1 >> {log}; exit 75' USR1\n"
        f"echo srun started >> {log}\nwhile :; do sleep 0.05; done\n"
    )
    (bin_dir / "scontrol").write_text(
        f'#!/bin/sh\n[ "$1" = requeue ] && echo "scontrol requeue $2" >> {log}\necho gpu-node-07\n'
    )
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and "SLURM" not in k}
    env.update(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PREFLIGHT="0",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu-node-07",
        SLURM_JOB_NUM_NODES="1",
        SLURM_SUBMIT_DIR=str(REPO),
    )
    job = subprocess.Popen(["bash", str(REPO / "launch" / "slurm.sbatch")], env=env)
    deadline = time.monotonic() + 30
    while not (log.exists() and "srun started" in log.read_text()):
        assert job.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)
    assert job.wait(timeout=30) == 75  # the step's own status
    assert log.read_text().splitlines() == [
        "srun started",
        "srun got USR1",
        "scontrol requeue 4242",
    ]


@pytest.mark.parametrize("script", ["deepspeed.sh", "slurm.sbatch"])
def test_bad_configuration_stops_the_other_launchers_before_any_rank(
    script: str, tmp_path: Path
) -> None:
    """deepspeed.sh and slurm.sbatch check once before starting anything (torchrun.sh:
    tests/dist/test_entry_torchrun.py); srun and deepspeed here would fail the test."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("srun", "deepspeed"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} started; exit 1\n")
        (bin_dir / tool).chmod(0o755)
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho gpu-node-07\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and "SLURM" not in k}
    env.update(
        PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        PYTHONPATH=str(REPO),
        NPROC_PER_NODE="2",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu-node-07",
        SLURM_JOB_NUM_NODES="1",
        SLURM_SUBMIT_DIR=str(REPO),
    )
    done = subprocess.run(
        ["bash", str(REPO / "launch" / script), f"--data.root={tmp_path}/missing"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "started" not in done.stdout
    (line,) = done.stderr.splitlines()
    assert line.endswith(f"bad configuration: data.root: {tmp_path}/missing does not exist")


def test_torchrun_as_launched_forwards_sigusr1_to_every_rank(tmp_path: Path) -> None:
    """SLURM's --signal sends SIGUSR1, which torchrun forwards only when told to: the
    launcher's own torchrun flags, with a rank that waits for the signal."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DRY_RUN="1")
    dry = subprocess.run(
        ["bash", str(REPO / "launch" / "torchrun.sh")],
        env={**env, "NPROC_PER_NODE": "2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    launcher = shlex.split(dry.stdout)
    flags = launcher[: launcher.index("-m")]  # torchrun and its flags, as the launcher runs it
    del env["DRY_RUN"]
    job = subprocess.Popen(
        [*flags, "-m", "tests.helpers.wait_for_signal", str(tmp_path)],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready-{r}").exists() for r in (0, 1)):
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        job.send_signal(signal.SIGUSR1)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert [(tmp_path / f"got-{r}").read_text() for r in (0, 1)] == ["SIGUSR1", "SIGUSR1"]
