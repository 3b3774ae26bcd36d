"""The process group built from this process's place in the job (:mod:`.topology`)."""

from __future__ import annotations

import atexit
import datetime
import logging
import os
import socket

import torch
import torch.distributed as dist

from dist_face.dist import comm
from dist_face.dist.context import ParallelContext
from dist_face.dist.topology import Topology, TopologyError

__all__ = [
    "Topology",
    "TopologyError",
    "destroy_distributed",
    "init_distributed",
    "select_backend",
    "select_device",
]

logger = logging.getLogger(__name__)


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
