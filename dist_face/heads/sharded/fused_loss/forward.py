"""The fused loss's forward: projection, margin and online softmax, block by block."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.distributed import ReduceOp

from dist_face.dist import comm
from dist_face.heads.margins.common import MarginInput, scaled_with_targets
from dist_face.heads.sharded.fused_loss.plan import Plan
from dist_face.heads.sharded.kernels import Kernels


@dataclass
class ForwardResult:
    """What backward reads of forward's results (the plan holds what both compute from).

    Attributes:
        loss: scalar, identical on every rank.
        finite: 0-dim bool, the loss is finite.
        target_cos: ``[N]`` every row's target cosine (``needs_target_cos``), else None.
        log_z: ``[N]`` each row's log-denominator of the softmax (None for UCE objectives).
        targets: per block (first column): the ``target_only`` margin's ``[N]`` target
            leaf and logits, whose graph backward differentiates (popped there).
    """

    loss: torch.Tensor
    finite: torch.Tensor
    target_cos: torch.Tensor | None = None
    log_z: torch.Tensor | None = None
    targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


def isfinite(t: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite`` of a float tensor in two kernels instead of four (NaN < inf is False)."""
    return t.abs() < math.inf


def _exp_shifted(logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``exp(logits − shift[:, None])`` with the CPU's subnormal floor (:class:`Kernels`)."""
    return Kernels(torch.device("cpu"), None).exp_shifted(logits, shift)


def forward(c: Plan) -> ForwardResult:
    """The loss of the gathered batch, block by block (the package doc's forward).

    Args:
        c: the block plan of this forward.

    Returns:
        The scalar loss (float32, float64 for float64 inputs) and what backward reads.
    """
    spec = c.spec
    margin = spec.margin
    target_cos = c.gather_target_cos() if margin.needs_target_cos else None
    margin.begin_step(target_cos, c.x_norm)
    targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    n = c.xin.shape[0]
    device = c.xin.device
    softmax = margin.objective == "softmax"
    # running row max, denominator, target logit, whether the target is here; the first
    # block sets them (a rank with no block: the empty max and sum, no target)
    run_max = run_sum = target = holds = total = None
    for lo in c.blocks():
        blk = c.block(lo)
        inp = c.margin_input(blk, blk.z, target_cos)
        if c.target_only:
            out, picked = _target_logits(c, inp, targets, lo)
        else:
            out = margin.logits(inp)
            picked = None if not softmax else out.gather(1, inp.target_index).squeeze(1)
        if not softmax:
            total = out.sum() if total is None else total + out.sum()
            continue
        owned = inp.owned
        picked = torch.where(owned, picked, c.zero)
        if run_max is None:
            run_max = out.amax(dim=1)
            run_sum = c.kernels.exp_shifted(out, run_max).sum(dim=1)
            target, holds = picked, owned
            continue
        new_max = torch.maximum(run_max, out.amax(dim=1))
        run_sum.mul_(torch.exp(run_max - new_max))
        run_sum.add_(c.kernels.exp_shifted(out, new_max).sum(dim=1))
        run_max = new_max
        target = target + picked
        holds = holds | owned
    log_z = None
    if softmax:
        if run_max is None:
            run_max = torch.full((n,), float("-inf"), dtype=c.dtype, device=device)
            run_sum = torch.zeros(n, dtype=c.dtype, device=device)
            target = torch.zeros_like(run_sum)
            holds = torch.zeros(n, dtype=torch.bool, device=device)
        row_max = comm.all_reduce(run_max.clone(), ReduceOp.MAX, spec.group)
        # one all-reduce for the denominator and the (max-shifted) target logit
        stats = torch.empty((2, n), dtype=c.dtype, device=device)
        torch.sub(run_max, row_max, out=stats[0]).exp_().mul_(run_sum)
        torch.where(holds, target - row_max, c.zero, out=stats[1])
        comm.all_reduce(stats, ReduceOp.SUM, spec.group)
        log_denom = torch.log(stats[0])  # >= 0: the max term is exp(0)
        loss = (log_denom - stats[1]).sum() / n
        log_z = log_denom + row_max
    else:
        if total is None:  # no block on this rank
            total = torch.zeros((), dtype=c.dtype, device=device)
        loss = comm.all_reduce(total, ReduceOp.SUM, spec.group) / n
    for feature in c.features:
        term = feature.loss_term(c)
        if term is not None:
            loss = loss + term
    return ForwardResult(loss, isfinite(loss), target_cos, log_z, targets)


def _target_logits(
    c: Plan, inp: MarginInput, targets: dict[int, tuple[torch.Tensor, torch.Tensor]], lo: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``target_only`` margin's logits ``[N, Kc]`` of one block and the target column ``[N]``.

    The same values as ``margin.logits(inp)`` (the ``target_only`` contract). The ``[N]``
    target logits' graph is kept in ``targets[lo]``: backward differentiates it instead of
    evaluating the margin again.
    """
    margin = c.spec.margin
    with torch.enable_grad():
        zt = inp.target_z().detach().requires_grad_(True)
        target = margin.target_logit(zt)
    targets[lo] = (zt, target)
    out = scaled_with_targets(margin, inp, target.detach())
    return out, target.detach().to(out.dtype)  # what replace_targets wrote at owned rows
