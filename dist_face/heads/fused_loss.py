"""Projection, margin and loss of the sharded head, fused and evaluated block by block.

A rank holds ``K`` kept class centers (all ``C_local``, or the Partial FC sample). The loss of
the ``N`` gathered embeddings against them is computed over blocks of ``chunk`` columns, so no
``[N, K]`` tensor and no normalised copy of the centers is ever alive, only ``[N, chunk]``
pieces and the ``[chunk, D]`` rows in use (and, within a byte budget, the blocks' projections
kept from forward to backward):

* **forward** — per block: ``z = x̂ · w_cᵀ / ‖w_c‖`` (cosine margins; the other projections
  of :mod:`~dist_face.heads.margins` likewise), the margin's logits, and an online softmax:
  running row max and rescaled denominator, and the target logit where the block holds it.
  Then the row max is all-reduced (MAX) and the denominator and target (SUM, one ``[2, N]``
  tensor), as in Partial FC. UCE objectives (UniFace) just sum the per-row terms.
* **backward** — per block, the projections are taken from forward while all of them fit in
  ``LossSpec.keep_bytes`` (``N·K`` floats), else recomputed (one more GEMM: the price of
  holding nothing ``[N, K]``-sized); the logits' gradient ``(p − 1[target]) · g/N`` is
  pushed through the margin with autograd on that block only (for ``target_only`` margins,
  whose non-target logits are ``s · z``, on the ``N`` target logits only), and through the
  projection by hand:
  ``∂L/∂w_j = ‖w_j‖⁻¹ (Gᵀx̂)_j − w_j ‖w_j‖⁻² Σ_i G_ij z_ij``. The block's center gradient
  goes straight to a :class:`~dist_face.heads.row_optim.RowSparseOptimizer` (rows updated
  while in cache, no ``[C_local, D]`` gradient), or, with no optimizer attached, into a dense
  ``weight.grad`` (the classic semantics).

Margins see exactly what they saw unfused (:class:`~dist_face.heads.margins.MarginInput` of
one block) and advance their per-step state once (``begin_step``). Margin parameters
replicated on every rank (UniFace's ``b̃``) get their gradient summed over blocks, then over
ranks in one all-reduce: every rank runs the same collectives whatever its block count.

Margins that adapt to the sample hook in narrowly: ``needs_x_norm`` margins get every row's
``‖x‖`` (differentiable), ``has_row_loss`` margins add a per-row term of it to the loss, and a
margin with ``sub_centers = K > 1`` sees, per class, the max of the projections on its ``K``
rows (``weight`` ``[C_local, K, D]``; the gradient reaches the arg-max row only).

Everything but the GEMMs runs in float32 (float64 if the inputs are), whatever the storage
dtype of the centers (bf16 rows are upcast a block at a time) and whatever autocast is active.
The three GEMMs per block take their inputs in ``LossSpec.gemm_dtype`` (the run's bf16/fp16)
and accumulate in float32; device-specific choices live in :mod:`~dist_face.heads.kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch.distributed import ProcessGroup, ReduceOp

from dist_face.dist import comm
from dist_face.heads.kernels import Kernels
from dist_face.heads.margins import (
    Margin,
    MarginInput,
    filter_interclass,
    scaled_with_targets,
)
from dist_face.heads.row_optim import RowIndex, RowSparseOptimizer
from dist_face.heads.workspace import Workspace

_EPS = 1e-12  # as F.normalize
BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}
"""Default size of one ``[N, chunk]`` block (elements) per device type (:func:`default_chunk`)."""
KEEP_PROJECTIONS_MB = 512
"""Default budget for the projections forward keeps for backward (``LossSpec.keep_bytes``)."""


def default_chunk(rows: int, device: torch.device) -> int:
    """Columns per block for ``rows`` gathered embeddings: ``BLOCK_ELEMENTS / N``, ≥ 256.

    CPU: measured with ``tools/bench_head.py --chunks`` (C = 200k and 1M, r = 1 and 0.1,
    N = 64, D = 512, the README's table): blocks of 256k elements are within 5 % of 1M- and
    2M-element ones, and keep a step's transient memory to a quarter or less. CUDA (and the
    meta device the step audit uses): 16M elements (64 MiB per ``[N, chunk]`` float32
    tensor), chosen with ``tools/audit_step.py --head.chunk_size=``: each block costs about
    110-135 kernel launches, and at ``ms1mv3_r50``, W = 8, B = 128 (N = 1024, 11.7k classes
    per rank) one block instead of two takes the head's projected H100 time from 1.92 to
    1.54 ms (the calibrated projection of 2026-12-07, ±50 %); not measured on a GPU yet.
    """
    budget = BLOCK_ELEMENTS["cpu" if device.type == "cpu" else "cuda"]
    return max(256, budget // max(rows, 1))


@dataclass
class LossSpec:
    """What the fused loss needs besides the tensors autograd tracks.

    Attributes:
        margin: turns one block's projections into logits.
        labels: ``[N]`` int64 target column among the ``K`` kept ones, or ``-1`` (elsewhere).
        index: ``[K]`` sorted local rows kept (Partial FC), or None: all rows, ``K = C_local``.
        group: process group the classes are split over (None: one device).
        chunk: columns per block.
        filter_threshold: inter-class filtering threshold (cosine margins; 0 = off).
        optimizer: receives each block's row gradients in backward (None: dense gradient).
        workspace: scratch buffers for one block's rows and gradient.
        keep_bytes: forward keeps every block's ``[N, chunk]`` projections for backward
            when all of them (``N·K`` floats) take at most this many bytes; else backward
            recomputes them. Either way the result is bitwise the same.
        gemm_dtype: input dtype of the three GEMMs per block (bf16/fp16 under a bf16/fp16
            run; float32 accumulation); None: the compute dtype (:mod:`.kernels`).
        tf32: float32 GEMMs on CUDA may use TF32.
    """

    margin: Margin
    labels: torch.Tensor
    index: torch.Tensor | None
    group: ProcessGroup | None
    chunk: int
    filter_threshold: float = 0.0
    optimizer: RowSparseOptimizer | None = None
    workspace: Workspace = field(default_factory=Workspace)
    keep_bytes: int = 0
    gemm_dtype: torch.dtype | None = None
    tf32: bool = True


@dataclass
class _Block:
    rows: RowIndex
    w: torch.Tensor  # [Kc, D] rows in compute dtype
    w_gemm: torch.Tensor  # [Kc, D] rows as GEMM input (w itself in full precision)
    inv: torch.Tensor | None  # [Kc] 1/‖w‖ when the weight is normalised
    w_norm: torch.Tensor | None  # [Kc] ‖w‖ for margins that read norms
    z: torch.Tensor  # [N, Kc] projection (see the margins' table)
    bias: torch.Tensor | None  # [Kc]
    labels: torch.Tensor  # [N] column in this block or -1
    z_rows: torch.Tensor | None = None  # [N, Kc·K] per sub-center (sub-center margins)
    pick: torch.Tensor | None = None  # [N, Kc] arg-max sub-center of each class


class _Ctx:
    """The per-forward values the blocks are computed from (forward and backward alike)."""

    def __init__(self, x: torch.Tensor, weight: torch.Tensor, bias, spec: LossSpec) -> None:
        margin = spec.margin
        self.spec, self.weight, self.bias = spec, weight, bias
        self.dtype = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)
        low = spec.gemm_dtype if self.dtype == torch.float32 else None  # float64 stays exact
        self.kernels = Kernels(x.device, low, spec.tf32)
        self.cosine = margin.normalize_embedding and margin.normalize_weight
        xf = x.detach().to(self.dtype)
        self.x_norm = torch.linalg.vector_norm(xf, dim=1)
        # margins that read ‖x‖ get it even when they project unit vectors (AdaFace, MagFace)
        self.reads_norm = not self.cosine or margin.needs_x_norm
        # margins that only change the target logit: differentiate [N] targets, not blocks
        self.target_only = (
            margin.objective == "softmax"
            and margin.target_only
            and self.cosine
            and spec.filter_threshold <= 0
            and not self.reads_norm
        )
        self.sub = margin.sub_centers
        if self.sub > 1 and (margin.needs_target_cos or not self.cosine):
            raise ValueError("sub-center margins must be cosine margins without target_cos")
        self.x_inv = self.x_norm.clamp_min(_EPS).reciprocal()
        self.xin = xf * self.x_inv[:, None] if margin.normalize_embedding else xf
        self.xin_gemm = self.kernels.gemm_input(self.xin)
        self.num_cols = weight.shape[0] if spec.index is None else spec.index.shape[0]
        self._norms: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # ‖w‖, 1/‖w‖
        self._labels: dict[int, torch.Tensor] = {}  # each block's target column: N ints
        # a device zero for torch.where: a Python 0.0 there is one more (fill) kernel per call
        self.zero = torch.zeros((), dtype=self.dtype, device=x.device)
        self.targets: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # see _target_logits
        kept_bytes = xf.shape[0] * self.num_cols * xf.element_size()
        self.keep = 0 < kept_bytes <= spec.keep_bytes
        self.kept: dict[int, torch.Tensor] = {}  # z per block, forward → backward (popped)

    def blocks(self) -> range:
        return range(0, self.num_cols, self.spec.chunk)

    def rows(self, lo: int, hi: int) -> RowIndex:
        index = self.spec.index
        return slice(lo, hi) if index is None else index[lo:hi]

    def block(self, lo: int) -> _Block:
        hi = min(lo + self.spec.chunk, self.num_cols)
        rows = self.rows(lo, hi)
        w = self.spec.workspace.gather("rows", self.weight, rows, self.dtype)
        w = w.reshape(-1, w.shape[-1])  # [Kc·K, D]: a class's K sub-centers are adjacent rows
        w_gemm = self.kernels.gemm_input(w)
        margin = self.spec.margin
        norm = inv = None
        if margin.normalize_weight or not self.cosine:
            # the rows do not change between forward and backward (a block is updated only in
            # its own backward step): one pass over them saved
            if lo not in self._norms:
                norm = torch.linalg.vector_norm(w, dim=1)
                inv = norm.clamp_min(_EPS).reciprocal() if margin.normalize_weight else None
                self._norms[lo] = (norm, inv)
            norm, inv = self._norms[lo]
        z = self.kept.pop(lo, None)
        if z is None:
            # row-major z keeps the dense gradient's GEMM the same on either backward path
            # (the target-only one is bitwise the generic one); the layout per device: kernels
            z = self.kernels.project(w_gemm, self.xin_gemm)
            if inv is not None:
                z.mul_(inv)
            if self.cosine:
                z.clamp_(-1.0, 1.0)  # beyond it only by rounding: identity in backward
            if self.keep:  # margins never write into z: it is still this value in backward
                self.kept[lo] = z
        bias = None
        if self.bias is not None:
            bias = self.spec.workspace.gather("bias", self.bias, rows, self.dtype)
        labels = self.labels(lo)
        blk = _Block(rows, w, w_gemm, inv, None if self.cosine else norm, z, bias, labels)
        if self.sub > 1:  # the class's cosine: the max over its sub-centers
            blk.z_rows = z
            blk.z, blk.pick = z.view(z.shape[0], -1, self.sub).max(dim=2)
        return blk

    def labels(self, lo: int) -> torch.Tensor:
        """``[N]`` each row's target column in the block starting at ``lo``, or -1."""
        labels = self.spec.labels
        if lo == 0 and self.spec.chunk >= self.num_cols:  # one block: the columns as they are
            return labels
        if lo not in self._labels:  # computed in forward, read again in backward
            hi = min(lo + self.spec.chunk, self.num_cols)
            inside = (labels >= lo) & (labels < hi)
            self._labels[lo] = torch.where(inside, labels - lo, -1)
        return self._labels[lo]

    def margin_input(self, blk: _Block, z, x_norm, w_norm, bias, target_cos) -> MarginInput:
        if self.cosine and self.spec.filter_threshold > 0:
            z = filter_interclass(z, blk.labels, self.spec.filter_threshold)
        return MarginInput(z, blk.labels, x_norm, w_norm, bias, target_cos)

    def target_cos(self) -> torch.Tensor:
        """``[N]`` every row's target cosine, detached, identical on all ranks."""
        labels = self.spec.labels
        n = labels.shape[0]
        if self.num_cols == 0:  # no class kept on this rank: it owns no target
            mine = self.xin.new_zeros(n)
        else:
            cols = labels.clamp_min(0)
            rows = cols if self.spec.index is None else self.spec.index[cols]
            w = self.weight.detach().index_select(0, rows).to(self.dtype)
            w_unit = w / torch.linalg.vector_norm(w, dim=1).clamp_min(_EPS)[:, None]
            x_unit = self.xin
            if not self.spec.margin.normalize_embedding:
                x_unit = x_unit * self.x_inv[:, None]
            cos = (x_unit * w_unit).sum(dim=1).clamp(-1.0, 1.0)
            mine = torch.where(labels >= 0, cos, 0.0)
        return comm.all_reduce(mine, ReduceOp.SUM, self.spec.group)


