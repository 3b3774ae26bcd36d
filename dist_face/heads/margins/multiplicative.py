"""Multiplicative angular margins with λ annealing: L-Softmax and A-Softmax (SphereFace).

Both replace the target's ``cos θ`` by ``ψ(θ) = (−1)^k cos(mθ) − 2k`` for
``θ ∈ [kπ/m, (k+1)π/m]``, a monotonically decreasing function below ``cos θ``. ``cos(mθ)`` is
the Chebyshev polynomial ``T_m(cos θ)``, so the gradient needs no ``acos``; only the branch
index ``k`` does, and it is piecewise constant. Training starts close to plain softmax by
blending ``f_y = (λ·cos-term + ψ-term) / (1 + λ)`` with a large λ annealed per step:

    ``λ = max(λ_min, base · (1 + γ · iteration)^(−power))``

(SphereFace's schedule, defaults base 1000, γ 0.12, power 1, λ_min 5). ``iteration`` is a
buffer incremented once per step in training mode (``begin_step``), before λ is computed, so
every rank holds the same value and a resumed run continues the schedule.
"""

from __future__ import annotations

import math

import torch

from dist_face.config.base import require
from dist_face.heads.margins.common import MARGINS, Margin, MarginInput, replace_targets, safe_acos


def chebyshev_cos(c: torch.Tensor, m: int) -> torch.Tensor:
    """``cos(m θ)`` from ``c = cos θ`` by the recurrence ``T_{n+1} = 2c T_n − T_{n−1}``."""
    prev, cur = torch.ones_like(c), c
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2 * c * cur - prev
    return cur


def psi(c: torch.Tensor, m: int) -> torch.Tensor:
    """``ψ(θ) = (−1)^k cos(mθ) − 2k`` with ``k = ⌊mθ/π⌋``, from ``c = cos θ`` (``[T]``)."""
    with torch.no_grad():
        k = torch.floor(m * safe_acos(c) / math.pi).clamp(0, max(m - 1, 0))
        sign = 1.0 - 2.0 * torch.remainder(k, 2)
    return sign * chebyshev_cos(c, m) - 2.0 * k


class _Annealed(Margin):
    """A margin whose blend weight λ decays with the step count kept in a buffer."""

    def __init__(
        self,
        m: int = 4,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__()
        require(int(m) == m and m >= 1, "m", f"must be an integer >= 1, got {m}")
        for name, value in (("lambda_base", lambda_base), ("lambda_gamma", lambda_gamma)):
            require(value >= 0, name, f"must be >= 0, got {value}")
        require(lambda_min >= 0, "lambda_min", f"must be >= 0, got {lambda_min}")
        self.m = int(m)
        self.lambda_base, self.lambda_gamma = lambda_base, lambda_gamma
        self.lambda_power, self.lambda_min = lambda_power, lambda_min
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> float:
        """λ for the current ``iteration``."""
        it = int(self.iteration)
        lam = self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power)
        return max(self.lambda_min, lam)

    def begin_step(
        self, target_cos: torch.Tensor | None, x_norm: torch.Tensor | None = None
    ) -> None:
        """Advance the schedule by one step in training mode."""
        if self.training:
            self.iteration += 1

    def _lambda(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(λ, 1 + λ)`` of the current step as float32 device tensors (no host read).

        Computed in float64 like :meth:`current_lambda`, then rounded once each.
        """
        it = self.iteration.to(torch.float64)
        lam = self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power)
        lam = lam.clamp_min(self.lambda_min)
        return lam.float(), (1.0 + lam).float()


@MARGINS.register("lsoftmax")
class LSoftmax(_Annealed):
    """L-Softmax (Liu et al. 2016): target ``‖w_y‖‖x‖ ψ(θ_y)``, others ``w_jᵀx``.

    No normalization, no bias, no scale. Annealed target:
    ``f_y = (λ w_yᵀx + ‖w_y‖‖x‖ ψ(θ_y)) / (1 + λ)``.

    Args:
        m: integer margin (paper 1–4; default 4).
        lambda_base, lambda_gamma, lambda_power, lambda_min: the λ schedule
            ``λ = max(lambda_min, base·(1 + gamma·step)^(−power))`` (released code: 1000,
            2.5e-5, 35, 0).
    """

    normalize_embedding = False
    normalize_weight = False

    def __init__(
        self,
        m: int = 4,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 2.5e-5,
        lambda_power: float = 35.0,
        lambda_min: float = 0.0,
    ) -> None:
        # the released CIFAR schedule of L-Softmax, not SphereFace's
        super().__init__(m, lambda_base, lambda_gamma, lambda_power, lambda_min)

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Raw inner products with the annealed ψ target."""
        lam, one_lam = self._lambda()
        zy = inp.target_z()
        norms = inp.x_norm * inp.w_norm[inp.target_index.squeeze(1)]
        c = (zy / norms.clamp_min(1e-12)).clamp(-1.0, 1.0)
        target = (lam * zy + norms * psi(c, self.m)) / one_lam
        return replace_targets(inp.z.clone(), inp, target, zy)


@MARGINS.register("sphereface")
class SphereFace(_Annealed):
    """A-Softmax / SphereFace (Liu et al. 2017): ``‖w‖ = 1``, no bias, ``‖x‖`` kept.

    Logits ``‖x‖ cos θ_j``; annealed target ``f_y = ‖x‖ (λ cos θ_y + ψ(θ_y)) / (1 + λ)``.

    Args:
        m: integer margin (paper 4).
        lambda_base, lambda_gamma, lambda_power, lambda_min: the λ schedule
            ``λ = max(lambda_min, base·(1 + gamma·step)^(−power))`` (released code: 1000,
            0.12, 1, 5).
    """

    normalize_embedding = False
    normalize_weight = True

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """``‖x‖ cos θ`` with the annealed ψ target."""
        lam, one_lam = self._lambda()
        zy = inp.target_z()
        xn = inp.x_norm
        c = (zy / xn.clamp_min(1e-12)).clamp(-1.0, 1.0)
        target = (lam * zy + xn * psi(c, self.m)) / one_lam
        return replace_targets(inp.z.clone(), inp, target, zy)
