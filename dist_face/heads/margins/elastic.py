"""ElasticFace (Boutros et al., CVPRW 2022): a margin drawn per sample, every step.

Each row of the global batch gets its own margin ``m_i ~ N(m, σ²)``, redrawn every step:

* ``elasticface_arc``: target ``s cos(θ_y + m_i)`` (m = 0.5, σ = 0.05);
* ``elasticface_cos``: target ``s (cos θ_y − m_i)`` (m = 0.35, σ = 0.05);
* the ``_plus`` variants sort the draws and hand the largest margins to the hardest rows
  (smallest target cosine), so the margin follows how far a sample sits from its center
  (σ = 0.0175 for arc+, 0.02 for cos+, from the official ``config.py``).

The draw is a pure function of ``(seed, step)`` (:func:`elastic_margins`): every rank draws
the same ``N`` values on its CPU without communicating, a resumed run draws what the
uninterrupted one would have, and nothing waits for the device (the step count is kept on the
host and mirrored in a buffer that travels in checkpoints). The step advances once per forward
in training mode. ``θ`` comes from ``acos`` of the clamped cosine, without ArcFace's fallback,
as in the official code.
"""

from __future__ import annotations

from typing import Any

import torch

from dist_face.config.base import require
from dist_face.heads.margins.common import (
    MARGINS,
    Margin,
    MarginInput,
    check_angle,
    check_cos_margin,
    check_scale,
    safe_acos,
    scaled_with_targets,
)
from dist_face.heads.sharded.staging import Staging


def elastic_seed(seed: int, step: int) -> int:
    """Seed of the margin draw of step ``step`` of a run seeded with ``seed``."""
    return (seed * 1_000_003 + 15_485_863 * (step + 1)) % (2**63)


def elastic_margins(seed: int, step: int, rows: int, mean: float, std: float) -> torch.Tensor:
    """The ``[rows]`` float32 margins ``N(mean, std²)`` of step ``step`` (CPU, unsorted)."""
    gen = torch.Generator().manual_seed(elastic_seed(seed, step))
    return torch.randn(rows, generator=gen) * std + mean


def assign_by_difficulty(draws: torch.Tensor, target_cos: torch.Tensor) -> torch.Tensor:
    """``[N]`` margins: the largest draw to the row with the smallest target cosine, etc."""
    order = torch.argsort(target_cos, stable=True)  # hardest row first
    ranked = torch.sort(draws, descending=True, stable=True).values
    return torch.empty_like(ranked).scatter_(0, order, ranked)


class ElasticFace(Margin):
    """Base of the four ElasticFace margins; see the module docstring.

    Args:
        scale: s (64).
        margin: mean m of the draw.
        std: σ of the draw.
        seed: the run's seed.
    """

    target_only = True
    plus = False
    angular = True

    def __init__(
        self, scale: float = 64.0, margin: float = 0.5, std: float = 0.05, *, seed: int = 0
    ) -> None:
        super().__init__()
        check_scale(scale)
        (check_angle if self.angular else check_cos_margin)("margin", margin)
        require(std >= 0, "std", f"must be >= 0, got {std}")
        self.scale, self.margin, self.std, self.seed = scale, margin, std, seed
        self.needs_target_cos = self.plus
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._step = 0  # host copy of `step`: the draw's seed, never read from the device
        self._m: torch.Tensor | None = None  # [N] margins of the current step
        self._staging = Staging()  # pinned buffers for the draw's copy to a GPU
        self.register_load_state_dict_post_hook(_sync_step)

    @torch.no_grad()
    def begin_step(
        self, target_cos: torch.Tensor | None, x_norm: torch.Tensor | None = None
    ) -> None:
        """Draw this step's margins ``[N]`` (assigned by difficulty for ``_plus``)."""
        ref = target_cos if target_cos is not None else x_norm
        assert ref is not None, "elasticface needs the rows of the batch"
        m = elastic_margins(self.seed, self._step, ref.shape[0], self.margin, self.std)
        m = self._staging.to_device(m, ref.device).to(ref.dtype)
        if self.plus:
            assert target_cos is not None, "elasticface+ needs every row's target cosine"
            m = assign_by_difficulty(m, target_cos)
        self._m = m
        if self.training:
            self._step += 1
            self.step.add_(1)

    def margins(self) -> torch.Tensor:
        """``[N]`` the margins of the current step (after :meth:`begin_step`)."""
        assert self._m is not None, "begin_step first"
        return self._m

    def target_logit(self, zt: torch.Tensor) -> torch.Tensor:
        """``s cos(θ_y + m_i)`` (arc) or ``s (cos θ_y − m_i)`` (cos), ``[N]``."""
        m = self.margins().to(zt.dtype)
        if self.angular:
            return torch.cos(safe_acos(zt) + m) * self.scale
        return (zt - m) * self.scale

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Scaled cosines with the target's margin drawn per row."""
        return scaled_with_targets(self, inp)


def _sync_step(module: ElasticFace, incompatible: Any) -> None:
    """After ``load_state_dict``: the host copy follows the loaded buffer (read once)."""
    module._step = int(module.step)


@MARGINS.register("elasticface_arc")
class ElasticArc(ElasticFace):
    """ElasticFace-Arc: ``s cos(θ_y + m_i)``, ``m_i ~ N(0.5, 0.05²)``."""


@MARGINS.register("elasticface_arc_plus")
class ElasticArcPlus(ElasticFace):
    """ElasticFace-Arc+: the draws assigned by difficulty (σ = 0.0175 by default)."""

    plus = True

    def __init__(
        self, scale: float = 64.0, margin: float = 0.5, std: float = 0.0175, *, seed: int = 0
    ) -> None:
        super().__init__(scale, margin, std, seed=seed)


@MARGINS.register("elasticface_cos")
class ElasticCos(ElasticFace):
    """ElasticFace-Cos: ``s (cos θ_y − m_i)``, ``m_i ~ N(0.35, 0.05²)``."""

    angular = False

    def __init__(
        self, scale: float = 64.0, margin: float = 0.35, std: float = 0.05, *, seed: int = 0
    ) -> None:
        super().__init__(scale, margin, std, seed=seed)


@MARGINS.register("elasticface_cos_plus")
class ElasticCosPlus(ElasticFace):
    """ElasticFace-Cos+: the draws assigned by difficulty (σ = 0.02 by default)."""

    angular = False
    plus = True

    def __init__(
        self, scale: float = 64.0, margin: float = 0.35, std: float = 0.02, *, seed: int = 0
    ) -> None:
        super().__init__(scale, margin, std, seed=seed)
