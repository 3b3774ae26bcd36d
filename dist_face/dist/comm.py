"""Collectives that work at world size 1 and before any process group exists.

Every function takes an explicit ``group`` (``None`` = the default group). With no process
group, or a group of size 1, they return their input unchanged, so single-process code needs
no branches. A run started with ``dist.force_process_group`` runs them even at world size 1,
so that a one-GPU run meets NCCL's rules on every collective.

Host-side flags (a checkpoint's success, an early stop) are CPU tensors, which an NCCL group
rejects: :func:`control_group` returns a group that serves CPU tensors for any group (see
:mod:`dist_face.dist.context` for why it is a cached gloo group).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup, ReduceOp


class CollectiveTimer(Protocol):
    """Receives the spans of collectives (see ``dist_face.train.timing.StepTimer``)."""

    def collective_start(self) -> object | None:
        """Open a span; the token (or None: not timed) goes to :meth:`collective_end`."""

    def collective_end(self, token: object | None) -> None:
        """Close the span ``token`` opened."""


_timer: CollectiveTimer | None = None
_forced = False
_control: dict[ProcessGroup | None, ProcessGroup | None] = {}
_labels: dict[ProcessGroup | None, ProcessGroup | None] = {}


def time_collectives(timer: CollectiveTimer | None) -> None:
    """Report every collective of this module to ``timer`` from now on (None: stop).

    Process-wide on purpose: autograd may run backward on another thread.
    """
    global _timer
    _timer = timer


def _timed(fn: Any, *args: Any, **kwargs: Any) -> None:
    timer = _timer
    token = timer.collective_start() if timer is not None else None
    fn(*args, **kwargs)
    if token is not None:
        timer.collective_end(token)  # type: ignore[union-attr]


def force_collectives(enabled: bool) -> None:
    """Run collectives even on a one-member group (set by ``init_distributed``)."""
    global _forced
    _forced = enabled


def is_active(group: ProcessGroup | None = None) -> bool:
    """True when a process group exists and has more than one member (or collectives are forced)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return _forced or dist.get_world_size(group) > 1


def serves_cpu(group: ProcessGroup | None = None) -> bool:
    """Whether ``group``'s backend accepts CPU tensors (gloo, mpi, or a ``cpu:`` entry).

    A plain ``nccl`` group serves CUDA tensors only; a mixed ``"cpu:gloo,cuda:nccl"`` group
    serves both.
    """
    backend = str(dist.get_backend(group)).lower()
    if ":" in backend:
        return any(part.split(":")[0].strip() == "cpu" for part in backend.split(","))
    return backend in ("gloo", "mpi")


def control_group(group: ProcessGroup | None = None) -> ProcessGroup | None:
    """A group with the ranks of ``group`` that serves CPU tensors (built once, then cached).

    ``group`` itself when its backend serves the CPU, else a gloo group over the same ranks.
    Building one is collective over the whole world: call it on every rank in the same order
    (``init_distributed`` does so at start-up).
    """
    if not (dist.is_available() and dist.is_initialized()) or serves_cpu(group):
        return group
    if group not in _control:
        ranks = None if group is None else dist.get_process_group_ranks(group)
        _control[group] = dist.new_group(ranks=ranks, backend="gloo")
    return _control[group]


def label_group(group: ProcessGroup | None = None) -> ProcessGroup | None:
    """A gloo group over the ranks of ``group`` for the label path alone (built once, cached).

    The label path gathers the labels of the step ahead on a worker thread
    (:mod:`dist_face.heads.sharded.label_path`) while the main thread runs collectives of its own;
    two threads issuing on one group could issue in a different order on different ranks, so
    this group is never the default or the control group. None without a process group.
    Building one is collective over the whole world: every rank calls it at the same point.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if group not in _labels:
        ranks = None if group is None else dist.get_process_group_ranks(group)
        _labels[group] = dist.new_group(ranks=ranks, backend="gloo")
    return _labels[group]


def forget_groups() -> None:
    """Drop the cached control and label groups (their process groups are being destroyed)."""
    _control.clear()
    _labels.clear()
    force_collectives(False)


def get_world_size(group: ProcessGroup | None = None) -> int:
    """World size of ``group``, 1 without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(group)
    return 1


