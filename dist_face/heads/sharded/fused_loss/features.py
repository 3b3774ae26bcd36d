"""The margin's hooks into the fused loss: each feature owns its forward term and its gradient.

A plain margin (NormFace, CosFace, ArcFace, CurricularFace, UniFace…) needs none: the loss
projects, applies the margin block by block and reduces. Three kinds of margins hook in:

* :class:`NormReader` — the margin reads every row's ``‖x‖`` (``needs_x_norm``: MagFace), or
  is not a cosine margin and reads ``‖x‖`` and ``‖w‖`` (softmax, SphereFace, L-Softmax). The
  norms enter the margin's input; their gradients come back from the margin's autograd, the
  ``‖w‖`` one is applied to the block's rows here.
* :class:`RowLoss` — a per-row term of ``‖x‖`` added to the loss (``has_row_loss``:
  MagFace's regulariser), identical on every rank, its gradient counted once.
* :class:`SubCenters` — ``K`` centers per class (``sub_centers``: sub-center ArcFace): a
  class's projection is the max over its ``K`` rows and its gradient reaches the arg-max row.

AdaFace reads ``‖x‖`` too, detached, once per step in ``Margin.begin_step``, which the loss
calls for every margin: it needs no feature. UniFace's per-row sums are its objective
(``objective = "uce"``), not a feature.

The chain through ``‖x‖`` to the embeddings (``∂‖x‖/∂x``) is the backward's, shared by the
features that contribute an ``∂L/∂‖x‖`` (:class:`NormGrad`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dist_face.dist import comm
from dist_face.heads.margins.common import Margin
from dist_face.heads.sharded.fused_loss.spec import EPS

if TYPE_CHECKING:
    from dist_face.heads.sharded.fused_loss.plan import Block, Plan


class NormGrad:
    """``∂L/∂‖x‖`` ``[N]``, summed over the blocks and features that contribute (None: none)."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def add(self, grad: torch.Tensor) -> None:
        """Add one contribution ``[N]``."""
        self.value = grad if self.value is None else self.value + grad


