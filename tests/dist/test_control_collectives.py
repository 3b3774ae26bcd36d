"""Host-side control collectives go to a group that serves CPU tensors, also under NCCL."""

from __future__ import annotations

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
