"""UniFace: the unified cross-entropy (UCE) loss of Zhou et al., ICCV 2023.

UCE replaces the softmax by independent sigmoid terms against one learnable threshold
``b̃`` shared by all classes (no softmax denominator, nothing to all-reduce but the loss)::

    L_i = softplus(−s (cos θ_{i,y} − m) + b̃) + λ · Σ_{j ≠ y, j sampled} softplus(s cos θ_{ij} − b̃)

and the loss is the mean over the global batch of these per-sample sums (official code:
"sum over classes, mean over batch"). ``m`` is the cosine margin (Cos-UniFace, Eq. 31), ``λ``
re-weights the negatives (balanced UCE, Eq. 32) and r-sampling keeps a random subset of the
negative classes: as in the official code this is the head's class sampling
(``sample_rate = r``), which always keeps the positives.

``b̃`` (``bias``) is one scalar replicated on every rank. Each rank's shard only sees its own
columns, so its gradient is partial: the head's fused loss sums it over blocks and all-reduces
(SUM) it over the head's group. After ``backward`` every rank holds the same, complete
``bias.grad``. It must not be weight-decayed: ``PartialFC.no_weight_decay()`` names it.
Softplus is evaluated in float32 with ``F.softplus`` (s·cos reaches ±64, beyond fp16's exp
range) and without the official code's clamp of its argument to ``[−s, s]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dist_face.config.base import require
from dist_face.heads.margins.common import (
    MARGINS,
    Margin,
    MarginInput,
    check_cos_margin,
    check_scale,
    replace_targets,
)


def uniface_default_bias(num_classes: int, sample_rate: float) -> float:
    """Official initial ``b̃ = log(10 · C · r)``, with ``C·r`` floored at 1 (``r = 0``)."""
    return math.log(10.0 * max(num_classes * sample_rate, 1.0))


@MARGINS.register("uniface")
class UniFace(Margin):
    """Unified cross-entropy; see the module docstring. ``forward`` returns ``[N]`` row sums.

    Args:
        scale: s (64).
        margin: m, cosine margin of the positive term (0.4).
        neg_weight: λ, weight of the negative terms (1.0; the paper's large-data runs use 0.7).
        bias_init: initial ``b̃``; 0 = log(10 · C · sample_rate) as in the official code
            (:func:`uniface_default_bias`).
        num_classes, sample_rate: C and the head's r, for the default ``b̃`` (from the run).
    """

    objective = "uce"

    def __init__(
        self,
        scale: float = 64.0,
        margin: float = 0.4,
        neg_weight: float = 1.0,
        bias_init: float = 0.0,
        *,
        num_classes: int = 10_000,
        sample_rate: float = 1.0,
    ) -> None:
        super().__init__()
        check_scale(scale)
        check_cos_margin("margin", margin)
        require(neg_weight > 0, "neg_weight", f"must be > 0, got {neg_weight}")
        self.scale, self.margin, self.neg_weight = scale, margin, neg_weight
        # C is known only when the data is opened: 0 stands for the official initial value
        bias_init = bias_init or uniface_default_bias(num_classes, sample_rate)
        self.bias = nn.Parameter(torch.tensor(float(bias_init)))

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Per-row loss sums ``[N]`` over this block's columns (positive where owned)."""
        b = self.bias.to(inp.z.dtype)
        zt = inp.target_z()
        neg = F.softplus(inp.z * self.scale - b)
        # the target column is not a negative: zero it before summing
        unchanged = F.softplus(zt * self.scale - b)
        neg = replace_targets(neg, inp, torch.zeros_like(zt), unchanged)
        per_row = self.neg_weight * neg.sum(dim=1)
        pos = F.softplus(-self.scale * (zt - self.margin) + b)
        return per_row + torch.where(inp.owned, pos, 0.0)
