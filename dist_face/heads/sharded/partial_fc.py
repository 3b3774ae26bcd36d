"""The class-center head sharded over ranks (model-parallel FC with optional Partial FC sampling).

Rank ``r`` of ``W`` (in ``group``) holds the centers of the contiguous global classes
``class_range(C, r, W)`` as ``weight`` ``[num_local, D]`` (``[num_local, K, D]`` for a margin
with ``K`` sub-centers per class). One step:

1. all-gather the embeddings ``[B, D] → [N = W·B, D]`` (with gradient) and the labels;
2. optionally sample classes (:class:`~dist_face.heads.sharded.sampling.ClassSampler`: all positives
   of the global batch in this slice plus uniform negatives, Partial FC's ``K =
   max(⌈r·num_local⌉, positives on this rank)`` kept). With the loader's labels on the host
   (CPU labels, whatever the embeddings' device) the labels are gathered, checked and
   sampled on the host (:mod:`~dist_face.heads.sharded.label_path`: in training, by a worker thread
   while the step before runs) and copied to the device in one non-blocking transfer; labels
   that exist only on the device are never read, and the size falls back to the shape bound
   ``max(⌈r·num_local⌉, min(N, num_local))``;
3. the fused loss (:mod:`dist_face.heads.sharded.fused_loss`): projection, margin and softmax over
   blocks of kept classes, the row max and denominator all-reduced; UCE sums all-reduced.

Memory: besides the centers (and their optimizer state), a rank holds ``[N, chunk]`` blocks
and ``[N, D]`` tensors, plus the forward's projections while they fit in
``keep_projections_mb`` (512 MiB by default; 0 keeps none); never one ``[N, K]`` tensor,
never a normalised copy of the centers, and, when its row gradients go to a
:class:`~dist_face.heads.sharded.row_grads.RowGradSink` (:meth:`hand_rows_to`), never a
``[num_local, D]`` gradient: backward hands the kept rows' gradients over, block by block, and
the step's :class:`~dist_face.heads.sharded.row_optim.RowSparseOptimizer` applies them after its
skip decision. The head never updates its own parameters.

A steady-state forward and backward never wait for the device: every size depends on shapes
or on host labels only, target columns are gathered with masks instead of ``nonzero``, and the
label range check reads host labels (a message naming the offending row, every step) or, for
labels on the device, is a device-side assertion (the first batch, and any batch of a new
size, gets the full check with the message).

Gradient contract (what ``backward`` leaves behind):

* ``loss`` is the mean over the global batch, identical on all ranks.
* Without a sink, ``weight.grad`` on rank r is ``∂loss/∂W[class_range(r)]``: the exact
  gradient for this slice, zero for rows not sampled this step. It must not be averaged by DDP
  (do not wrap the head). With one, ``weight.grad`` stays None: the sink holds the kept rows'
  gradients (:class:`~dist_face.heads.sharded.row_grads.RowGradSink`).
* ``embeddings.grad`` on rank r is ``W · ∂loss/∂x_r`` when ``grad_scale_for_dp_average`` (the
  default): DDP then *averages* the backbone gradient over ranks, and the average of
  ``W · ∂loss/∂x_r · ∂x_r/∂θ`` is exactly the single-device gradient of the global batch. With a
  reducer that *sums* (or none), pass ``False`` and it is ``∂loss/∂x_r``.
* Replicated parameters (UniFace's ``b̃``) receive the full gradient on every rank: their
  per-rank partial gradients are all-reduced during backward.

Every rank must call ``forward`` with the same batch size (checked whenever it changes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed import ProcessGroup

from dist_face.dist import comm
from dist_face.heads.margins.common import MARGINS, Margin
from dist_face.heads.sharded import shard_io
from dist_face.heads.sharded.dist_ops import scale_grad
from dist_face.heads.sharded.fused_loss import (
    KEEP_PROJECTIONS_MB,
    LossSpec,
    default_chunk,
    features_for,
    fused_margin_loss,
)
from dist_face.heads.sharded.label_path import LabelPrefetch, host_label_path
from dist_face.heads.sharded.row_grads import RowGradSink
from dist_face.heads.sharded.sampling import ClassSampler, init_class_centers
from dist_face.heads.sharded.shard_math import class_range
from dist_face.heads.sharded.staging import Staging
from dist_face.heads.sharded.workspace import Workspace


class PartialFC(nn.Module):
    """Sharded class centers + margin loss over an explicit process group.

    Args:
        embedding_size: D.
        num_classes: C, the number of identities (global).
        margin: a :class:`Margin` instance or a registered margin name (default options).
        sample_rate: Partial FC rate r in ``[0, 1]``; 1 keeps every class (model parallel).
        group: process group the classes are split over; None = the default group, or no
            group at all (one device).
        grad_scale_for_dp_average: multiply the local embedding gradient by W (module doc).
        seed: initialises the centers (same values for any W) and the sampling generators.
        interclass_filtering_threshold: zero non-target cosines above it (0 = off).
        check_labels: verify labels are in ``[0, C)`` every step (a device-side assertion; the
            first batch of each size is checked on the host, with a message naming the row).
        chunk_size: kept classes per block of the fused loss; 0 picks
            :func:`~dist_face.heads.sharded.fused_loss.default_chunk` for the gathered batch.
        storage_dtype: dtype of the centers (float32, or bfloat16 to halve their memory; the
            loss math stays float32).
        keep_projections_mb: keep the forward's ``[N, chunk]`` projections for backward while
            all of them (``N·K`` float32) fit in this many MiB, which saves backward one GEMM
            per block; above it, or at 0, backward recomputes them (same result, bitwise).
        gemm_dtype: input dtype of the head's GEMMs (bf16/fp16: the run's precision, with
            float32 accumulation; the softmax statistics, margins and loss stay float32);
            None: float32 GEMMs.
        tf32: float32 GEMMs on CUDA may use TF32.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        margin: Margin | str,
        sample_rate: float = 1.0,
        group: ProcessGroup | None = None,
        *,
        grad_scale_for_dp_average: bool = True,
        seed: int = 0,
        interclass_filtering_threshold: float = 0.0,
        check_labels: bool = True,
        chunk_size: int = 0,
        storage_dtype: torch.dtype = torch.float32,
        keep_projections_mb: float = KEEP_PROJECTIONS_MB,
        gemm_dtype: torch.dtype | None = None,
        tf32: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0, got {chunk_size}")
        if keep_projections_mb < 0:
            raise ValueError(f"keep_projections_mb must be >= 0, got {keep_projections_mb}")
        self.margin = MARGINS.get(margin)() if isinstance(margin, str) else margin
        self.group = group
        self.rank, self.world_size = comm.get_rank(group), comm.get_world_size(group)
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.class_start, self.class_end = class_range(num_classes, self.rank, self.world_size)
        self.num_local = self.class_end - self.class_start
        self.sample_rate = sample_rate
        self.grad_scale_for_dp_average = grad_scale_for_dp_average
        self.interclass_filtering_threshold = interclass_filtering_threshold
        self.check_labels = check_labels
        self.chunk_size = chunk_size
        self.keep_projections_bytes = int(keep_projections_mb * 2**20)
        self.seed = seed
        self.gemm_dtype, self.tf32 = gemm_dtype, tf32
        k = self.margin.sub_centers  # [num_local, K, D] with K sub-centers per class
        init = init_class_centers(
            self.class_start * k, self.class_end * k, embedding_size, seed, dtype=storage_dtype
        )
        self.weight = nn.Parameter(init if k == 1 else init.view(self.num_local, k, -1))
        bias = nn.Parameter(torch.zeros(self.num_local)) if self.margin.class_bias else None
        self.register_parameter("bias", bias)
        self.sampler = ClassSampler(self.num_local, sample_rate, seed, self.rank)
        self.row_grads: RowGradSink | None = None
        self._workspace = Workspace()  # block buffers reused across steps
        self._checked_batch = -1
        self._staging = Staging()  # pinned buffers for the host-computed sample
        self.sampled_fraction = 1.0
        """Kept classes / local classes in the last forward (``head/sampled_fraction``)."""
        self.last_sampled: torch.Tensor | None = None
        """Global class ids used by the last forward (``None`` when every class was used)."""
        self.label_prefetch: LabelPrefetch | None = None
        """Where host labels prepared ahead wait (:mod:`~dist_face.heads.sharded.label_path`)."""

    @property
    def num_sample(self) -> int:
        """Class budget per step on this rank, ``⌈r · num_local⌉``."""
        return self.sampler.budget

    def hand_rows_to(self, sink: RowGradSink | None) -> None:
        """Hand the kept rows' gradients to ``sink`` in backward (None: dense ``weight.grad``).

        The sink is a :class:`~dist_face.heads.sharded.row_optim.RowSparseOptimizer`'s
        (``optimizer.sink``): the step applies it after deciding whether to skip.
        """
        self.row_grads = sink

    @property
    def sampling(self) -> bool:
        """Whether this head samples classes (``sample_rate < 1``)."""
        return self.sampler.active

    def row_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters sharded by class (re-split by class range in checkpoints)."""
        rows = {"weight": self.weight}
        if self.bias is not None:
            rows["bias"] = self.bias
        return rows

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters that must not be weight-decayed."""
        names = {"bias"} if self.bias is not None else set()
        names |= {f"margin.{n}" for n, _ in self.margin.named_parameters()}
        return names

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of the global batch.

        Args:
            embeddings: ``[B, D]`` this rank's embeddings (any float dtype).
            labels: ``[B]`` integer global class ids in ``[0, C)``, on the embeddings' device
                or on the host (then gathered over a gloo group, and the sample takes
                Partial FC's exact size without reading device memory; prepared ahead when a
                :class:`~dist_face.heads.sharded.label_path.LabelPrefetch` is attached).

        Returns:
            Scalar float32 loss averaged over the ``N = W·B`` samples, identical on all ranks.
        """
        first = self._check_inputs(embeddings, labels)
        x = embeddings
        if self.grad_scale_for_dp_average:
            x = scale_grad(x, float(self.world_size))
        x_all = comm.all_gather_with_grad(x, self.group)
        device = x_all.device
        if labels.device.type == "cpu":
            # the loader's labels: gathered on the host, checked and sampled there (by the
            # label path's worker while the step before ran, or here), copied in one transfer
            ready = self.label_prefetch.take(labels) if self.label_prefetch else None
            if ready is None:
                ready = host_label_path(self, labels, comm.control_group(self.group))
            index, local = ready.index, ready.local
            if device.type != "cpu":
                index, local = self._to_device(index, local, device)
        else:
            y_all = comm.all_gather(labels.to(torch.long), self.group)
            if self.check_labels:
                self._check_device_labels(y_all, labels.shape[0], first)
            local = y_all - self.class_start
            local = torch.where((local >= 0) & (local < self.num_local), local, -1)
            index, local = self.sampler.select(local)
        self.last_sampled = None if index is None else index + self.class_start
        kept = self.num_local if index is None else index.shape[0]
        self.sampled_fraction = kept / self.num_local
        chunk = self.chunk_size or default_chunk(x_all.shape[0], x_all.device)
        spec = LossSpec(
            self.margin,
            local,
            index,
            self.group,
            chunk,
            self.interclass_filtering_threshold,
            self.row_grads if self.training else None,
            self._workspace,
            self.keep_projections_bytes,
            self.gemm_dtype,
            self.tf32,
            features_for(self.margin),  # the margin's hooks: none for plain margins
        )
        params = list(self.margin.parameters())
        return fused_margin_loss(x_all, self.weight, self.bias, spec, params)

    def _to_device(
        self, index: torch.Tensor | None, local: torch.Tensor, device: torch.device
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The host-computed sample and labels on ``device``, in one non-blocking copy."""
        if index is None:
            return None, self._staging.to_device(local, device)
        both = self._staging.to_device(torch.cat([index, local]), device)
        return both[: index.shape[0]], both[index.shape[0] :]

    def log_values(self) -> dict[str, float]:
        """Host-side values for the log: ``head/sampled_fraction`` (kept / local classes)."""
        return {"head/sampled_fraction": self.sampled_fraction}

    def _check_inputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> bool:
        """Validate shapes and types.

        Returns:
            True on the first batch of a new size (found by a collective, so every rank
            agrees), when the label range is checked on the host.
        """
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"embeddings: expected [B, {self.embedding_size}], got {list(embeddings.shape)}"
            )
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"labels: expected shape [{embeddings.shape[0]}] to match the embeddings, "
                f"got {list(labels.shape)}"
            )
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError(f"labels: expected an integer dtype, got {labels.dtype}")
        batch = embeddings.shape[0]
        if batch != self._checked_batch:  # a collective only when the batch size changes
            mine = torch.tensor([batch], device=embeddings.device)
            sizes = comm.all_gather(mine, self.group).tolist()
            if len(set(sizes)) != 1:
                raise ValueError(f"batch size differs across ranks: {sizes} (use drop_last)")
            self._checked_batch = batch
            return True
        return False

    def _check_device_labels(self, y_all: torch.Tensor, batch: int, first: bool) -> None:
        """Labels that live on the device: read on the first batch of a size only."""
        bad = (y_all < 0) | (y_all >= self.num_classes)
        if not first:  # steady state: fails on the device, the host does not wait for it
            torch._assert_async(~bad.any(), f"labels: a value is outside [0, {self.num_classes})")
        elif bool(bad.any()):  # every rank sees the same gathered labels, raises together
            i = int(torch.nonzero(bad)[0])
            raise ValueError(
                f"labels: value {int(y_all[i])} (rank {i // batch}, row {i % batch}) is "
                f"outside [0, {self.num_classes})"
            )

    # -- checkpoints ------------------------------------------------------------------------
    def export_shard(self) -> dict[str, Any]:
        """This rank's class-sharded tensors and where they belong (see :mod:`shard_io`)."""
        return shard_io.export_shard(self)

    def load_full(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        """Load this rank's rows from full ``[C, D]`` centers (and ``[C]`` class bias)."""
        shard_io.load_full(self, weight, bias)

    def load_shards(self, shards: list[dict[str, Any]]) -> None:
        """Load from the ``export_shard`` dicts of a run with any world size (re-split)."""
        shard_io.load_shards(self, shards)

    def reseed_sampler(self, step: int) -> None:
        """Restart this rank's sampling stream from ``(seed, rank, step)``.

        Used when a run resumes on another world size: the saved streams belong to the old
        ranks, so each new rank derives its own deterministically from its new rank.
        """
        self.sampler.reseed(step)

    def get_extra_state(self) -> dict[str, Any]:
        """The sampling generator's state (per rank), so a resumed run samples the same."""
        return {"sampler_state": self.sampler.state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`."""
        self.sampler.load_state(state["sampler_state"])

    def extra_repr(self) -> str:
        """Slice, size and sampling, for ``print(head)``."""
        return (
            f"classes [{self.class_start}, {self.class_end}) of {self.num_classes}, "
            f"D={self.embedding_size}, rank {self.rank}/{self.world_size}, "
            f"sample_rate={self.sample_rate}"
        )
