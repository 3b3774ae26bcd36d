"""Topology from launcher environments."""

from __future__ import annotations

import pytest
import torch

from dist_face.dist import Topology, TopologyError, select_backend


def test_single_process_without_launcher() -> None:
    t = Topology.from_env({})
    assert (t.rank, t.world_size, t.num_nodes, t.is_main, t.source) == (0, 1, 1, True, "single")


def test_torchrun_two_nodes() -> None:
    env = {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "GROUP_RANK": "1",
    }
    t = Topology.from_env(env)
    assert (t.rank, t.local_rank, t.node_rank, t.num_nodes, t.is_main) == (5, 1, 1, 2, False)


def test_deepspeed_launcher_without_local_world_size() -> None:
    t = Topology.from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (t.local_world_size, t.node_rank) == (2, 0)


def test_slurm() -> None:
    env = {
        "SLURM_PROCID": "6",
        "SLURM_NTASKS": "8",
        "SLURM_LOCALID": "2",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "1",
    }
    t = Topology.from_env(env)
    assert (t.rank, t.world_size, t.local_rank, t.local_world_size, t.node_rank) == (6, 8, 2, 4, 1)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK='x'"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"rank 2 is outside \[0, 2\)"),
        ({"RANK": "0"}, "WORLD_SIZE is not set"),
        ({"RANK": "0", "WORLD_SIZE": "6", "LOCAL_WORLD_SIZE": "4"}, "not a multiple"),
    ],
)
def test_bad_environment_names_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(TopologyError, match=match):
        Topology.from_env(env)


def test_backend_follows_device() -> None:
    assert select_backend(torch.device("cpu")) == "gloo"
    assert select_backend(torch.device("cuda", 0)) == "nccl"
    with pytest.raises(TopologyError, match="nccl needs a CUDA"):
        select_backend(torch.device("cpu"), "nccl")
