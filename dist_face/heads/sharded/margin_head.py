"""Single-device reference head: all ``C`` centers on one device, plain ``F.cross_entropy``.

It shares only the margins with :class:`~dist_face.heads.sharded.partial_fc.PartialFC` (no gathers,
no sampling, no distributed softmax) and is the reference the sharded head is tested against.
Use it for small class counts on one device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dist_face.heads.margins.common import MARGINS, Margin, MarginInput, filter_interclass
from dist_face.heads.sharded.sampling import init_class_centers


class MarginHead(nn.Module):
    """Full softmax (or UCE) over all classes with a margin, on one device.

    Args:
        embedding_size: D.
        num_classes: C.
        margin: a :class:`Margin` or a registered name.
        seed: center initialisation (the same values as ``PartialFC`` with this seed).
        interclass_filtering_threshold: as in ``PartialFC``.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        margin: Margin | str,
        seed: int = 0,
        interclass_filtering_threshold: float = 0.0,
    ) -> None:
        super().__init__()
        self.margin = MARGINS.get(margin)() if isinstance(margin, str) else margin
        k = self.margin.sub_centers
        init = init_class_centers(0, num_classes * k, embedding_size, seed)
        # [C, D], or [C, K, D] with K sub-centers per class (the sharded head's layout)
        self.weight = nn.Parameter(init if k == 1 else init.view(num_classes, k, embedding_size))
        bias = nn.Parameter(torch.zeros(num_classes)) if self.margin.class_bias else None
        self.register_parameter("bias", bias)
        self.interclass_filtering_threshold = interclass_filtering_threshold

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin logits ``[B, C]`` (softmax objectives) or per-row UCE sums ``[B]``."""
        x, w = embeddings, self.weight.reshape(-1, embeddings.shape[1])
        x_norm = torch.linalg.vector_norm(x, dim=1)
        w_norm = torch.linalg.vector_norm(w, dim=1)
        xin = F.normalize(x, dim=1) if self.margin.normalize_embedding else x
        win = F.normalize(w, dim=1) if self.margin.normalize_weight else w
        z = xin @ win.T
        if self.margin.sub_centers > 1:  # a class's cosine: the max over its sub-centers
            z = z.view(z.shape[0], -1, self.margin.sub_centers).amax(dim=2)
        if self.margin.normalize_embedding and self.margin.normalize_weight:
            z = z.clamp(-1.0, 1.0)
            z = filter_interclass(z, labels, self.interclass_filtering_threshold)
        target_cos = None
        if self.margin.needs_target_cos:
            target_cos = z.detach().gather(1, labels[:, None])[:, 0]
        inp = MarginInput(z, labels, x_norm, w_norm, self.bias, target_cos)
        return self.margin(inp)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch: ``[B, D]``, ``[B]`` → scalar."""
        out = self.logits(embeddings, labels.long())
        loss = out.mean() if self.margin.objective == "uce" else F.cross_entropy(out, labels.long())
        if self.margin.has_row_loss:
            loss = loss + self.margin.row_loss(torch.linalg.vector_norm(embeddings, dim=1)).mean()
        return loss
