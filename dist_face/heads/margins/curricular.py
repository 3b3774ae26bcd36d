"""CurricularFace (Huang et al. 2020): hard negatives re-weighted by a running curriculum ``t``.

Positive: ArcFace's target ``cos(θ_y + m)`` with the ``th``/``mm`` fallback. Negative ``j`` of
row ``i`` is *hard* when ``cos θ_j > cos(θ_y + m)`` (it beats the margin-penalized target); hard
negatives become ``cos θ_j (t + cos θ_j)``, the others stay ``cos θ_j``. ``t`` is an EMA of the
mean target cosine of the global batch, ``t ← α·mean(cos θ_y) + (1 − α)·t`` with α = 0.01,
updated in training mode before it is used (as in the official code), starting at 0.

Because negatives depend on the target, every rank needs every row's target cosine: the head
all-reduces it (``needs_target_cos``), so ``t`` is identical on all ranks.
"""

from __future__ import annotations

import math

import torch

from dist_face.config.base import require
from dist_face.heads.margins.common import (
    MARGINS,
    Margin,
    MarginInput,
    arcface_target,
    check_angle,
    check_scale,
    replace_targets,
    sin_from_cos,
)


@MARGINS.register("curricularface")
class CurricularFace(Margin):
    """CurricularFace; see the module docstring.

    Args:
        scale: s (64).
        margin: m, additive angular margin in radians (0.5).
        momentum: α of the ``t`` EMA (0.01).
    """

    needs_target_cos = True

    def __init__(self, scale: float = 64.0, margin: float = 0.5, momentum: float = 0.01) -> None:
        super().__init__()
        check_scale(scale)
        check_angle("margin", margin)
        require(0.0 < momentum <= 1.0, "momentum", f"must be in (0, 1], got {momentum}")
        self.scale, self.margin, self.momentum = scale, margin, momentum
        self.register_buffer("t", torch.zeros((), dtype=torch.float32))

    @torch.no_grad()
    def begin_step(
        self, target_cos: torch.Tensor | None, x_norm: torch.Tensor | None = None
    ) -> None:
        """``t ← α·mean(cos θ_y) + (1 − α)·t`` in training mode (before ``t`` is used)."""
        assert target_cos is not None, "curricularface needs every row's target cosine"
        if self.training:
            mean = target_cos.mean().to(self.t.dtype)
            self.t.mul_(1.0 - self.momentum).add_(self.momentum * mean)

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Scaled cosines: ArcFace target, curriculum-weighted hard negatives."""
        assert inp.target_cos is not None, "curricularface needs every row's target cosine"
        with torch.no_grad():
            ct = inp.target_cos
            # hard-negative boundary: cos(θ_y + m), without the fallback (official code)
            bound = ct * math.cos(self.margin) - sin_from_cos(ct) * math.sin(self.margin)
            hard = inp.z > bound[:, None]
        z = inp.z
        t = self.t.to(z.dtype)
        logits = torch.where(hard, z * (t + z), z) * self.scale
        zt = inp.target_z()
        target = arcface_target(zt, self.margin, easy_margin=False)
        # the negative formula at the target column, for rows whose target is elsewhere
        unchanged = torch.where(zt > bound, zt * (t + zt), zt) * self.scale
        return replace_targets(logits, inp, target * self.scale, unchanged)
