"""The fused loss's backward: through the margin and the projection, block by block."""

from __future__ import annotations

import torch
from torch.distributed import ReduceOp

from dist_face.dist import comm
from dist_face.heads.margins.common import MarginInput, scaled_with_targets
from dist_face.heads.sharded.fused_loss.features import NormGrad
from dist_face.heads.sharded.fused_loss.forward import ForwardResult
from dist_face.heads.sharded.fused_loss.plan import Block, Plan
from dist_face.heads.sharded.row_grads import RowIndex


def backward(
    c: Plan,
    res: ForwardResult,
    g: torch.Tensor,
    enabled: torch.Tensor,
    needs: tuple[bool, bool],
    params: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, list[torch.Tensor]]:
    """The gradients of the loss (the package doc's backward).

    Args:
        c: forward's block plan.
        res: forward's results.
        g: 0-dim upstream gradient over ``N``.
        enabled: 0-dim bool, the loss and its upstream gradient are finite.
        needs: the weight's and the bias's gradient is wanted (dense: no sink).
        params: the margin's parameters (replicated on every rank).

    Returns:
        ``∂L/∂x`` ``[N, D]`` (compute dtype); the dense ``∂L/∂weight`` and ``∂L/∂bias`` (None
        with a sink, which received the rows' instead); the trained parameters' gradients,
        summed over the ranks.
    """
    spec = c.spec
    dense = spec.sink is None
    gw = torch.zeros_like(c.weight) if dense and needs[0] else None
    gb = torch.zeros_like(c.bias) if c.bias is not None and dense and needs[1] else None
    trained = [p for p in params if p.requires_grad]
    g_params = [torch.zeros_like(p, dtype=c.dtype) for p in trained]
    gxin = None  # ∂L/∂xin [N, D], written by the first block (zeros if none)
    gxn = NormGrad()  # ∂L/∂‖x‖ [N], from the features that read it
    for lo in c.blocks():
        blk = c.block(lo)
        if c.target_only and not trained:
            gz, got = _target_only_grad(c, res, lo, blk, g), {}
        else:
            gz, got = _margin_grad(c, res, blk, g, trained, g_params)
        for feature in c.features:
            gz = feature.z_grad(c, blk, gz)
        gxin, grad_w = _project_backward(c, blk, gz, gxin, enabled)
        for feature in c.features:
            grad_w = feature.rows_grad(c, blk, got, grad_w, gxn)
        _deliver(c, blk, grad_w, got.get("bias"), gw, gb, enabled)
    for feature in c.features:
        feature.norm_grad(c, g, gxn)
    if g_params:  # replicated margin parameters: sum the ranks' partial gradients
        flat = torch.cat([p.reshape(-1) for p in g_params])
        comm.all_reduce(flat, ReduceOp.SUM, spec.group)
        g_params = list(torch.split(flat, [p.numel() for p in g_params]))
    if gxin is None:  # no block on this rank
        gxin = torch.zeros_like(c.xin)
    return _embedding_grad(c, gxin, gxn.value), gw, gb, g_params