def _forward(c: _Ctx) -> torch.Tensor:
    """The loss of the gathered batch, block by block (the module doc's forward)."""
    spec = c.spec
    margin = spec.margin
    target_cos = c.target_cos() if margin.needs_target_cos else None
    margin.begin_step(target_cos, c.x_norm)
    n = c.xin.shape[0]
    device = c.xin.device
    softmax = margin.objective == "softmax"
    # running row max, denominator, target logit, whether the target is here; the first
    # block sets them (a rank with no block: the empty max and sum, no target)
    run_max = run_sum = target = holds = total = None
    norms = (c.x_norm if c.reads_norm else None, None)
    for lo in c.blocks():
        blk = c.block(lo)
        inp = c.margin_input(blk, blk.z, norms[0], blk.w_norm, blk.bias, target_cos)
        if c.target_only:
            out, picked = _target_logits(c, lo, inp)
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
    if softmax and run_max is None:
        run_max = torch.full((n,), float("-inf"), dtype=c.dtype, device=device)
        run_sum = torch.zeros(n, dtype=c.dtype, device=device)
        target, holds = torch.zeros_like(run_sum), torch.zeros(n, dtype=torch.bool, device=device)
    if softmax:
        row_max = comm.all_reduce(run_max.clone(), ReduceOp.MAX, spec.group)
        # one all-reduce for the denominator and the (max-shifted) target logit
        stats = torch.empty((2, n), dtype=c.dtype, device=device)
        torch.sub(run_max, row_max, out=stats[0]).exp_().mul_(run_sum)
        torch.where(holds, target - row_max, c.zero, out=stats[1])
        comm.all_reduce(stats, ReduceOp.SUM, spec.group)
        log_denom = torch.log(stats[0])  # >= 0: the max term is exp(0)
        loss = (log_denom - stats[1]).sum() / n
        c.log_z = log_denom + row_max
    else:
        if total is None:  # no block on this rank
            total = torch.zeros((), dtype=c.dtype, device=device)
        loss = comm.all_reduce(total, ReduceOp.SUM, spec.group) / n
    if margin.has_row_loss:  # identical on every rank: no communication
        loss = loss + margin.row_loss(c.x_norm).sum() / n
    c.target_cos = target_cos
    c.finite = _isfinite(loss)
    return loss


