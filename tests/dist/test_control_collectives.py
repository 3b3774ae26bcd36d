"""Host-side control collectives go to a group that serves CPU tensors, also under NCCL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dist_face.checkpoint import save_checkpoint
from dist_face.dist import ParallelContext, Topology, comm, init_distributed
from tests.helpers.distributed import run_distributed
from tests.helpers.nccl_rules import pretend_nccl

pytestmark = pytest.mark.dist
_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _head(rank: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    head = nn.Linear(4, 3, bias=False)
    head.weight.data.fill_(float(rank))
    return head, torch.optim.SGD(head.parameters(), lr=0.1)


def _checkpoint_under_nccl(rank: int, world: int, run_dir: str, explicit: bool) -> dict:
    topology = Topology(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    head, opt = _head(rank)
    with pretend_nccl() as log:
        parallel = init_distributed(topology) if explicit else None
        path = save_checkpoint(
            Path(run_dir),
            1,
            topology,
            replicated={"step": 1},
            head=head,
            head_optimizer=opt,
            class_range=(rank * 3, rank * 3 + 3),
            num_classes=3 * world,
            keep=1,
            parallel=parallel,
        )
        control = comm.control_group(None)
        out = {
            "path": str(path),
            "log": list(log),
            "control_backend": str(dist.get_backend(control)) if control is not None else "",
            "context_control_is_cached": parallel is None or parallel.control_group is control,
        }
    comm.forget_groups()
    return out


@pytest.mark.parametrize("explicit", [True, False], ids=["from-init", "default-built"])
def test_checkpoint_flag_uses_a_gloo_group_when_the_default_group_is_nccl(
    tmp_path: Path, explicit: bool
) -> None:
    outs = run_distributed(_checkpoint_under_nccl, 2, str(tmp_path), explicit)
    for out in outs:
        assert out["path"].endswith("step_00000001")
        assert out["control_backend"] == "gloo"
        assert out["context_control_is_cached"]
        # the success flag is the one CPU all-reduce, and it went over the gloo group
        assert ("all_reduce", "gloo", "cpu") in out["log"]
        assert not [e for e in out["log"] if e[1] == "nccl" and e[2] != "cuda"]
    assert (tmp_path / "checkpoints" / "step_00000001" / "state.pt").exists()


def _agreement(rank: int, world: int) -> list[bool]:
    topology = Topology(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    with pretend_nccl():
        parallel = ParallelContext.from_default_group(topology, torch.device("cpu"))
        out = [parallel.all_ranks_ok(True), parallel.all_ranks_ok(rank != 1)]
    comm.forget_groups()
    return out


def test_all_ranks_ok_is_a_min_over_ranks() -> None:
    assert run_distributed(_agreement, 2) == [[True, False], [True, False]]


def _gloo_default(rank: int, world: int) -> bool:
    topology = Topology(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    return ParallelContext.from_default_group(topology, torch.device("cpu")).control_group is None


def test_a_gloo_default_group_is_its_own_control_group() -> None:
    assert run_distributed(_gloo_default, 2) == [True, True]


def test_forced_process_group_runs_every_collective_at_one_rank(tmp_path: Path) -> None:
    """``dist.force_process_group`` at world size 1: a real group, DDP, checkpoints, exit 0."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dist_face.train",
            "--config",
            "debug_cpu",
            "--data.root=synthetic",
            "--data.num_classes=50",
            "--data.synthetic_samples=64",
            "--data.batch_size=16",
            "--eval.targets=[]",
            "--checkpoint.every=2",
            "--train.log_every=2",
            "--dist.backend=gloo",
            "--dist.force_process_group=true",
            f"--output_root={tmp_path}",
            "--name=forced",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "joined process group: backend=gloo rank=0/1" in proc.stderr
    assert (tmp_path / "forced" / "checkpoints" / "step_00000004" / "state.pt").exists()