def _margin_grad(
    c: Plan,
    res: ForwardResult,
    blk: Block,
    g: torch.Tensor,
    trained: list[torch.Tensor],
    g_params: list[torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """``∂L/∂z`` ``[N, Kc]`` of one block by autograd through the margin, any margin.

    Returns the gradient and those of the margin's other block inputs (``x_norm``, ``w_norm``,
    ``bias``: absent or None where unused); adds the trained margin parameters' into
    ``g_params``.
    """
    margin = c.spec.margin
    with torch.enable_grad():
        z = blk.z.requires_grad_(True)
        inp = c.margin_input(blk, z, res.target_cos, leaves=True)
        out = margin.logits(inp)
    if margin.objective == "softmax":
        grad_logits = c.kernels.exp_shifted(out.detach(), res.log_z).mul_(g)
        if grad_logits.shape[1] > 0:
            owned = (blk.labels >= 0).to(c.dtype)
            cols = blk.labels.clamp_min(0)[:, None]
            grad_logits.scatter_add_(1, cols, (-g * owned)[:, None])
    else:  # UCE: the loss is the sum of the per-row terms
        grad_logits = g.expand(c.xin.shape[0])
    named = {"z": z, "x_norm": inp.x_norm, "w_norm": inp.w_norm, "bias": inp.bias}
    leaves = {k: v for k, v in named.items() if v is not None}
    grads = torch.autograd.grad(out, [*leaves.values(), *trained], grad_logits, allow_unused=True)
    got = dict(zip(leaves, grads[: len(leaves)], strict=True))
    for acc, gp in zip(g_params, grads[len(leaves) :], strict=True):
        if gp is not None:
            acc += gp
    gz = got.pop("z")
    return (gz if gz is not None else torch.zeros_like(blk.z)), got


def _target_only_grad(
    c: Plan, res: ForwardResult, lo: int, blk: Block, g: torch.Tensor
) -> torch.Tensor:
    """``∂L/∂z`` ``[N, Kc]`` of one block for a ``target_only`` margin (softmax objective).

    Every non-target logit is ``s · z``, so its gradient is ``s · p · g``; only the ``N``
    target logits go through autograd, along the graph forward kept
    (``ForwardResult.targets``). The same values as differentiating the whole block.
    """
    margin = c.spec.margin
    inp = MarginInput(blk.z, blk.labels, None, None)
    owned, cols = inp.owned, inp.target_index
    zt_leaf, target = res.targets.pop(lo)
    out = scaled_with_targets(margin, inp, target.detach())
    grad = c.kernels.exp_shifted(out, res.log_z).mul_(g)  # p · g
    pt = grad.gather(1, cols).squeeze(1)
    # the target column: (p_t − 1) · g through the margin; rows owned elsewhere: plain s · p · g
    (dt,) = torch.autograd.grad(target, zt_leaf, torch.where(owned, pt - g, c.zero))
    gz = grad.mul_(margin.scale)
    return gz.scatter_(1, cols, torch.where(owned, dt, pt * margin.scale)[:, None])


def _project_backward(
    c: Plan,
    blk: Block,
    gz: torch.Tensor,
    gxin: torch.Tensor | None,
    enabled: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``∂L/∂xin`` ``[N, D]`` and the block's ``∂L/∂w`` ``[rows, D]`` from ``gz`` ``[N, rows]``.

    ``∂L/∂xin`` is added into ``gxin``, or made by the first block (``gxin`` None). Without a
    sink (the dense gradient) the rows' gradient is zeroed as a whole when not ``enabled``,
    last, so that a suppressed step leaves zeros, not NaN (masking the ``[rows, D]`` result,
    not the ``[N, rows]`` ``gz``: one pass over the block fewer, and both GEMMs share one
    low-precision copy of ``gz``, the rows' one reads forward's copy of ``xin``). With a sink
    the rows' gradient is a fresh tensor the sink keeps as it is: the sink notes ``enabled``
    and the update zeroes the gradient of a step it skips.
    """
    k = c.kernels
    out = None
    if c.spec.sink is None:
        out = c.spec.workspace.get("grad", tuple(blk.w.shape), blk.w.dtype, blk.w.device)
    if blk.inv is not None:  # z = xin · wᵀ / ‖w‖
        gz = gz * blk.inv
    gz_gemm = k.gemm_input(gz)
    if gxin is None:
        gxin = k.mm(gz_gemm, blk.w_gemm)
    else:
        k.add_mm_(gxin, gz_gemm, blk.w_gemm)
    grad = k.mm(gz_gemm.T, c.xin_gemm, out=out)
    if blk.inv is not None:  # − radial · w
        radial = blk.inv * (gz * blk.z_rows.detach()).sum(dim=0)
        grad.addcmul_(blk.w, radial[:, None], value=-1.0)
    if c.spec.sink is None:  # last: NaN anywhere above becomes 0
        grad.masked_fill_(~enabled, 0.0)
    return gxin, grad


def _deliver(
    c: Plan,
    blk: Block,
    grad_w: torch.Tensor,
    grad_b: torch.Tensor | None,
    gw: torch.Tensor | None,
    gb: torch.Tensor | None,
    enabled: torch.Tensor,
) -> None:
    """Hand one block's row gradients to the sink, or write them into the dense ``gw``/``gb``.

    ``enabled`` (0-dim bool) False: the loss or its incoming gradient was inf/NaN; the sink
    then makes the step skip.
    """
    spec = c.spec
    if spec.sink is None:
        _scatter(gw, blk.rows, grad_w)
        _scatter(gb, blk.rows, grad_b)
        return
    if grad_b is not None:
        grad_b = grad_b.float()
    spec.sink.put(blk.rows, [grad_w] if c.bias is None else [grad_w, grad_b], enabled)


def _embedding_grad(c: Plan, gxin: torch.Tensor, gxn: torch.Tensor | None) -> torch.Tensor:
    """``∂L/∂x`` ``[N, D]`` from the gradients w.r.t. the projected input and ``‖x‖`` ``[N]``."""
    if c.spec.margin.normalize_embedding:  # xin = x/‖x‖: (I − x̂x̂ᵀ)/‖x‖
        dot = (c.xin * gxin).sum(dim=1, keepdim=True)
        gx = gxin.sub_(c.xin * dot).mul_(c.x_inv[:, None])
        if gxn is None:
            return gx
        return gx.add_(c.xin * gxn[:, None])  # ∂‖x‖/∂x = x̂
    if gxn is None:  # no feature reads ‖x‖
        return gxin
    return gxin.add_(c.xin * (gxn * c.x_inv)[:, None])  # ∂‖x‖/∂x = x/‖x‖


def _scatter(dst: torch.Tensor | None, rows: RowIndex, src: torch.Tensor | None) -> None:
    if dst is None or src is None:
        return
    if isinstance(rows, slice):
        dst[rows] = src.to(dst.dtype)
    else:
        dst.index_copy_(0, rows, src.to(dst.dtype))
