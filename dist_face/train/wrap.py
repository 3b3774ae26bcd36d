"""The one place that wraps the backbone for data parallelism."""

from __future__ import annotations

import functools
import inspect
import logging
import warnings

import torch
from torch import nn
from torch.distributed import ProcessGroup
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from dist_face.config import DistConfig
from dist_face.dist import Topology, comm

logger = logging.getLogger(__name__)


@functools.cache
def _ddp_keywords(ddp_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(ddp_class.__init__).parameters)


def buffer_sync_kwargs(ddp_class: type) -> dict[str, bool]:
    """DDP keywords that keep buffers from being broadcast before every forward.

    ``forward_sync_buffers`` is recent (absent from torch 2.11's DDP); there the older
    ``broadcast_buffers=False`` has the same effect on the forward pass, but also skips the
    broadcast at construction, which :func:`wrap_backbone` then does itself. Feature-detected
    from the signature, so any torch the package accepts can wrap.
    """
    if "forward_sync_buffers" in _ddp_keywords(ddp_class):
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def wrap_backbone(
    backbone: nn.Module,
    cfg: DistConfig,
    topology: Topology,
    device: torch.device,
    grad_accum: int = 1,
    group: ProcessGroup | None = None,
) -> nn.Module:
    """Wrap ``backbone`` in DDP when there is more than one rank.

    DDP runs with a static graph (every parameter is used every step) and gradients as views
    of its buckets (no extra copy). With gradient accumulation the graph is not declared
    static: DDP's static-graph mode fails an internal assertion when micro-batches run under
    ``no_sync()`` (seen with torch 2.13 on gloo). Buffers (BatchNorm statistics) are
    synchronised once at construction and not before every forward: each rank then keeps its
    own, as in arcface_torch. The sharded head is never wrapped: its parameters are rank-local.

    Args:
        backbone: the module to wrap.
        cfg: the ``dist`` config section.
        topology: this rank's position (one rank: no wrapping unless collectives are forced).
        device: the training device.
        grad_accum: micro-batches per step.
        group: data-parallel group (None = the default group).
    """
    if topology.world_size == 1 and not comm.is_active(group):
        return backbone
    # 1x1 convolution weights [O, I, 1, 1] get gradients whose strides differ from the bucket
    # view only in the size-1 dimensions: same memory layout, no extra copy, nothing to fix.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp_class = DistributedDataParallel  # looked up here, so a test can stand in an older one
    ddp = ddp_class(
        backbone,
        device_ids=[device.index] if device.type == "cuda" else None,
        process_group=group,
        gradient_as_bucket_view=True,
        static_graph=grad_accum == 1,
        **buffer_sync_kwargs(ddp_class),
    )
    if "forward_sync_buffers" not in _ddp_keywords(ddp_class):
        for buffer in backbone.buffers():  # what forward_sync_buffers=False still does once
            comm.broadcast(buffer.data, 0, group)
    if cfg.fp16_grad_compression:
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    return ddp