def _isfinite(t: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite`` of a float tensor in two kernels instead of four (NaN < inf is False)."""
    return t.abs() < math.inf


def _target_logits(c: _Ctx, lo: int, inp: MarginInput) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``target_only`` margin's logits ``[N, Kc]`` of one block and the target column ``[N]``.

    The same values as ``margin.logits(inp)`` (the ``target_only`` contract). The ``[N]``
    target logits' graph is kept: backward differentiates it instead of evaluating the margin
    again.
    """
    margin = c.spec.margin
    with torch.enable_grad():
        zt = inp.target_z().detach().requires_grad_(True)
        target = margin.target_logit(zt)
    c.targets[lo] = (zt, target)
    out = scaled_with_targets(margin, inp, target.detach())
    return out, target.detach().to(out.dtype)  # what replace_targets wrote at owned rows


class _FusedMarginLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x, weight, bias, spec: LossSpec, *params) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            c = _Ctx(x, weight, bias, spec)
            with c.kernels.precision():  # TF32 for float32 GEMMs on CUDA
                loss = _forward(c)
        ctx.fused = c
        ctx.params = params
        ctx.x_dtype = x.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        c: _Ctx = ctx.fused
        spec, params = c.spec, ctx.params
        autocast_off = torch.autocast(device_type=grad_out.device.type, enabled=False)
        with autocast_off, c.kernels.precision():
            n = c.xin.shape[0]
            g = grad_out.to(c.dtype) / n
            enabled = c.finite & _isfinite(grad_out)
            dense = spec.optimizer is None
            gw = torch.zeros_like(c.weight) if dense and ctx.needs_input_grad[1] else None
            gb = None
            if c.bias is not None and dense and ctx.needs_input_grad[2]:
                gb = torch.zeros_like(c.bias)
            trained = [p for p in params if p.requires_grad]
            g_params = [torch.zeros_like(p, dtype=c.dtype) for p in trained]
            gxin = None  # ∂L/∂xin [N, D], written by the first block (zeros if none)
            # SGD's L2 term joins the gradient in the pass that already reads the rows
            decay = None if dense else spec.optimizer.fold_decay(enabled)
            gxn = None  # ∂L/∂‖x‖ [N], for margins that read it
            for lo in c.blocks():
                blk = c.block(lo)
                if c.target_only and not trained:
                    gz, got = _target_only_grad(c, lo, blk, g), {}
                else:
                    gz, got = _margin_grad(c, blk, g, trained, g_params)
                gxin, grad_w = _project_backward(c, blk, gz, gxin, enabled, decay)
                if got.get("w_norm") is not None:  # ∂‖w‖/∂w = w/‖w‖
                    grad_w += (got["w_norm"] / blk.w_norm.clamp_min(_EPS))[:, None] * blk.w
                if got.get("x_norm") is not None:
                    gxn = got["x_norm"] if gxn is None else gxn + got["x_norm"]
                _deliver(c, blk, grad_w, got.get("bias"), gw, gb, enabled, decay is not None)
            if spec.margin.has_row_loss:
                row = _row_loss_grad(c, g)
                gxn = row if gxn is None else gxn + row
            if g_params:  # replicated margin parameters: sum the ranks' partial gradients
                flat = torch.cat([p.reshape(-1) for p in g_params])
                comm.all_reduce(flat, ReduceOp.SUM, spec.group)
                g_params = list(torch.split(flat, [p.numel() for p in g_params]))
            if gxin is None:  # no block on this rank
                gxin = torch.zeros_like(c.xin)
            gx = _embedding_grad(c, gxin, gxn).to(ctx.x_dtype)
        out_params = []
        it = iter(g_params)
        for p in params:
            out_params.append(next(it).view_as(p).to(p.dtype) if p.requires_grad else None)
        return (gx, gw, gb, None, *out_params)