class Feature:
    """One hook of a margin into the fused loss; every method is a no-op by default.

    Methods run in this order: per block in forward and backward :meth:`shape_block` and
    :meth:`margin_norms`; per block in backward :meth:`z_grad` (before the projection's
    backward), then :meth:`rows_grad`; once per forward :meth:`loss_term`, once per
    backward :meth:`norm_grad`. Features hold no per-step state (the plan does).
    """

    touches_margin: bool = False
    """The margin reads what this feature adds to its input: the loss then differentiates
    whole blocks through the margin, not only the target logits (``target_only``)."""

    def shape_block(self, plan: Plan, blk: Block) -> None:
        """Change the block's projection ``blk.z`` ``[N, Kc]`` after it is computed."""

    def margin_norms(
        self, plan: Plan, blk: Block, leaves: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``‖x‖`` ``[N]`` and ``‖w‖`` ``[Kc]`` the margin reads, or None each.

        Args:
            plan: the forward's values.
            blk: the block.
            leaves: detached copies that require grad (backward's autograd through the margin).
        """
        return None, None

    def loss_term(self, plan: Plan) -> torch.Tensor | None:
        """A scalar added to the loss (the same on every rank), or None."""
        return None

    def z_grad(self, plan: Plan, blk: Block, gz: torch.Tensor) -> torch.Tensor:
        """``∂L/∂z`` of the block as the projection's backward takes it (``[N, rows]``)."""
        return gz

    def rows_grad(
        self,
        plan: Plan,
        blk: Block,
        got: dict[str, torch.Tensor | None],
        grad_w: torch.Tensor,
        gxn: NormGrad,
    ) -> torch.Tensor:
        """The block's row gradient as the sink takes it, from ``∂L/∂w`` ``[rows, D]``.

        Args:
            plan: the forward's values.
            blk: the block.
            got: the gradients of the margin's other inputs (``x_norm``, ``w_norm``, ``bias``).
            grad_w: ``[rows, D]`` the projection's gradient w.r.t. the block's rows.
            gxn: ``∂L/∂‖x‖`` accumulated over blocks; add to it.
        """
        return grad_w

    def norm_grad(self, plan: Plan, g: torch.Tensor, gxn: NormGrad) -> None:
        """Add the loss term's ``∂/∂‖x‖`` ``[N]`` into ``gxn`` (``g``: upstream gradient / N)."""


class NormReader(Feature):
    """The margin reads ``‖x‖`` ``[N]`` (differentiable) and, not cosine, ``‖w‖`` ``[Kc]``.

    Args:
        weight: also ``‖w‖`` (margins that project without normalising: not cosine).
    """

    touches_margin = True

    def __init__(self, weight: bool) -> None:
        self.weight = weight

    def margin_norms(
        self, plan: Plan, blk: Block, leaves: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``‖x‖`` ``[N]`` and ``‖w‖`` ``[Kc]`` (None unless ``weight``)."""
        w_norm = blk.w_norm if self.weight else None
        if not leaves:
            return plan.x_norm, w_norm
        x_norm = plan.x_norm.detach().clone().requires_grad_(True)
        return x_norm, None if w_norm is None else w_norm.detach().requires_grad_(True)

    def rows_grad(
        self,
        plan: Plan,
        blk: Block,
        got: dict[str, torch.Tensor | None],
        grad_w: torch.Tensor,
        gxn: NormGrad,
    ) -> torch.Tensor:
        """Adds ``∂L/∂‖w‖ · w/‖w‖`` to ``grad_w``; ``∂L/∂‖x‖`` into ``gxn``."""
        if got.get("w_norm") is not None:  # ∂‖w‖/∂w = w/‖w‖
            grad_w += (got["w_norm"] / blk.w_norm.clamp_min(EPS))[:, None] * blk.w
        if got.get("x_norm") is not None:
            gxn.add(got["x_norm"])
        return grad_w


class RowLoss(Feature):
    """The margin's per-row loss of ``‖x‖``, its batch mean added to the loss (MagFace)."""

    def __init__(self, margin: Margin) -> None:
        self.margin = margin

    def loss_term(self, plan: Plan) -> torch.Tensor:
        """``mean_i row_loss(‖x_i‖)``: identical on every rank, no communication."""
        return self.margin.row_loss(plan.x_norm).sum() / plan.x_norm.shape[0]

    def norm_grad(self, plan: Plan, g: torch.Tensor, gxn: NormGrad) -> None:
        """This rank's share of ``∂/∂‖x‖``: ``1/W`` of it.

        Every rank adds the same row loss, and the all-gather's backward sums the ranks'
        gradients.
        """
        with torch.enable_grad():
            leaf = plan.x_norm.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.margin.row_loss(leaf).sum(), leaf)
        gxn.add(grad * (g / comm.get_world_size(plan.spec.group)))


class SubCenters(Feature):
    """``K`` centers per class (weight ``[C_local, K, D]``; a class's rows are adjacent).

    Args:
        k: sub-centers per class (> 1).
    """

    def __init__(self, k: int) -> None:
        self.k = k

    def shape_block(self, plan: Plan, blk: Block) -> None:
        """``z`` ``[N, Kc]``: each class's max over its rows ``z_rows`` ``[N, Kc·K]``."""
        blk.z, blk.pick = blk.z_rows.view(blk.z_rows.shape[0], -1, self.k).max(dim=2)

    def z_grad(self, plan: Plan, blk: Block, gz: torch.Tensor) -> torch.Tensor:
        """``[N, Kc·K]``: a class's gradient at its arg-max row, zero at the others."""
        rows = torch.zeros(gz.shape[0], blk.pick.shape[1], self.k, dtype=gz.dtype, device=gz.device)
        return rows.scatter_(2, blk.pick[..., None], gz[..., None]).view_as(blk.z_rows)

    def rows_grad(
        self,
        plan: Plan,
        blk: Block,
        got: dict[str, torch.Tensor | None],
        grad_w: torch.Tensor,
        gxn: NormGrad,
    ) -> torch.Tensor:
        """Back to the weight's ``[Kc, K, D]`` rows."""
        return grad_w.view(-1, *plan.weight.shape[1:])


def features_for(margin: Margin) -> tuple[Feature, ...]:
    """The features a margin needs, from its flags (an empty tuple for plain margins).

    Raises:
        ValueError: sub-centers on a margin that is not cosine or reads the target cosine.
    """
    cosine = margin.normalize_embedding and margin.normalize_weight
    found: list[Feature] = []
    if not cosine or margin.needs_x_norm:
        found.append(NormReader(weight=not cosine))
    if margin.has_row_loss:
        found.append(RowLoss(margin))
    if margin.sub_centers > 1:
        if margin.needs_target_cos or not cosine:
            raise ValueError("sub-center margins must be cosine margins without target_cos")
        found.append(SubCenters(margin.sub_centers))
    return tuple(found)
