"""Projection, margin and loss of the sharded head, fused and evaluated block by block.

A rank holds ``K`` kept class centers (all ``C_local``, or the Partial FC sample). The loss of
the ``N`` gathered embeddings against them is computed over blocks of ``chunk`` columns, so no
``[N, K]`` tensor and no normalised copy of the centers is ever alive, only ``[N, chunk]``
pieces and the ``[chunk, D]`` rows in use (and, within a byte budget, the blocks' projections
kept from forward to backward). The modules:

* :mod:`.spec` — :class:`LossSpec` (what the loss is given) and the block size.
* :mod:`.plan` — the block plan: the blocks, each block's rows, norms, projection ``z``
  and target columns, the same in forward and backward (:class:`~.plan.Plan`).
* :mod:`.forward` — per block: ``z = x̂ · w_cᵀ / ‖w_c‖`` (cosine margins; the other
  projections of :mod:`~dist_face.heads.margins.common` likewise), the margin's logits, and an
  online softmax: running row max and rescaled denominator, and the target logit where the
  block holds it. Then the row max is all-reduced (MAX) and the denominator and target (SUM,
  one ``[2, N]`` tensor), as in Partial FC. UCE objectives (UniFace) just sum the per-row
  terms.
* :mod:`.backward` — per block, the projections are taken from forward while all of them fit
  in ``LossSpec.keep_bytes`` (``N·K`` floats), else recomputed (one more GEMM: the price of
  holding nothing ``[N, K]``-sized); the logits' gradient ``(p − 1[target]) · g/N`` is
  pushed through the margin with autograd on that block only (for ``target_only`` margins,
  whose non-target logits are ``s · z``, on the ``N`` target logits only), and through the
  projection by hand:
  ``∂L/∂w_j = ‖w_j‖⁻¹ (Gᵀx̂)_j − w_j ‖w_j‖⁻² Σ_i G_ij z_ij``. The block's center gradient
  is handed to a :class:`~dist_face.heads.sharded.row_grads.RowGradSink` (the kept rows only, no
  ``[C_local, D]`` gradient; the step applies them after its skip decision), or, with no
  sink, written into a dense ``weight.grad`` (the classic semantics). The loss never
  updates a parameter itself.
* :mod:`.features` — the margin's hooks, each owning its forward term and its gradient:
  :class:`~.features.NormReader` (the margin reads ``‖x‖``, differentiable: MagFace; and
  ``‖w‖`` for margins that are not cosine), :class:`~.features.RowLoss` (a per-row term of
  ``‖x‖`` added to the loss: MagFace's regulariser) and :class:`~.features.SubCenters`
  (``K`` centers per class, ``weight`` ``[C_local, K, D]``: a class's projection is the max
  over its rows, the gradient reaches the arg-max row only). The head builds them from the
  margin (:func:`~.features.features_for`); a plain margin has none.
* :mod:`.loss` — the autograd function and :func:`fused_margin_loss`.

Margins see exactly what they saw unfused (:class:`~dist_face.heads.margins.common.MarginInput` of
one block) and advance their per-step state once (``begin_step``). Margin parameters
replicated on every rank (UniFace's ``b̃``) get their gradient summed over blocks, then over
ranks in one all-reduce: every rank runs the same collectives whatever its block count.

Everything but the GEMMs runs in float32 (float64 if the inputs are), whatever the storage
dtype of the centers (bf16 rows are upcast a block at a time) and whatever autocast is active.
The three GEMMs per block take their inputs in ``LossSpec.gemm_dtype`` (the run's bf16/fp16)
and accumulate in float32; device-specific choices live in :mod:`~dist_face.heads.sharded.kernels`.
"""

from dist_face.heads.sharded.fused_loss.features import (
    Feature,
    NormReader,
    RowLoss,
    SubCenters,
    features_for,
)
from dist_face.heads.sharded.fused_loss.forward import _exp_shifted
from dist_face.heads.sharded.fused_loss.loss import fused_margin_loss
from dist_face.heads.sharded.fused_loss.spec import (
    BLOCK_ELEMENTS,
    KEEP_PROJECTIONS_MB,
    LossSpec,
    default_chunk,
)

__all__ = [
    "BLOCK_ELEMENTS",
    "KEEP_PROJECTIONS_MB",
    "Feature",
    "LossSpec",
    "NormReader",
    "RowLoss",
    "SubCenters",
    "_exp_shifted",
    "default_chunk",
    "features_for",
    "fused_margin_loss",
]
