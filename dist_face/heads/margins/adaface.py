"""AdaFace (Kim et al., CVPR 2022): a margin that adapts to the image quality via ‖x‖.

The feature norm is a proxy for image quality. With ``μ``, ``σ`` exponential moving averages
(momentum α = 0.01) of the mean and standard deviation of the global batch's norms,

    ẑ_i = clip((‖x_i‖ − μ) / (σ / h), −1, 1),    g_angle = −m·ẑ_i,    g_add = m + m·ẑ_i,

and the target logit is ``s (cos(clip(θ_y + g_angle, ε, π − ε)) − g_add)``; other logits
``s cos θ_j``. At ẑ = −1 (low quality) this is ArcFace with margin m, at ẑ = +1 (high
quality) CosFace with 2m and a negative angular margin: hard samples are emphasised only when
the image is good. The norm is detached (the margin never pushes the norm), as in the paper.

Details from the official code (``head.py``): the norm is clipped to [0.001, 100] before use,
``σ`` gets ``+ ε`` (ε = 1e-3) in the denominator, the cosine is clamped to ``±(1 − ε)``
before ``acos``, ``μ`` and ``σ`` start at 20 and 100, and the statistics are updated before
they are used. Here they are updated in training mode only (evaluation reads them), from the
norms of the gathered batch, so every rank holds the same values; they are buffers, so they
travel in checkpoints and survive a re-split.
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
    scaled_with_targets,
)

_EPS = 1e-3
_NORM_MIN, _NORM_MAX = 1e-3, 100.0


@MARGINS.register("adaface")
class AdaFace(Margin):
    """AdaFace; see the module docstring.

    Args:
        scale: s (64).
        margin: m (0.4).
        h: concentration of ẑ (0.333: about 68 % of the batch within ±h).
        momentum: α of the μ, σ moving averages (0.01).
    """

    target_only = True

    def __init__(
        self, scale: float = 64.0, margin: float = 0.4, h: float = 0.333, momentum: float = 0.01
    ) -> None:
        super().__init__()
        check_scale(scale)
        require(0.0 <= margin < 1.0, "margin", f"must be in [0, 1), got {margin}")
        require(h > 0, "h", f"must be > 0, got {h}")
        require(0.0 < momentum <= 1.0, "momentum", f"must be in (0, 1], got {momentum}")
        self.scale, self.margin, self.h, self.momentum = scale, margin, h, momentum
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))
        self._g_angle: torch.Tensor | None = None  # [N] of the current step
        self._g_add: torch.Tensor | None = None

    @torch.no_grad()
    def begin_step(
        self, target_cos: torch.Tensor | None, x_norm: torch.Tensor | None = None
    ) -> None:
        """Update ``μ``, ``σ`` (training mode), then every row's ``g_angle``, ``g_add`` ``[N]``."""
        assert x_norm is not None, "adaface needs every row's feature norm"
        norms = x_norm.detach().clamp(_NORM_MIN, _NORM_MAX)
        if self.training:
            mean = norms.mean()
            # one row has no spread (torch's unbiased std would be NaN and stick in the EMA)
            std = norms.std() if norms.shape[0] > 1 else torch.zeros_like(mean)
            a = self.momentum
            self.batch_mean.mul_(1.0 - a).add_(a * mean.to(self.batch_mean.dtype))
            self.batch_std.mul_(1.0 - a).add_(a * std.to(self.batch_std.dtype))
        mu, sigma = self.batch_mean.to(norms.dtype), self.batch_std.to(norms.dtype)
        z_hat = ((norms - mu) / (sigma + _EPS) * self.h).clamp(-1.0, 1.0)
        self._g_angle = -self.margin * z_hat
        self._g_add = self.margin + self.margin * z_hat

    def target_logit(self, zt: torch.Tensor) -> torch.Tensor:
        """``s (cos(clip(θ_y + g_angle, ε, π − ε)) − g_add)`` ``[N]``."""
        assert self._g_angle is not None and self._g_add is not None, "begin_step first"
        theta = torch.acos(zt.clamp(-1.0 + _EPS, 1.0 - _EPS))
        theta_m = (theta + self._g_angle.to(zt.dtype)).clamp(_EPS, math.pi - _EPS)
        return (torch.cos(theta_m) - self._g_add.to(zt.dtype)) * self.scale

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Scaled cosines with the target replaced by the quality-adaptive one."""
        return scaled_with_targets(self, inp)
