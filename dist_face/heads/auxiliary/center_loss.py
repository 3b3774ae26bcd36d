"""Center loss (Wen et al. ECCV'16) with class centers sharded like the classifier.

Rank ``r`` holds the centers of ``class_range(C, r, W)`` only. Each rank gathers the global
batch, computes the terms of the samples whose class it owns, and the parts are summed over
ranks (:func:`dist_face.heads.auxiliary.global_batch.global_sum`, with the same DDP factor as the
pair losses). Centers are a **buffer** updated by the paper's α rule, not by the optimizer::

    L_C = 1/(2N) · Σ_i ‖x_i − c_{y_i}‖²            (mean over the global batch of N samples)
    Δc_j = Σ_{i: y_i = j} (c_j − x_i) / (1 + n_j),   c_j ← c_j − α·Δc_j

The joint objective is ``L_softmax + λ·L_C``; λ is this loss's weight in the weighted sum
(``aux.weights``; 0.003 in the paper). Keep this module out of DDP: its buffer is a shard, and
DDP would overwrite it with rank 0's (``broadcast_buffers``).
"""

from __future__ import annotations

import torch
from torch.distributed import ProcessGroup

from dist_face.dist.comm import get_rank, get_world_size
from dist_face.heads.auxiliary.global_batch import GlobalBatchLoss
from dist_face.heads.sharded.shard_math import class_range


class CenterLoss(GlobalBatchLoss):
    """Center loss on the global batch; this rank owns centers ``[start, end)`` of ``C``.

    Centers start at zero (the same on any world size, so a run can be resharded) and move
    by the α rule in :meth:`forward` while the module is in training mode. Labels must lie in
    ``[0, C)``; a label outside it is owned by no rank and contributes nothing.
    """

    centers: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        alpha: float = 0.5,
        group: ProcessGroup | None = None,
        ddp_average: bool = True,
    ) -> None:
        """Create this rank's shard of ``[C, D]`` centers.

        Args:
            num_classes: total number of classes C (over all ranks).
            embedding_size: embedding dimension D.
            alpha: center learning rate α of the update rule, in ``[0, 1]``.
            group: process group the classes are sharded over.
            ddp_average: scale the embedding gradient by W to undo DDP's average.
        """
        super().__init__(group, ddp_average)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"center loss alpha must be in [0, 1], got {alpha}")
        self.num_classes = num_classes
        self.alpha = alpha
        self.start, self.end = class_range(num_classes, get_rank(group), get_world_size(group))
        self.register_buffer("centers", torch.zeros(self.end - self.start, embedding_size))

    def partial_loss(
        self, all_emb: torch.Tensor, all_labels: torch.Tensor, offset: int, local: int
    ) -> torch.Tensor:
        """Terms of the global-batch samples whose class this rank owns; updates the centers."""
        owned = (all_labels >= self.start) & (all_labels < self.end)
        index = (all_labels - self.start).clamp(0, self.centers.shape[0] - 1)
        # indexing copies the rows, so the in-place center update below leaves the graph intact
        diff = all_emb - self.centers[index].to(all_emb.dtype)
        part = 0.5 * ((diff * diff).sum(1) * owned).sum() / all_emb.shape[0]
        if self.training:
            self._update_centers(diff.detach(), index, owned)
        return part

    @torch.no_grad()
    def _update_centers(self, diff: torch.Tensor, index: torch.Tensor, owned: torch.Tensor) -> None:
        """``c_j ← c_j − α·Σ_{y_i=j}(c_j − x_i)/(1 + n_j)`` for owned classes; ``diff = x − c``."""
        weight = owned.to(diff.dtype)
        count = torch.zeros(self.centers.shape[0], dtype=diff.dtype, device=diff.device)
        count.index_add_(0, index, weight)
        total = torch.zeros(self.centers.shape, dtype=diff.dtype, device=diff.device)
        total.index_add_(0, index, diff * weight[:, None])
        # diff = x − c, so Δc_j = −total_j / (1 + n_j) and c_j − α·Δc_j = c_j + α·total_j/(1+n_j)
        step = self.alpha * total / (1.0 + count)[:, None]
        self.centers.add_(step.to(self.centers.dtype))

    def extra_repr(self) -> str:
        """Shard and hyper-parameters, for ``print(module)``."""
        return (
            f"classes=[{self.start}, {self.end}) of {self.num_classes}, "
            f"dim={self.centers.shape[1]}, alpha={self.alpha}"
        )
