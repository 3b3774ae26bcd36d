"""Autograd pieces of the sharded head: distributed softmax cross-entropy and gradient routing.

All take an explicit process group and are plain local computations without one (or at world
size 1), so the single-device head runs the very same code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed import ProcessGroup, ReduceOp

from dist_face.dist import comm


class _DistCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of ``[N, C]`` logits whose columns are split over ranks."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, group: ProcessGroup | None
    ) -> torch.Tensor:
        n, k = logits.shape
        # masks, not nonzero: the number of rows owning their target stays on the device
        owned = labels >= 0
        cols = labels.clamp_min(0)[:, None]
        # global row max: the softmax is shift-invariant, so it needs no gradient
        if k > 0:
            row_max = logits.detach().amax(dim=1)
        else:  # a rank that sampled no class contributes nothing
            row_max = torch.full((n,), float("-inf"), dtype=logits.dtype, device=logits.device)
        comm.all_reduce(row_max, ReduceOp.MAX, group)
        probs = torch.exp(logits.detach() - row_max[:, None])
        # one all-reduce for both the denominator and the (max-shifted) target logit
        stats = torch.zeros((2, n), dtype=logits.dtype, device=logits.device)
        stats[0] = probs.sum(dim=1)
        if k > 0:
            target = logits.detach().gather(1, cols).squeeze(1) - row_max
            stats[1] = torch.where(owned, target, 0.0)
        comm.all_reduce(stats, ReduceOp.SUM, group)
        denom, target = stats[0], stats[1]
        # denom >= 1 (the max term is exp(0)), so the log is finite; no 1e-30 floor needed
        loss = (torch.log(denom) - target).sum() / n
        probs.div_(denom[:, None])
        ctx.save_for_backward(probs, cols, owned)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        probs, cols, owned = ctx.saved_tensors
        scale = grad / probs.shape[0]
        out = probs * scale
        if out.shape[1] > 0:  # -1/N at each owned target; rows owned elsewhere add 0
            out.scatter_add_(1, cols, (-scale * owned.to(out.dtype))[:, None])
        return out, None, None


def dist_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, group: ProcessGroup | None = None
) -> torch.Tensor:
    """Softmax cross-entropy averaged over the ``N`` rows, with columns sharded over ``group``.

    ``L = (1/N) Σ_i [log Σ_{r,j} exp(z_ij − m_i) − (z_{i,y_i} − m_i)]`` with ``m_i`` the global
    row max (all-reduce MAX), the denominator and the target logit all-reduced (one SUM of a
    ``[2, N]`` tensor). The gradient w.r.t. this rank's logits is ``(p_ij − 1[j = y_i]) / N``;
    it needs no communication.

    Args:
        logits: ``[N, K]`` float32, this rank's columns of the global logits.
        labels: ``[N]`` int64, the target column in this rank's block or ``-1``. Every row's
            target must be on exactly one rank.
        group: process group over which the columns are split.

    Returns:
        Scalar loss, identical on every rank.
    """
    return _DistCrossEntropy.apply(logits, labels, group)


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in forward; multiplies the gradient by ``factor`` in backward."""
    if factor == 1.0:
        return x
    return _ScaleGrad.apply(x, factor)


class _SumGradAcrossRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return comm.all_reduce(grad.clone(), ReduceOp.SUM, ctx.group), None


def sum_grad_across_ranks(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Identity in forward; all-reduces (SUM) the gradient over ``group`` in backward.

    For a parameter replicated on every rank whose loss terms are split over ranks: each
    rank's backward yields a partial gradient, and the sum is the full one, on every rank.
    """
    if not comm.is_active(group):
        return x
    return _SumGradAcrossRanks.apply(x, group)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
        return comm.all_reduce(x.detach().clone(), ReduceOp.SUM, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def sum_across_ranks(x: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """``Σ_r x_r`` on every rank; backward passes the gradient to the local ``x`` unchanged.

    This is the convention of a loss split into per-rank parts ``L = Σ_r L_r`` that every rank
    evaluates in full: each rank differentiates only its own part, and whatever is shared
    (gathered embeddings, replicated parameters) sums the parts in its own backward.
    """
    if not comm.is_active(group):
        return x
    return _AllReduceSum.apply(x, group)
