"""Build the configured auxiliary losses and add them to a margin head's loss."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed import ProcessGroup

from dist_face.data.loading.labels import on_device
from dist_face.heads.auxiliary.pair_losses import PAIR_LOSSES

if TYPE_CHECKING:
    from dist_face.config.schema import AuxLossConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _kwargs(name: str, cfg: AuxLossConfig, embedding_size: int, num_classes: int) -> dict[str, Any]:
    """Constructor arguments of loss ``name`` from the config section."""
    table: dict[str, dict[str, Any]] = {
        "contrastive": {"margin": cfg.contrastive_margin},
        "triplet": {"margin": cfg.triplet_margin, "mining": cfg.triplet_mining},
        "center": {
            "num_classes": num_classes,
            "embedding_size": embedding_size,
            "alpha": cfg.center_alpha,
        },
        "npair": {"l2_reg": cfg.npair_l2_reg},
        "circle": {"m": cfg.circle_m, "gamma": cfg.circle_gamma},
        "supcon": {"temperature": cfg.supcon_temperature},
    }
    return table.get(name, {})


def build_aux_losses(
    cfg: AuxLossConfig,
    embedding_size: int,
    num_classes: int,
    group: ProcessGroup | None = None,
) -> nn.ModuleDict:
    """Instantiate the losses named in ``cfg.losses``, in order.

    Args:
        cfg: the ``aux`` config section.
        embedding_size: embedding dimension D (center loss).
        num_classes: total number of classes C (center loss; sharded over ``group``).
        group: process group the batch is gathered over and the centers are sharded over.

    Returns:
        ``name → loss module``; empty when no auxiliary loss is configured.
    """
    losses = nn.ModuleDict()
    for name in cfg.losses:
        cls = PAIR_LOSSES.get(name)
        losses[name] = cls(**_kwargs(name, cfg, embedding_size, num_classes), group=group)
    return losses


class WeightedSum(nn.Module):
    """``total = head_weight·head(x, y) + Σ_k w_k·aux_k(x, y)`` and its unweighted parts.

    The head is any callable ``(embeddings, labels) -> scalar`` (a margin head); if it is an
    ``nn.Module`` it becomes a submodule (moved and saved with this one).
    """

    def __init__(
        self,
        head: LossFn,
        losses: Mapping[str, nn.Module],
        weights: Sequence[float],
        head_weight: float = 1.0,
    ) -> None:
        """Combine ``head`` with ``losses`` weighted by ``weights`` (same order and length)."""
        super().__init__()
        if len(weights) != len(losses):
            raise ValueError(f"{len(losses)} auxiliary losses but {len(weights)} weights")
        self.head = head
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = [float(w) for w in weights]
        self.head_weight = float(head_weight)

    @classmethod
    def from_config(
        cls,
        head: LossFn,
        cfg: AuxLossConfig,
        embedding_size: int,
        num_classes: int,
        group: ProcessGroup | None = None,
    ) -> WeightedSum:
        """Build the auxiliary losses of ``cfg`` and combine them with ``head``."""
        losses = build_aux_losses(cfg, embedding_size, num_classes, group)
        return cls(head, losses, cfg.weights, cfg.head_weight)

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted total and the parts.

        Args:
            embeddings: ``[B, D]`` this rank's embeddings.
            labels: ``[B]`` class ids, on the embeddings' device or on the host (the
                loader's: the head gets them as they are, the auxiliary losses a
                non-blocking device copy).

        Returns:
            ``(total, parts)``: scalar total; ``parts`` maps ``head`` and each auxiliary loss
            name to its unweighted scalar (tensors, no host synchronisation).
        """
        parts = {"head": self.head(embeddings, labels)}
        total = self.head_weight * parts["head"]
        labels = on_device(labels, embeddings.device)
        for (name, loss), weight in zip(self.losses.items(), self.weights):
            parts[name] = loss(embeddings, labels)
            total = total + weight * parts[name]
        return total, parts