def get_rank(group: ProcessGroup | None = None) -> int:
    """Rank of this process in ``group``, 0 without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group)
    return 0


def backend_name(group: ProcessGroup | None = None) -> str:
    """Backend of ``group`` (``gloo``/``nccl``), ``none`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend(group))
    return "none"


def barrier(group: ProcessGroup | None = None) -> None:
    """Wait for every rank of ``group``."""
    if is_active(group):
        dist.barrier(group)


def all_reduce(
    tensor: torch.Tensor, op: ReduceOp.RedOpType = ReduceOp.SUM, group: ProcessGroup | None = None
) -> torch.Tensor:
    """All-reduce ``tensor`` in place and return it."""
    if is_active(group):
        _timed(dist.all_reduce, tensor, op=op, group=group)
    return tensor


def broadcast(
    tensor: torch.Tensor, src: int = 0, group: ProcessGroup | None = None
) -> torch.Tensor:
    """Broadcast ``tensor`` in place from global rank ``src`` and return it."""
    if is_active(group):
        dist.broadcast(tensor, src=src, group=group)
    return tensor


def all_gather(
    tensor: torch.Tensor, group: ProcessGroup | None = None, timed: bool = True
) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0, in rank order (no grad).

    Args:
        tensor: ``[B, ...]`` on this rank; every rank must pass the same shape.
        group: the ranks to gather from (None: the default group).
        timed: report the call to the step's collective timer; False for a gather that runs
            beside the step (on another thread), not inside it.

    Returns:
        ``[W * B, ...]``.
    """
    if not is_active(group):
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    if timed:
        _timed(dist.all_gather, parts, tensor.contiguous(), group=group)
    else:
        dist.all_gather(parts, tensor.contiguous(), group=group)
    return torch.cat(parts, dim=0)


def all_gather_object(obj: Any, group: ProcessGroup | None = None) -> list[Any]:
    """Gather one picklable object from every rank, in rank order."""
    if not is_active(group):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, obj, group=group)
    return out


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradients of every rank's copy.

    Written by hand because torch.distributed's built-in differentiable gathers abort the
    process at exit on gloo in a fraction of runs.
    """

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        ctx.rows = tensor.shape[0]
        return all_gather(tensor, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        group, rows = ctx.group, ctx.rows
        rank = dist.get_rank(group)
        grad = grad.contiguous()
        if backend_name(group) == "nccl":
            out = torch.empty((rows, *grad.shape[1:]), dtype=grad.dtype, device=grad.device)
            _timed(dist.reduce_scatter_tensor, out, grad, op=ReduceOp.SUM, group=group)
            return out, None
        # gloo has no reduce-scatter: all-reduce the whole gradient and keep our rows.
        grad = grad.clone()
        _timed(dist.all_reduce, grad, op=ReduceOp.SUM, group=group)
        return grad[rank * rows : (rank + 1) * rows].contiguous(), None


def all_gather_with_grad(tensor: torch.Tensor, group: ProcessGroup | None = None) -> torch.Tensor:
    """Differentiable all-gather along dim 0, in rank order.

    Forward: ``[B, ...]`` on every rank → ``[W * B, ...]`` (every rank must pass the same
    shape). Backward: the gradient reaching this rank's ``[B, ...]`` input is the **sum over
    ranks** of the gradients of its rows in every rank's output. If each rank computes a part
    ``L_r`` of one objective ``L = Σ_r L_r`` from the gathered tensor, this is exactly
    ``∂L/∂input``. At world size 1 it is the identity.
    """
    if not is_active(group):
        return tensor
    return _AllGatherWithGrad.apply(tensor, group)
