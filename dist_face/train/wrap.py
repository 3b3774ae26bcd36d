"""The one place that wraps the backbone for data parallelism."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from dist_face.config import DistConfig
from dist_face.dist import Topology


def wrap_backbone(
    backbone: nn.Module,
    cfg: DistConfig,
    topology: Topology,
    device: torch.device,
    grad_accum: int = 1,
) -> nn.Module:
    """Wrap ``backbone`` in DDP when there is more than one rank.

    DDP runs with a static graph (every parameter is used every step) and gradients as views
    of its buckets (no extra copy). With gradient accumulation the graph is not declared
    static: DDP's static-graph mode fails an internal assertion when micro-batches run under
    ``no_sync()`` (seen with torch 2.13 on gloo). Buffers (BatchNorm statistics) are
    synchronised once at construction and not before every forward: each rank then keeps its
    own, as in arcface_torch. The sharded head is never wrapped: its parameters are rank-local.
    """
    if topology.world_size == 1:
        return backbone
    # 1x1 convolution weights [O, I, 1, 1] get gradients whose strides differ from the bucket
    # view only in the size-1 dimensions: same memory layout, no extra copy, nothing to fix.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp = DistributedDataParallel(
        backbone,
        device_ids=[device.index] if device.type == "cuda" else None,
        forward_sync_buffers=False,
        gradient_as_bucket_view=True,
        static_graph=grad_accum == 1,
    )
    if cfg.fp16_grad_compression:
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    return ddp
