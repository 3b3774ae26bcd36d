"""The fused loss as one autograd function: forward and backward without autocast."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from dist_face.heads.sharded.fused_loss.backward import backward
from dist_face.heads.sharded.fused_loss.forward import forward, isfinite
from dist_face.heads.sharded.fused_loss.plan import Plan
from dist_face.heads.sharded.fused_loss.spec import LossSpec


class _FusedMarginLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x, weight, bias, spec: LossSpec, *params) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            plan = Plan(x, weight, bias, spec)
            with plan.kernels.precision():  # TF32 for float32 GEMMs on CUDA
                res = forward(plan)
        # ``fused``: the plan, whose ``kept`` projections the tests count
        ctx.fused, ctx.res, ctx.params, ctx.x_dtype = plan, res, params, x.dtype
        return res.loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        plan: Plan = ctx.fused
        params = ctx.params
        autocast_off = torch.autocast(device_type=grad_out.device.type, enabled=False)
        with autocast_off, plan.kernels.precision():
            g = grad_out.to(plan.dtype) / plan.xin.shape[0]
            enabled = ctx.res.finite & isfinite(grad_out)
            needs = (ctx.needs_input_grad[1], ctx.needs_input_grad[2])
            gx, gw, gb, g_params = backward(plan, ctx.res, g, enabled, needs, params)
            gx = gx.to(ctx.x_dtype)
        out_params = []
        it = iter(g_params)
        for p in params:
            out_params.append(next(it).view_as(p).to(p.dtype) if p.requires_grad else None)
        return (gx, gw, gb, None, *out_params)


def fused_margin_loss(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    spec: LossSpec,
    params: list[torch.Tensor],
) -> torch.Tensor:
    """Mean margin loss of ``N`` gathered embeddings against this rank's kept centers.

    Args:
        x: ``[N, D]`` gathered embeddings (differentiable).
        weight: ``[C_local, D]`` this rank's centers (any float dtype); ``[C_local, K, D]``
            for a margin with ``K`` sub-centers per class.
        bias: ``[C_local]`` class bias (softmax margin) or None.
        spec: labels, sampled rows, group, block size, row-gradient sink, the margin's
            features (:class:`~.spec.LossSpec`).
        params: the margin's parameters (replicated on every rank).

    Returns:
        Scalar loss, float32 (float64 for float64 inputs), identical on every rank.
    """
    tracked = [t for t in (x, weight, bias, *params) if t is not None]
    if spec.keep_bytes and not (torch.is_grad_enabled() and any(t.requires_grad for t in tracked)):
        spec = replace(spec, keep_bytes=0)  # no backward will read them
    return _FusedMarginLoss.apply(x, weight, bias, spec, *params)
