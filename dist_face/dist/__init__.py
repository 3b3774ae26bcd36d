"""Process topology, process-group set-up and world-size-1-safe collectives."""

from dist_face.dist.comm import (
    all_gather,
    all_gather_object,
    all_gather_with_grad,
    all_reduce,
    backend_name,
    barrier,
    broadcast,
    control_group,
    get_rank,
    get_world_size,
    is_active,
    label_group,
)
from dist_face.dist.context import ParallelContext
from dist_face.dist.env import (
    Topology,
    TopologyError,
    destroy_distributed,
    init_distributed,
    select_backend,
    select_device,
)

__all__ = [
    "ParallelContext",
    "Topology",
    "TopologyError",
    "all_gather",
    "all_gather_object",
    "all_gather_with_grad",
    "all_reduce",
    "backend_name",
    "barrier",
    "broadcast",
    "control_group",
    "destroy_distributed",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_active",
    "label_group",
    "select_backend",
    "select_device",
]
