"""Where this process sits in the job, and the process group built from it.

The topology is read once from the launcher's environment (torchrun, the DeepSpeed launcher,
SLURM's srun, or nothing for a single process) into an immutable value that the rest of the
code receives explicitly. Data is sharded by global ``rank``; the device is chosen by
``local_rank``.
"""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from dist_face.dist import comm

if TYPE_CHECKING:
    from dist_face.dist.context import ParallelContext

logger = logging.getLogger(__name__)


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


def select_device(topology: Topology) -> torch.device:
    """Return ``cuda:<local_rank>`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", topology.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def select_backend(device: torch.device, requested: str = "auto") -> str:
    """Return the collective backend: nccl for CUDA devices, gloo otherwise.

    Args:
        device: the device this rank trains on.
        requested: ``auto`` or an explicit ``nccl``/``gloo``.
    """
    if requested != "auto":
        if requested == "nccl" and device.type != "cuda":
            raise TopologyError("backend nccl needs a CUDA device; use gloo on the CPU")
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(
    topology: Topology,
    backend: str = "auto",
    timeout_s: float = 600.0,
    *,
    force_process_group: bool = False,
) -> ParallelContext:
    """Pick this rank's device, join the default process group and build the parallel context.

    A single-rank job gets no process group (every helper in :mod:`dist_face.dist.comm` works
    without one) unless ``force_process_group``: then a one-member group of the chosen backend
    is created and every collective runs through it, so a one-GPU run meets NCCL's rules.
    Rendezvous uses ``MASTER_ADDR``/``MASTER_PORT`` as set by the launcher (defaults to a local
    address for a forced one-rank group). Under NCCL the context's control group, a gloo group
    over the same ranks, is created here, while every rank is at the same point.

    Returns:
        The parallel context (its ``device`` is the device this rank trains on).
    """
    from dist_face.dist.context import ParallelContext  # context imports this module

    device = select_device(topology)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_initialized():
        return ParallelContext.from_default_group(topology, device)
    if topology.world_size == 1 and not force_process_group:
        return ParallelContext(topology, device)
    name = select_backend(device, backend)
    if topology.world_size == 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group(
        backend=name,
        rank=topology.rank,
        world_size=topology.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        device_id=device if device.type == "cuda" else None,
    )
    comm.force_collectives(force_process_group)
    # a Python-API job that never calls destroy_distributed must not leave the process
    # groups' threads running into interpreter shutdown
    atexit.register(destroy_distributed)
    logger.info(
        "joined process group: backend=%s rank=%d/%d node=%d/%d device=%s",
        name,
        topology.rank,
        topology.world_size,
        topology.node_rank,
        topology.num_nodes,
        device,
    )
    return ParallelContext.from_default_group(topology, device)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def destroy_distributed() -> None:
    """Leave the default process group if one exists (safe to call twice)."""
    comm.forget_groups()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
