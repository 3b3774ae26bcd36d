"""MagFace (Meng et al., CVPR 2021): the feature magnitude learns the image quality.

With ``a = clip(‖x‖, l_a, u_a)``, the target logit is ArcFace's with a margin that grows with
the magnitude, ``m(a) = (u_m − l_m)/(u_a − l_a)·(a − l_a) + l_m``, and the loss gains the
regulariser ``λ_g·g(a)`` with ``g(a) = a/u_a² + 1/a`` (convex, minimum at ``u_a``), which
rewards large magnitudes; together they make ``a`` monotonic in how close the sample sits to
its class center. Unlike AdaFace the norm is not detached: the margin's and the regulariser's
gradients reach ``‖x‖``, which is the point of the method.

``cos(θ + m(a))`` takes ArcFace's analytic form with its ``th``/``mm`` fallback per row
(:func:`~dist_face.heads.margins.common.arcface_target` with a per-row margin), or ``easy_margin``
(the official ``run_dist.sh`` trains with it on). The regulariser is a per-row loss of the
head (``row_loss``): the sharded head adds its batch mean once, identically on every rank.
"""

from __future__ import annotations

import math

import torch

from dist_face.config.base import require
from dist_face.heads.margins.common import (
    MARGINS,
    Margin,
    MarginInput,
    check_scale,
    replace_targets,
    sin_from_cos,
)


@MARGINS.register("magface")
class MagFace(Margin):
    """MagFace; see the module docstring.

    Args:
        scale: s (64).
        l_a, u_a: magnitude range (10, 110).
        l_m, u_m: margin at ``l_a`` and ``u_a`` in radians (0.45, 0.8).
        lambda_g: weight of the regulariser (35).
        easy_margin: apply the margin only where ``cos θ_y > 0``.
    """

    needs_x_norm = True
    has_row_loss = True

    def __init__(
        self,
        scale: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = False,
    ) -> None:
        super().__init__()
        check_scale(scale)
        require(l_a > 0, "l_a", f"must be > 0, got {l_a}")
        require(u_a > l_a, "u_a", f"must be > l_a ({l_a}), got {u_a}")
        require(lambda_g >= 0, "lambda_g", f"must be >= 0, got {lambda_g}")
        self.scale, self.l_a, self.u_a, self.l_m, self.u_m = scale, l_a, u_a, l_m, u_m
        self.lambda_g, self.easy_margin = lambda_g, easy_margin

    def magnitude(self, x_norm: torch.Tensor) -> torch.Tensor:
        """``a = clip(‖x‖, l_a, u_a)`` ``[N]``."""
        return x_norm.clamp(self.l_a, self.u_a)

    def margin_of(self, a: torch.Tensor) -> torch.Tensor:
        """``m(a)`` ``[N]``, linear from ``l_m`` at ``l_a`` to ``u_m`` at ``u_a``."""
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Scaled cosines with the target replaced by ``cos(θ_y + m(a))``."""
        assert inp.x_norm is not None, "magface needs every row's feature norm"
        m = self.margin_of(self.magnitude(inp.x_norm)).to(inp.z.dtype)
        zt = inp.target_z()
        phi = zt * torch.cos(m) - sin_from_cos(zt) * torch.sin(m)
        if self.easy_margin:
            target = torch.where(zt > 0, phi, zt)
        else:  # past θ > π − m: cos θ − m·sin m, decreasing in θ (ArcFace's th/mm per row)
            target = torch.where(zt > torch.cos(math.pi - m), phi, zt - torch.sin(m) * m)
        return replace_targets(inp.z * self.scale, inp, target * self.scale, zt * self.scale)

    def row_loss(self, x_norm: torch.Tensor) -> torch.Tensor:
        """``λ_g·g(a) = λ_g (a/u_a² + 1/a)`` ``[N]``."""
        a = self.magnitude(x_norm)
        return self.lambda_g * (a / self.u_a**2 + 1.0 / a)
