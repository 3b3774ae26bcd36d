"""Cosine projection ``cos θ = x̂ ŵᵀ`` with a hand-written backward.

Autograd through ``x / ‖x‖`` and ``w / ‖w‖`` spends about ten elementwise passes over the
``[K, D]`` centers per step, as many as the GEMMs cost at small batches. The Jacobian of
``v ↦ v/‖v‖`` is ``(I − v̂v̂ᵀ)/‖v‖``, so from ``G = ∂L/∂cos``:

    ``∂L/∂w_j = (g_j − ŵ_j (ŵ_j · g_j)) / ‖w_j‖`` with ``g = Gᵀ x̂`` (and likewise for ``x``),

three passes over the centers and no ``[N, K]`` tensor saved. The result is clamped to
``[-1, 1]`` in place; values beyond it come only from rounding, so the clamp is treated as the
identity in backward.
"""

from __future__ import annotations

from typing import Any

import torch

_EPS = 1e-12  # as F.normalize


def _unit_rows(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / torch.linalg.vector_norm(v, dim=1).clamp_min(_EPS)
    return v * inv[:, None], inv


def _unproject(unit: torch.Tensor, inv: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. ``v`` from the gradient w.r.t. ``v̂`` (rows)."""
    dot = (unit * grad).sum(dim=1, keepdim=True)
    return grad.sub_(unit * dot).mul_(inv[:, None])


class _CosineProject(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        x_unit, x_inv = _unit_rows(x)
        w_unit, w_inv = _unit_rows(w)
        cos = torch.mm(x_unit, w_unit.T).to(x.dtype).clamp_(-1.0, 1.0)  # GEMM may autocast
        ctx.save_for_backward(x_unit, x_inv, w_unit, w_inv)
        return cos

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_unit, x_inv, w_unit, w_inv = ctx.saved_tensors
        grad = grad.to(x_unit.dtype)
        gx = _unproject(x_unit, x_inv, grad @ w_unit)
        gw = _unproject(w_unit, w_inv, grad.T @ x_unit)
        return gx, gw


def cosine_project(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``[N, D]``, ``[K, D]`` (same float dtype) → ``[N, K]`` cosines in ``[-1, 1]``."""
    return _CosineProject.apply(x, w)
