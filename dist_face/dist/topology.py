"""Where this process sits in the job: the launcher's environment read into a value.

The topology is read once from the launcher's environment (torchrun, the DeepSpeed launcher,
SLURM's srun, or nothing for a single process) into an immutable value that the rest of the
code receives explicitly. Data is sharded by global ``rank``; the device is chosen by
``local_rank``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class TopologyError(RuntimeError):
    """The launcher's environment variables are missing or inconsistent."""


@dataclass(frozen=True)
class Topology:
    """Position of this process in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``; decides the data shard and the head slice.
        world_size: number of processes in the job.
        local_rank: rank on this node; decides the device.
        local_world_size: processes on this node.
        node_rank: index of this node in ``[0, num_nodes)``.
        source: which launcher the values came from (``torchrun``, ``slurm`` or ``single``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    source: str = "single"

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise TopologyError(f"world size must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise TopologyError(f"rank {self.rank} is outside [0, {self.world_size})")
        if not 0 <= self.local_rank < self.local_world_size:
            raise TopologyError(
                f"local rank {self.local_rank} is outside [0, {self.local_world_size})"
            )
        if self.world_size % self.local_world_size:
            raise TopologyError(
                f"world size {self.world_size} is not a multiple of the local world size "
                f"{self.local_world_size}; every node must run the same number of processes"
            )

    @property
    def num_nodes(self) -> int:
        """Number of nodes (world size over processes per node)."""
        return self.world_size // self.local_world_size

    @property
    def is_main(self) -> bool:
        """True on global rank 0, which writes shared files and runs evaluation."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Topology:
        """Read the topology from the launcher's environment.

        torchrun and the DeepSpeed launcher set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and
        ``LOCAL_WORLD_SIZE``/``GROUP_RANK`` for torchrun); srun sets ``SLURM_PROCID`` and
        friends. Without either, the process is a single-rank job.

        Raises:
            TopologyError: a variable is not an integer or the values are inconsistent; the
                message names the variable.
        """
        env = os.environ if env is None else env
        if "RANK" in env or "WORLD_SIZE" in env:
            rank = _int(env, "RANK")
            world = _int(env, "WORLD_SIZE")
            local_rank = _int(env, "LOCAL_RANK", default=rank)
            local_world = _int(env, "LOCAL_WORLD_SIZE", default=_int(env, "LOCAL_SIZE", default=0))
            if local_world == 0:
                local_world = world
            node_rank = _int(
                env, "GROUP_RANK", default=_int(env, "NODE_RANK", default=rank // local_world)
            )
            return cls(rank, world, local_rank, local_world, node_rank, "torchrun")
        if "SLURM_PROCID" in env:
            world = _int(env, "SLURM_NTASKS")
            nodes = _int(env, "SLURM_NNODES", default=1)
            return cls(
                rank=_int(env, "SLURM_PROCID"),
                world_size=world,
                local_rank=_int(env, "SLURM_LOCALID"),
                local_world_size=max(world // max(nodes, 1), 1),
                node_rank=_int(env, "SLURM_NODEID", default=0),
                source="slurm",
            )
        return cls()


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        if default is None:
            raise TopologyError(f"environment variable {name} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise TopologyError(f"environment variable {name}={raw!r} is not an integer") from None
