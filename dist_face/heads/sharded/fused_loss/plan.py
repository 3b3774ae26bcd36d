"""The block plan: the per-forward values the blocks are computed from, forward and backward."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed import ReduceOp

from dist_face.dist import comm
from dist_face.heads.margins.common import MarginInput, filter_interclass
from dist_face.heads.sharded.fused_loss.features import Feature, features_for
from dist_face.heads.sharded.fused_loss.spec import EPS, LossSpec
from dist_face.heads.sharded.kernels import Kernels
from dist_face.heads.sharded.row_grads import RowIndex


@dataclass
class Block:
    """One block of ``Kc`` kept classes (``Kc·K`` rows with ``K`` sub-centers per class).

    Attributes:
        rows: the block's rows of the weight (a slice, or ``[Kc]`` indices when sampled).
        w: ``[rows, D]`` the rows in the compute dtype.
        w_gemm: ``[rows, D]`` the rows as GEMM input (``w`` itself in full precision).
        inv: ``[rows]`` ``1/‖w‖`` when the weight is normalised, else None.
        w_norm: ``[rows]`` ``‖w‖`` for margins that are not cosine, else None.
        z_rows: ``[N, rows]`` the projection on every row.
        z: ``[N, Kc]`` the projection per class the margin sees (``z_rows`` itself, or the
            sub-centers' max).
        bias: ``[Kc]`` class bias, or None.
        labels: ``[N]`` each row's target column in this block, or -1.
        pick: ``[N, Kc]`` arg-max sub-center of each class (sub-center margins), else None.
    """

    rows: RowIndex
    w: torch.Tensor
    w_gemm: torch.Tensor
    inv: torch.Tensor | None
    w_norm: torch.Tensor | None
    z_rows: torch.Tensor
    z: torch.Tensor
    bias: torch.Tensor | None
    labels: torch.Tensor
    pick: torch.Tensor | None = None


class Plan:
    """How the ``K`` kept columns split into blocks, and what every block is computed from.

    Built once per forward and handed to backward: it caches each block's row norms and
    target columns, and (within ``LossSpec.keep_bytes``) forward's projections, which
    backward pops. It stores no result of the loss (:class:`~.forward.ForwardResult`).

    Args:
        x: ``[N, D]`` gathered embeddings.
        weight: ``[C_local, D]`` (``[C_local, K, D]`` with sub-centers) this rank's centers.
        bias: ``[C_local]`` class bias, or None.
        spec: everything else (:class:`~.spec.LossSpec`).
    """

    def __init__(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, spec: LossSpec
    ) -> None:
        margin = spec.margin
        self.spec, self.weight, self.bias = spec, weight, bias
        self.features: tuple[Feature, ...] = (
            features_for(margin) if spec.features is None else spec.features
        )
        self.dtype = torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)
        low = spec.gemm_dtype if self.dtype == torch.float32 else None  # float64 stays exact
        self.kernels = Kernels(x.device, low, spec.tf32)
        self.cosine = margin.normalize_embedding and margin.normalize_weight
        xf = x.detach().to(self.dtype)
        self.x_norm = torch.linalg.vector_norm(xf, dim=1)
        # margins that only change the target logit: differentiate [N] targets, not blocks
        self.target_only = (
            margin.objective == "softmax"
            and margin.target_only
            and spec.filter_threshold <= 0
            and not any(f.touches_margin for f in self.features)
        )
        self.x_inv = self.x_norm.clamp_min(EPS).reciprocal()
        self.xin = xf * self.x_inv[:, None] if margin.normalize_embedding else xf
        self.xin_gemm = self.kernels.gemm_input(self.xin)
        self.num_cols = weight.shape[0] if spec.index is None else spec.index.shape[0]
        self._norms: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}  # ‖w‖, 1/‖w‖
        self._labels: dict[int, torch.Tensor] = {}  # each block's target column: N ints
        # a device zero for torch.where: a Python 0.0 there is one more (fill) kernel per call
        self.zero = torch.zeros((), dtype=self.dtype, device=x.device)
        kept_bytes = xf.shape[0] * self.num_cols * xf.element_size()
        self.keep = 0 < kept_bytes <= spec.keep_bytes
        self.kept: dict[int, torch.Tensor] = {}  # z per block, forward → backward (popped)

    def blocks(self) -> range:
        """The first column of every block."""
        return range(0, self.num_cols, self.spec.chunk)

    def rows(self, lo: int, hi: int) -> RowIndex:
        """The weight's rows of columns ``[lo, hi)``."""
        index = self.spec.index
        return slice(lo, hi) if index is None else index[lo:hi]

    def block(self, lo: int) -> Block:
        """The block starting at column ``lo``: its rows, norms, projection, bias, labels."""
        hi = min(lo + self.spec.chunk, self.num_cols)
        rows = self.rows(lo, hi)
        w = self.spec.workspace.gather("rows", self.weight, rows, self.dtype)
        w = w.reshape(-1, w.shape[-1])  # [Kc·K, D]: a class's K sub-centers are adjacent rows
        w_gemm = self.kernels.gemm_input(w)
        margin = self.spec.margin
        norm = inv = None
        if margin.normalize_weight or not self.cosine:
            # the rows do not change between forward and backward (they are updated after
            # the step's skip decision): one pass over them saved
            if lo not in self._norms:
                norm = torch.linalg.vector_norm(w, dim=1)
                inv = norm.clamp_min(EPS).reciprocal() if margin.normalize_weight else None
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
        w_norm = None if self.cosine else norm
        blk = Block(rows, w, w_gemm, inv, w_norm, z, z, bias, self.labels(lo))
        for feature in self.features:
            feature.shape_block(self, blk)
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

    def margin_input(
        self,
        blk: Block,
        z: torch.Tensor,
        target_cos: torch.Tensor | None,
        leaves: bool = False,
    ) -> MarginInput:
        """What the margin sees of the block; ``leaves``: norms that backward differentiates.

        Args:
            blk: the block.
            z: ``[N, Kc]`` its projection (``blk.z``, or a leaf of it in backward).
            target_cos: ``[N]`` every row's target cosine (``needs_target_cos``), or None.
            leaves: the features' norms as detached copies that require grad.
        """
        if self.cosine and self.spec.filter_threshold > 0:
            z = filter_interclass(z, blk.labels, self.spec.filter_threshold)
        x_norm = w_norm = None
        for feature in self.features:
            x_norm, w_norm = feature.margin_norms(self, blk, leaves)
            if x_norm is not None or w_norm is not None:
                break
        bias = None
        if blk.bias is not None:
            bias = blk.bias.requires_grad_(True) if leaves else blk.bias
        return MarginInput(z, blk.labels, x_norm, w_norm, bias, target_cos)

    def gather_target_cos(self) -> torch.Tensor:
        """``[N]`` every row's target cosine, detached, identical on all ranks."""
        labels = self.spec.labels
        n = labels.shape[0]
        if self.num_cols == 0:  # no class kept on this rank: it owns no target
            mine = self.xin.new_zeros(n)
        else:
            cols = labels.clamp_min(0)
            rows = cols if self.spec.index is None else self.spec.index[cols]
            w = self.weight.detach().index_select(0, rows).to(self.dtype)
            w_unit = w / torch.linalg.vector_norm(w, dim=1).clamp_min(EPS)[:, None]
            x_unit = self.xin
            if not self.spec.margin.normalize_embedding:
                x_unit = x_unit * self.x_inv[:, None]
            cos = (x_unit * w_unit).sum(dim=1).clamp(-1.0, 1.0)
            mine = torch.where(labels >= 0, cos, 0.0)
        return comm.all_reduce(mine, ReduceOp.SUM, self.spec.group)
