"""Losses over the all-gathered global batch, split so each rank computes only its share.

Every rank holds ``B`` local embeddings. A global-batch loss ``L`` is a function of all
``N = W·B`` embeddings. Instead of every rank computing ``L`` redundantly (an ``N × N`` pair
matrix on every rank), rank ``r`` computes a **part** ``L_r`` (for pair losses: the terms whose
anchor is one of its own ``B`` rows, a ``B × N`` block; for the center loss: the terms of the
classes it owns) with global normalisers, so that ``Σ_r L_r = L``. Then:

* forward: ``L = all_reduce(L_r)`` is returned, bit-identical on every rank;
* backward: the all-gather sums every rank's gradient for rank ``r``'s rows, so rank ``r``'s
  local embeddings receive ``Σ_r' ∂L_r'/∂x_r = ∂L/∂x_r``: exactly the single-device gradient.

**The DDP factor.** The trainer wraps the backbone in DDP, which *averages* parameter gradients
over the ``W`` ranks: ``g = (1/W)·Σ_r J_rᵀ e_r`` where ``e_r`` is the gradient reaching rank
``r``'s embeddings and ``J_r`` the backbone Jacobian of its samples. The single-device gradient
of ``L`` is ``Σ_r J_rᵀ ∂L/∂x_r``. So the embedding gradient must be ``e_r = W·∂L/∂x_r``: with
``ddp_average=True`` (the default) the backward of :func:`global_sum` multiplies by ``W``;
``ddp_average=False`` gives ``e_r = ∂L/∂x_r`` (for callers that sum, or do not reduce,
gradients). At world size 1 both are the same.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed import ProcessGroup

from dist_face.dist.comm import (
    all_gather,
    all_gather_with_grad,
    all_reduce,
    get_rank,
    get_world_size,
)


class _GlobalSum(torch.autograd.Function):
    """Forward: all-reduce (sum) of a scalar part; backward: the gradient times ``scale``."""

    @staticmethod
    def forward(
        ctx: Any, part: torch.Tensor, group: ProcessGroup | None, scale: float
    ) -> torch.Tensor:
        ctx.scale = scale
        return all_reduce(part.detach().clone(), group=group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad * ctx.scale, None, None


def global_sum(part: torch.Tensor, group: ProcessGroup | None, scale: float) -> torch.Tensor:
    """Sum a scalar over the ranks of ``group``; the gradient reaching ``part`` is ``scale·g``.

    Args:
        part: scalar, this rank's share ``L_r`` of the loss (differentiable).
        group: process group (``None`` = default; world size 1 without one).
        scale: backward factor; ``W`` to pre-compensate DDP's gradient average.

    Returns:
        Scalar ``Σ_r L_r``, the same value on every rank.
    """
    return _GlobalSum.apply(part, group, scale)


def global_count(count: torch.Tensor, group: ProcessGroup | None) -> torch.Tensor:
    """Sum a non-differentiable per-rank count over ``group`` (a tensor; no host sync)."""
    return all_reduce(count.detach().clone(), group=group)


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise ``log Σ_{j: mask_ij} exp(x_ij)`` with finite gradients when a row is empty.

    A plain ``logsumexp`` over an all ``-inf`` row returns ``-inf`` and a NaN gradient, which
    survives a later ``where``/multiply-by-zero; here empty rows are replaced by zeros *before*
    the reduction, so they get a finite dummy value and no gradient.

    Args:
        x: ``[R, K]`` scores.
        mask: ``[R, K]`` bool, which entries take part.

    Returns:
        ``(lse [R], valid [R])``; ``lse`` is meaningless (but finite) where ``valid`` is False.
    """
    valid = mask.any(dim=1)
    x = x.masked_fill(~mask, float("-inf"))
    x = torch.where(valid[:, None], x, torch.zeros_like(x))
    return torch.logsumexp(x, dim=1), valid


def pair_masks(
    labels: torch.Tensor, all_labels: torch.Tensor, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks of local anchors against the global batch.

    Args:
        labels: ``[B]`` labels of this rank's anchors.
        all_labels: ``[N]`` labels of the global batch.
        offset: global index of this rank's first anchor (``rank·B``), to exclude self-pairs.

    Returns:
        ``(pos [B, N], neg [B, N])``: same label and not self; different label.
    """
    same = labels[:, None] == all_labels[None, :]
    rows = torch.arange(labels.shape[0], device=labels.device)
    not_self = torch.ones_like(same)
    not_self[rows, rows + offset] = False
    return same & not_self, ~same


class GlobalBatchLoss(nn.Module):
    """Base of the losses computed on the all-gathered global batch.

    Subclasses implement :meth:`partial_loss`; :meth:`forward` gathers, calls it and sums the
    parts over ranks. Every rank must pass the same local batch size ``B``.
    """

    def __init__(self, group: ProcessGroup | None = None, ddp_average: bool = True) -> None:
        """Create the loss.

        Args:
            group: process group the batch is gathered over (``None`` = default group).
            ddp_average: scale the backward by the world size ``W`` because DDP averages the
                backbone gradients over ``W`` ranks (see the module docstring); turn off when
                gradients are summed or not reduced.
        """
        super().__init__()
        self.group = group
        self.ddp_average = ddp_average

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of the global batch.

        Args:
            embeddings: ``[B, D]`` this rank's embeddings (any float dtype; computed in fp32).
            labels: ``[B]`` integer class ids.

        Returns:
            Scalar loss of the ``W·B`` global batch, identical on every rank.
        """
        _check_batch(type(self).__name__, embeddings, labels)
        world = get_world_size(self.group)
        offset = get_rank(self.group) * embeddings.shape[0]
        emb = embeddings if embeddings.dtype == torch.float64 else embeddings.float()
        all_emb = all_gather_with_grad(emb, self.group)
        all_labels = all_gather(labels.long(), self.group)
        part = self.partial_loss(all_emb, all_labels, offset, embeddings.shape[0])
        return global_sum(part, self.group, float(world) if self.ddp_average else 1.0)

    def partial_loss(
        self, all_emb: torch.Tensor, all_labels: torch.Tensor, offset: int, local: int
    ) -> torch.Tensor:
        """This rank's share of the loss (sums to the global loss over ranks).

        Args:
            all_emb: ``[N, D]`` gathered embeddings (differentiable).
            all_labels: ``[N]`` gathered labels.
            offset: index in ``all_emb`` of this rank's first row.
            local: number of this rank's rows ``B``.

        Returns:
            Scalar share ``L_r``.
        """
        raise NotImplementedError


def _check_batch(name: str, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"{name}: embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"{name}: labels must be [B] = [{embeddings.shape[0]}], got shape {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point:
        raise ValueError(f"{name}: labels must be integer class ids, got {labels.dtype}")
