"""Pair and metric losses on the all-gathered global batch, and their registry.

Each loss sees every pair of the ``N = W·B`` global batch (negatives from every rank) while
each rank only computes the ``B × N`` block of its own anchors; see
:mod:`dist_face.heads.auxiliary.global_batch` for the split and the DDP gradient factor. All are
``forward(embeddings [B, D], labels [B]) -> scalar``. Notation: ``f_i = x_i/‖x_i‖``,
``s_ij = f_i·f_j``, ``d_ij = ‖f_i − f_j‖²``, ``P(i)`` = same label (not ``i``), ``N(i)`` =
different label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributed import ProcessGroup

from dist_face.heads.auxiliary.center_loss import CenterLoss
from dist_face.heads.auxiliary.global_batch import (
    GlobalBatchLoss,
    global_count,
    masked_logsumexp,
    pair_masks,
)
from dist_face.registry import Registry

PAIR_LOSSES: Registry[type[torch.nn.Module]] = Registry("pair_loss")
PAIR_LOSSES.register("center")(CenterLoss)


def _local_block(
    all_emb: torch.Tensor, offset: int, local: int, normalize: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f_local [B, D], f_all [N, D])``, L2-normalised unless ``normalize`` is False."""
    f = F.normalize(all_emb, dim=1) if normalize else all_emb
    return f[offset : offset + local], f