class _Leaves:
    """Detached copies of one block's margin inputs that autograd differentiates."""

    def __init__(self, blk: _Block, x_norm: torch.Tensor | None) -> None:
        self.z = blk.z.requires_grad_(True)
        self.x_norm = None if x_norm is None else x_norm.detach().clone().requires_grad_(True)
        self.w_norm = None if blk.w_norm is None else blk.w_norm.detach().requires_grad_(True)
        self.bias = None if blk.bias is None else blk.bias.requires_grad_(True)

    def names(self) -> list[str]:
        return [k for k in ("z", "x_norm", "w_norm", "bias") if getattr(self, k) is not None]

    def inputs(self) -> list[torch.Tensor]:
        return [getattr(self, k) for k in self.names()]


def _margin_grad(
    c: _Ctx,
    blk: _Block,
    g: torch.Tensor,
    trained: list[torch.Tensor],
    g_params: list[torch.Tensor],
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
    """``∂L/∂z`` ``[N, Kc]`` of one block by autograd through the margin, any margin.

    Returns the gradient and those of the margin's other block inputs (``x_norm``, ``w_norm``,
    ``bias``: None where unused); adds the trained margin parameters' into ``g_params``.
    """
    margin = c.spec.margin
    with torch.enable_grad():
        leaves = _Leaves(blk, c.x_norm if c.reads_norm else None)
        inp = c.margin_input(blk, leaves.z, leaves.x_norm, leaves.w_norm, leaves.bias, c.target_cos)
        out = margin.logits(inp)
    if margin.objective == "softmax":
        grad_logits = c.kernels.exp_shifted(out.detach(), c.log_z).mul_(g)
        if grad_logits.shape[1] > 0:
            owned = (blk.labels >= 0).to(c.dtype)
            cols = blk.labels.clamp_min(0)[:, None]
            grad_logits.scatter_add_(1, cols, (-g * owned)[:, None])
    else:  # UCE: the loss is the sum of the per-row terms
        grad_logits = g.expand(c.xin.shape[0])
    inputs = leaves.inputs() + trained
    grads = torch.autograd.grad(out, inputs, grad_logits, allow_unused=True)
    got = dict(zip(leaves.names(), grads[: len(leaves.inputs())], strict=True))
    for acc, gp in zip(g_params, grads[len(leaves.inputs()) :], strict=True):
        if gp is not None:
            acc += gp
    gz = got.pop("z")
    return (gz if gz is not None else torch.zeros_like(blk.z)), got


def _target_only_grad(c: _Ctx, lo: int, blk: _Block, g: torch.Tensor) -> torch.Tensor:
    """``∂L/∂z`` ``[N, Kc]`` of one block for a ``target_only`` margin (softmax objective).

    Every non-target logit is ``s · z``, so its gradient is ``s · p · g``; only the ``N``
    target logits go through autograd, along the graph forward kept (:func:`_target_logits`).
    The same values as differentiating the whole block.
    """
    margin = c.spec.margin
    inp = MarginInput(blk.z, blk.labels, None, None)
    owned, cols = inp.owned, inp.target_index
    zt_leaf, target = c.targets.pop(lo)
    out = scaled_with_targets(margin, inp, target.detach())
    grad = c.kernels.exp_shifted(out, c.log_z).mul_(g)  # p · g
    pt = grad.gather(1, cols).squeeze(1)
    # the target column: (p_t − 1) · g through the margin; rows owned elsewhere: plain s · p · g
    (dt,) = torch.autograd.grad(target, zt_leaf, torch.where(owned, pt - g, c.zero))
    gz = grad.mul_(margin.scale)
    return gz.scatter_(1, cols, torch.where(owned, dt, pt * margin.scale)[:, None])


def _deliver(
    c: _Ctx,
    blk: _Block,
    grad_w: torch.Tensor,
    grad_b: torch.Tensor | None,
    gw: torch.Tensor | None,
    gb: torch.Tensor | None,
    enabled: torch.Tensor,
    decay_folded: bool,
) -> None:
    """Hand one block's row gradients to the optimizer, or into the dense ``gw``/``gb``.

    ``decay_folded``: ``grad_w`` includes SGD's L2 term (``RowSparseOptimizer.fold_decay``).
    """
    spec = c.spec
    if c.sub > 1:  # back to the weight's [Kc, K, D] rows
        grad_w = grad_w.view(-1, *c.weight.shape[1:])
        w = blk.w.view_as(grad_w)
    else:
        w = blk.w
    if spec.optimizer is None:
        _scatter(gw, blk.rows, grad_w)
        _scatter(gb, blk.rows, grad_b)
        return
    grads_rows = [grad_w] if c.bias is None else [grad_w, grad_b]
    current = [w] if c.bias is None else [w, blk.bias]
    spec.optimizer.update_rows(blk.rows, grads_rows, enabled, current, decay_folded)


def _project_backward(
    c: _Ctx,
    blk: _Block,
    gz: torch.Tensor,
    gxin: torch.Tensor | None,
    enabled: torch.Tensor,
    decay: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``∂L/∂xin`` ``[N, D]`` and the block's ``∂L/∂w`` ``[Kc, D]``.

    ``∂L/∂xin`` is added into ``gxin``, or made by the first block (``gxin`` None). The
    rows' gradient is zeroed as a whole when not ``enabled``, last, so that a suppressed step
    hands the optimizer zeros, not NaN (masking the ``[Kc, D]`` result, not the ``[N, Kc]``
    ``gz``: one pass over the block fewer, and both GEMMs share one low-precision copy of
    ``gz``, the rows' one reads forward's copy of ``xin``). ``decay`` (0-dim) adds
    ``decay · w`` (SGD's L2 term) in the same pass.
    """
    k = c.kernels
    out = c.spec.workspace.get("grad", tuple(blk.w.shape), blk.w.dtype, blk.w.device)
    z = blk.z
    if blk.pick is not None:  # a class's gradient goes to its arg-max sub-center
        z = blk.z_rows
        rows = torch.zeros(z.shape[0], blk.pick.shape[1], c.sub, dtype=gz.dtype, device=gz.device)
        gz = rows.scatter_(2, blk.pick[..., None], gz[..., None]).view_as(z)
    if blk.inv is not None:  # z = xin · wᵀ / ‖w‖
        gz = gz * blk.inv
    gz_gemm = k.gemm_input(gz)
    if gxin is None:
        gxin = k.mm(gz_gemm, blk.w_gemm)
    else:
        k.add_mm_(gxin, gz_gemm, blk.w_gemm)
    grad = k.mm(gz_gemm.T, c.xin_gemm, out=out)
    if blk.inv is None:  # z = xin · wᵀ
        if decay is not None:
            grad.addcmul_(blk.w, decay)
    else:  # − radial · w (+ decay · w)
        radial = blk.inv * (gz * z.detach()).sum(dim=0)
        if decay is None:
            grad.addcmul_(blk.w, radial[:, None], value=-1.0)
        else:
            grad.addcmul_(blk.w, (decay - radial)[:, None])
    return gxin, grad.masked_fill_(~enabled, 0.0)  # last: NaN anywhere above becomes 0


def _exp_shifted(logits: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``exp(logits − shift[:, None])`` with the CPU's subnormal floor (:class:`Kernels`)."""
    return Kernels(torch.device("cpu"), None).exp_shifted(logits, shift)


def _embedding_grad(c: _Ctx, gxin: torch.Tensor, gxn: torch.Tensor | None) -> torch.Tensor:
    """``∂L/∂x`` ``[N, D]`` from the gradients w.r.t. the projected input and ``‖x‖``."""
    if c.spec.margin.normalize_embedding:  # xin = x/‖x‖: (I − x̂x̂ᵀ)/‖x‖
        dot = (c.xin * gxin).sum(dim=1, keepdim=True)
        gx = gxin.sub_(c.xin * dot).mul_(c.x_inv[:, None])
        if gxn is None or not c.reads_norm:
            return gx
        return gx.add_(c.xin * gxn[:, None])  # ∂‖x‖/∂x = x̂
    if gxn is None:  # the margin does not read ‖x‖
        return gxin
    return gxin.add_(c.xin * (gxn * c.x_inv)[:, None])  # ∂‖x‖/∂x = x/‖x‖


def _row_loss_grad(c: _Ctx, g: torch.Tensor) -> torch.Tensor:
    """``∂/∂‖x‖`` ``[N]`` of the margin's row loss, this rank's share.

    Every rank adds the same row loss, and the all-gather's backward sums the ranks'
    gradients: each rank contributes ``1/W`` of it.
    """
    with torch.enable_grad():
        leaf = c.x_norm.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(c.spec.margin.row_loss(leaf).sum(), leaf)
    return grad * (g / comm.get_world_size(c.spec.group))


def _scatter(dst: torch.Tensor | None, rows: RowIndex, src: torch.Tensor | None) -> None:
    if dst is None or src is None:
        return
    if isinstance(rows, slice):
        dst[rows] = src.to(dst.dtype)
    else:
        dst.index_copy_(0, rows, src.to(dst.dtype))


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
        spec: labels, sampled rows, group, block size, optimizer (:class:`LossSpec`).
        params: the margin's parameters (replicated on every rank).

    Returns:
        Scalar loss, float32 (float64 for float64 inputs), identical on every rank.
    """
    tracked = [t for t in (x, weight, bias, *params) if t is not None]
    if spec.keep_bytes and not (torch.is_grad_enabled() and any(t.requires_grad for t in tracked)):
        spec = replace(spec, keep_bytes=0)  # no backward will read them
    return _FusedMarginLoss.apply(x, weight, bias, spec, *params)
