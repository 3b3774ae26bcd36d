"""What the fused loss is given besides the tensors autograd tracks, and its block size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch.distributed import ProcessGroup

from dist_face.heads.margins.common import Margin
from dist_face.heads.sharded.row_grads import RowGradSink
from dist_face.heads.sharded.workspace import Workspace

if TYPE_CHECKING:
    from dist_face.heads.sharded.fused_loss.features import Feature

EPS = 1e-12
"""Floor of the norms that are inverted (as ``F.normalize``)."""

BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}
"""Default size of one ``[N, chunk]`` block (elements) per device type (:func:`default_chunk`)."""
KEEP_PROJECTIONS_MB = 512
"""Default budget for the projections forward keeps for backward (``LossSpec.keep_bytes``)."""


def default_chunk(rows: int, device: torch.device) -> int:
    """Columns per block for ``rows`` gathered embeddings: ``BLOCK_ELEMENTS / N``, ≥ 256.

    CPU: measured with ``tools/bench_head.py --chunks`` (C = 200k and 1M, r = 1 and 0.1,
    N = 64, D = 512; docs/performance.md, Head benchmarks): blocks of 256k elements are
    within 5 % of 1M- and 2M-element ones, and keep a step's transient memory to a quarter
    or less. CUDA (and the meta device the step audit uses): 16M elements (64 MiB per
    ``[N, chunk]`` float32 tensor), chosen with ``tools/audit_step.py --head.chunk_size=``:
    each block costs about 110-135 kernel launches, and at ``ms1mv3_r50``, W = 8, B = 128
    (N = 1024, 11.7k classes per rank) one block instead of two takes the head's projected
    H100 time from 1.92 to 1.54 ms (the calibrated projection of 2026-12-07, ±50 %); not
    measured on a GPU yet.

    Args:
        rows: ``N``, the gathered embeddings.
        device: where the blocks are computed.

    Returns:
        Columns per block.
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
        sink: receives each block's row gradients in backward (None: dense gradient).
        workspace: scratch buffers for one block's rows and gradient.
        keep_bytes: forward keeps every block's ``[N, chunk]`` projections for backward
            when all of them (``N·K`` floats) take at most this many bytes; else backward
            recomputes them. Either way the result is bitwise the same.
        gemm_dtype: input dtype of the three GEMMs per block (bf16/fp16 under a bf16/fp16
            run; float32 accumulation); None: the compute dtype (:mod:`..kernels`).
        tf32: float32 GEMMs on CUDA may use TF32.
        features: the margin's hooks into the loss
            (:func:`~dist_face.heads.sharded.fused_loss.features.features_for`); None: built from
            ``margin``.
    """

    margin: Margin
    labels: torch.Tensor
    index: torch.Tensor | None
    group: ProcessGroup | None
    chunk: int
    filter_threshold: float = 0.0
    sink: RowGradSink | None = None
    workspace: Workspace = field(default_factory=Workspace)
    keep_bytes: int = 0
    gemm_dtype: torch.dtype | None = None
    tf32: bool = True
    features: tuple[Feature, ...] | None = None