def _sq_dist(f_local: torch.Tensor, f_all: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` squared Euclidean distances, clamped at 0 against round-off."""
    sq = (f_local * f_local).sum(1)[:, None] + (f_all * f_all).sum(1)[None, :]
    return (sq - 2.0 * f_local @ f_all.T).clamp_min(0.0)


def _safe_mean_share(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` with 0 (and a zero gradient) when ``count`` is 0."""
    return total / count.clamp_min(1).to(total.dtype)


@PAIR_LOSSES.register("contrastive")
class ContrastiveLoss(GlobalBatchLoss):
    """Contrastive loss (Hadsell et al. CVPR'06; DeepID2) over all pairs of the global batch.

    ``L = ½·mean_{pos pairs} d_ij + ½·mean_{neg pairs} [m − √d_ij]₊²`` on normalised embeddings
    (``d`` squared distance). Positive and negative pairs are averaged separately, so the few
    positives of a large batch are not drowned by its many negatives.
    """

    def __init__(
        self, margin: float = 1.0, group: ProcessGroup | None = None, ddp_average: bool = True
    ) -> None:
        """Create the loss; ``margin`` m is a Euclidean distance in ``[0, 2]``."""
        super().__init__(group, ddp_average)
        self.margin = margin

    def partial_loss(
        self, all_emb: torch.Tensor, all_labels: torch.Tensor, offset: int, local: int
    ) -> torch.Tensor:
        """Terms of this rank's anchors (every ordered pair ``(i, j)``, ``i`` local)."""
        f_local, f_all = _local_block(all_emb, offset, local)
        d2 = _sq_dist(f_local, f_all)
        pos, neg = pair_masks(all_labels[offset : offset + local], all_labels, offset)
        # √ with a floor: the gradient of √ at 0 is infinite; below the floor clamp stops it
        hinge = (self.margin - d2.clamp_min(1e-12).sqrt()).clamp_min(0.0) ** 2
        same = _same_label_counts(all_labels)
        pos_part = _safe_mean_share((d2 * pos).sum(), (same - 1).sum())
        neg_part = _safe_mean_share((hinge * neg).sum(), (same.numel() - same).sum())
        return 0.5 * (pos_part + neg_part)


@PAIR_LOSSES.register("triplet")
class TripletLoss(GlobalBatchLoss):
    """Triplet loss (Schroff et al. CVPR'15) with online mining in the global batch.

    ``ℓ = [d_ap − d_an + α]₊`` on normalised embeddings, ``d`` squared distance.

    * ``batch_hard`` (Hermans et al.'17): per anchor the farthest positive and the nearest
      negative; mean over anchors that have both.
    * ``semi_hard`` (FaceNet): per anchor-positive pair the nearest negative with
      ``d_ap < d_an < d_ap + α``; mean over the pairs that have one.

    No valid triplet gives 0 with a zero gradient.
    """

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "batch_hard",
        group: ProcessGroup | None = None,
        ddp_average: bool = True,
    ) -> None:
        """Create the loss; ``mining`` is ``batch_hard`` or ``semi_hard``."""
        super().__init__(group, ddp_average)
        if mining not in ("batch_hard", "semi_hard"):
            raise ValueError(f"triplet mining must be batch_hard or semi_hard, got {mining!r}")
        self.margin = margin
        self.mining = mining

    def partial_loss(
        self, all_emb: torch.Tensor, all_labels: torch.Tensor, offset: int, local: int
    ) -> torch.Tensor:
        """Terms of this rank's anchors."""
        f_local, f_all = _local_block(all_emb, offset, local)
        d2 = _sq_dist(f_local, f_all)
        pos, neg = pair_masks(all_labels[offset : offset + local], all_labels, offset)
        if self.mining == "batch_hard":
            return self._batch_hard(d2, pos, neg, _anchors_with_pos_and_neg(all_labels))
        return self._semi_hard(d2, pos, neg)

    def _batch_hard(
        self, d2: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, n_anchors: torch.Tensor
    ) -> torch.Tensor:
        valid = pos.any(1) & neg.any(1)
        hardest_pos = d2.masked_fill(~pos, float("-inf")).max(1).values
        hardest_neg = d2.masked_fill(~neg, float("inf")).min(1).values
        hardest_pos = torch.where(valid, hardest_pos, torch.zeros_like(hardest_pos))
        hardest_neg = torch.where(valid, hardest_neg, torch.zeros_like(hardest_neg))
        losses = (hardest_pos - hardest_neg + self.margin).clamp_min(0.0) * valid
        return _safe_mean_share(losses.sum(), n_anchors)

    def _semi_hard(self, d2: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        # for every (anchor, column) pair: the nearest negative strictly farther than d_ap. Sort
        # each anchor's negative distances (non-negatives last, as +inf) and search for d_ap;
        # dense [B, N] work, no data-dependent shapes, so no host synchronisation
        d_ap = d2.detach()
        neg_sorted, neg_order = d_ap.masked_fill(~neg, float("inf")).sort(dim=1)
        k = torch.searchsorted(neg_sorted, d_ap.contiguous(), right=True)
        k = k.clamp_max(d2.shape[1] - 1)
        candidate = neg_sorted.gather(1, k)
        valid = pos & (candidate > d_ap) & (candidate < d_ap + self.margin)
        d_an = d2.gather(1, neg_order.gather(1, k))
        losses = (d2 - d_an + self.margin).clamp_min(0.0) * valid
        return _safe_mean_share(losses.sum(), global_count(valid.sum(), self.group))


@PAIR_LOSSES.register("npair")
class NPairLoss(GlobalBatchLoss):
    """Multi-class N-pair loss (Sohn NeurIPS'16) over every positive pair of the global batch.

    ``ℓ_ip = log(1 + Σ_{n∈N(i)} exp(x_iᵀx_n − x_iᵀx_p))`` on the raw embeddings, averaged over
    all pairs ``(i, p ∈ P(i))``, plus ``(λ/2)·mean_i ‖x_i‖²`` (the embedding-norm regulariser of
    the paper; λ = 0.002 as in TensorFlow's ``npairs_loss``).
    """

    def __init__(
        self, l2_reg: float = 0.002, group: ProcessGroup | None = None, ddp_average: bool = True
    ) -> None:
        """Create the loss; ``l2_reg`` is λ."""
        super().__init__(group, ddp_average)
        self.l2_reg = l2_reg

    def partial_loss(
        self, all_emb: torch.Tensor, all_labels: torch.Tensor, offset: int, local: int
    ) -> torch.Tensor:
        """Terms of this rank's anchors."""
        x_local, x_all = _local_block(all_emb, offset, local, normalize=False)
        sim = x_local @ x_all.T
        pos, neg = pair_masks(all_labels[offset : offset + local], all_labels, offset)
        lse_neg, has_neg = masked_logsumexp(sim, neg)
        # log(1 + Σ_n e^{s_in − s_ip}) = softplus(LSE_n s_in − s_ip); 0 without negatives
        pair = F.softplus(lse_neg[:, None] - sim) * (pos & has_neg[:, None])
        reg = 0.5 * self.l2_reg * (x_local * x_local).sum() / all_emb.shape[0]
        return _safe_mean_share(pair.sum(), (_same_label_counts(all_labels) - 1).sum()) + reg


@PAIR_LOSSES.register("circle")
class CircleLoss(GlobalBatchLoss):
    """Circle loss, pair-wise form (Sun et al. CVPR'20), per anchor of the global batch.

    ``ℓ_i = log[1 + Σ_{n∈N(i)} e^{γ·α_n(s_in − Δ_n)} · Σ_{p∈P(i)} e^{−γ·α_p(s_ip − Δ_p)}]`` with
    ``α_p = [1 + m − s_p]₊``, ``α_n = [s_n + m]₊`` (not differentiated), ``Δ_p = 1 − m``,
    ``Δ_n = m``; mean over anchors with at least one positive and one negative.
    """

    def __init__(
        self,
        m: float = 0.25,
        gamma: float = 256.0,
        group: ProcessGroup | None = None,
        ddp_average: bool = True,
    ) -> None:
        """Create the loss; face-recognition defaults m = 0.25, γ = 256."""
        super().__init__(group, ddp_average)
        self.m = m
        self.gamma = gamma

    def partial_loss(
        self, all_emb: torch.Tensor, all_labels: torch.Tensor, offset: int, local: int
    ) -> torch.Tensor:
        """Terms of this rank's anchors."""
        f_local, f_all = _local_block(all_emb, offset, local)
        s = f_local @ f_all.T
        pos, neg = pair_masks(all_labels[offset : offset + local], all_labels, offset)
        alpha_p = (1.0 + self.m - s.detach()).clamp_min(0.0)
        alpha_n = (s.detach() + self.m).clamp_min(0.0)
        lse_p, has_pos = masked_logsumexp(-self.gamma * alpha_p * (s - (1.0 - self.m)), pos)
        lse_n, has_neg = masked_logsumexp(self.gamma * alpha_n * (s - self.m), neg)
        valid = has_pos & has_neg
        losses = F.softplus(lse_p + lse_n) * valid
        return _safe_mean_share(losses.sum(), _anchors_with_pos_and_neg(all_labels))


@PAIR_LOSSES.register("supcon")
class SupConLoss(GlobalBatchLoss):
    """Supervised contrastive loss (Khosla et al. NeurIPS'20, ``L_out``) on the global batch.

    ``ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log( e^{s_ip/τ} / Σ_{a≠i} e^{s_ia/τ} )``; mean over anchors with
    at least one positive (no ``τ/τ_base`` factor).
    """

    def __init__(
        self,
        temperature: float = 0.1,
        group: ProcessGroup | None = None,
        ddp_average: bool = True,
    ) -> None:
        """Create the loss; ``temperature`` is τ."""
        super().__init__(group, ddp_average)
        self.temperature = temperature

    def partial_loss(
        self, all_emb: torch.Tensor, all_labels: torch.Tensor, offset: int, local: int
    ) -> torch.Tensor:
        """Terms of this rank's anchors."""
        f_local, f_all = _local_block(all_emb, offset, local)
        logits = f_local @ f_all.T / self.temperature
        pos, neg = pair_masks(all_labels[offset : offset + local], all_labels, offset)
        lse, _ = masked_logsumexp(logits, pos | neg)  # every a ≠ i
        n_pos = pos.sum(1)
        log_prob = (logits - lse[:, None]) * pos
        losses = -log_prob.sum(1) / n_pos.clamp_min(1).to(logits.dtype)
        n_anchors = (_same_label_counts(all_labels) > 1).sum()
        return _safe_mean_share(losses.sum(), n_anchors)


def _same_label_counts(all_labels: torch.Tensor) -> torch.Tensor:
    """``[N]``: how many global-batch samples share sample ``i``'s label (``i`` included).

    Global normalisers come from these counts, computed identically on every rank from the
    gathered labels, without an ``N × N`` mask.
    """
    ordered = all_labels.sort().values
    return torch.searchsorted(ordered, all_labels, right=True) - torch.searchsorted(
        ordered, all_labels
    )


def _anchors_with_pos_and_neg(all_labels: torch.Tensor) -> torch.Tensor:
    """Number of global-batch samples with at least one positive and one negative."""
    same = _same_label_counts(all_labels)
    return ((same > 1) & (same < same.numel())).sum()
