"""The class-center head sharded over ranks (model-parallel FC with optional Partial FC sampling).

Rank ``r`` of ``W`` (in ``group``) holds the centers of the contiguous global classes
``class_range(C, r, W)`` as ``weight`` ``[num_local, D]``. One step:

1. all-gather the embeddings ``[B, D] → [N = W·B, D]`` (with gradient) and the labels;
2. optionally sample classes (all positives of the global batch in this slice, plus uniform
   negatives up to ``⌊r·num_local⌋``, or ``min(N, num_local)`` if that is larger; see
   :func:`dist_face.heads.sampling.sample_classes`);
3. project all ``N`` embeddings on this rank's (sampled) centers in float32 (the GEMM may run
   in fp16/bf16 under autocast, everything after it does not) and apply the margin;
4. softmax objectives: all-reduce the row max, then denominator and target logit together
   (:func:`dist_face.heads.dist_ops.dist_cross_entropy`); UCE: all-reduce the loss sum.

No rank ever holds an ``N × C`` tensor: logits are ``N × num_local`` (``N × K`` sampled).

A steady-state forward and backward never wait for the device: every size depends on shapes
only, target columns are gathered with masks instead of ``nonzero``, and the label range check
is a device-side assertion (the first batch, and any batch of a new size, gets the full check
with a message naming the offending row).

Gradient contract (what ``backward`` leaves behind):

* ``loss`` is the mean over the global batch, identical on all ranks.
* ``weight.grad`` on rank r is ``∂loss/∂W[class_range(r)]``: the exact gradient for this slice,
  zero for rows not sampled this step. It must not be averaged by DDP (do not wrap the head).
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
import torch.nn.functional as F
from torch import nn
from torch.distributed import ProcessGroup, ReduceOp

from dist_face.dist import comm
from dist_face.heads import shard_io
from dist_face.heads.dist_ops import dist_cross_entropy, scale_grad, sum_across_ranks
from dist_face.heads.margins import MARGINS, Margin, MarginInput, filter_interclass
from dist_face.heads.projection import cosine_project
from dist_face.heads.sampling import (
    init_class_centers,
    num_sampled,
    sample_classes,
    sampler_seed,
)
from dist_face.heads.shard_math import class_range


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
    ) -> None:
        super().__init__()
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {sample_rate}")
        if embedding_size < 1:
            raise ValueError(f"embedding_size must be >= 1, got {embedding_size}")
        self.margin = MARGINS.get(margin)() if isinstance(margin, str) else margin
        self.group = group
        self.rank, self.world_size = comm.get_rank(group), comm.get_world_size(group)
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.class_start, self.class_end = class_range(num_classes, self.rank, self.world_size)
        self.num_local = self.class_end - self.class_start
        self.sample_rate = sample_rate
        self.num_sample = num_sampled(self.num_local, sample_rate)
        self.grad_scale_for_dp_average = grad_scale_for_dp_average
        self.interclass_filtering_threshold = interclass_filtering_threshold
        self.check_labels = check_labels
        self.seed = seed
        init = init_class_centers(self.class_start, self.class_end, embedding_size, seed)
        self.weight = nn.Parameter(init)
        bias = nn.Parameter(torch.zeros(self.num_local)) if self.margin.class_bias else None
        self.register_parameter("bias", bias)
        self._generator = torch.Generator().manual_seed(sampler_seed(seed, self.rank))
        self._checked_batch = -1
        self.last_sampled: torch.Tensor | None = None
        """Global class ids used by the last forward (``None`` when every class was used)."""

    @property
    def sampling(self) -> bool:
        """Whether this head samples classes (``sample_rate < 1``)."""
        return self.sample_rate < 1.0

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of parameters that must not be weight-decayed."""
        names = {"bias"} if self.bias is not None else set()
        names |= {f"margin.{n}" for n, _ in self.margin.named_parameters()}
        return names

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of the global batch.

        Args:
            embeddings: ``[B, D]`` this rank's embeddings (any float dtype).
            labels: ``[B]`` integer global class ids in ``[0, C)``.

        Returns:
            Scalar float32 loss averaged over the ``N = W·B`` samples, identical on all ranks.
        """
        first = self._check_inputs(embeddings, labels)
        x = embeddings
        if self.grad_scale_for_dp_average:
            x = scale_grad(x, float(self.world_size))
        x_all = comm.all_gather_with_grad(x, self.group)
        y_all = comm.all_gather(labels.to(torch.long), self.group)
        if self.check_labels:
            self._check_label_range(y_all, labels.shape[0], on_host=first)
        local = y_all - self.class_start
        local = torch.where((local >= 0) & (local < self.num_local), local, -1)
        weight, bias, local = self._select_classes(local)
        z, x_norm, w_norm = self._project(x_all, weight)
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self._loss(z, local, x_norm, w_norm, bias)

    def _select_classes(
        self, local: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if not self.sampling:
            self.last_sampled = None
            return self.weight, self.bias, local
        index, local = sample_classes(local, self.num_local, self.num_sample, self._generator)
        self.last_sampled = index + self.class_start
        bias = self.bias[index] if self.bias is not None else None
        return self.weight[index], bias, local

    def _project(
        self, x: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``z = x' w'ᵀ`` ``[N, K]``, norms ``‖x‖`` ``[N]``, ``‖w‖`` ``[K]`` (None for cosines).

        Float32 (float64 if the inputs are): fp16/bf16 embeddings are upcast first.
        """
        dtype = torch.promote_types(torch.promote_types(x.dtype, w.dtype), torch.float32)
        xf, wf = x.to(dtype), w.to(dtype)
        if self.margin.normalize_embedding and self.margin.normalize_weight:
            return cosine_project(xf, wf), None, None  # cosine margins read no norms
        x_norm = torch.linalg.vector_norm(xf, dim=1)
        w_norm = torch.linalg.vector_norm(wf, dim=1)
        if self.margin.normalize_embedding:
            xf = xf / x_norm.clamp_min(1e-12)[:, None]
        z = F.linear(xf, wf).to(dtype)  # autocast may run this GEMM in fp16/bf16
        if self.margin.normalize_weight:
            z = z / w_norm.clamp_min(1e-12)[None, :]
        return z, x_norm, w_norm

    def _loss(
        self,
        z: torch.Tensor,
        labels: torch.Tensor,
        x_norm: torch.Tensor | None,
        w_norm: torch.Tensor | None,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        cosine = self.margin.normalize_embedding and self.margin.normalize_weight
        if cosine and self.interclass_filtering_threshold > 0:
            z = filter_interclass(z, labels, self.interclass_filtering_threshold)
        target_cos = self._target_cos(z, labels) if self.margin.needs_target_cos else None
        inp = MarginInput(z, labels, x_norm, w_norm, bias, target_cos, self.group)
        if self.margin.objective == "uce":
            return sum_across_ranks(self.margin(inp).sum(), self.group) / z.shape[0]
        return dist_cross_entropy(self.margin(inp), labels, self.group)

    def _target_cos(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Every row's target cosine, detached, on every rank (one all-reduce of ``[N]``)."""
        if z.shape[1] == 0:  # no class on this rank: it owns no target
            out = z.new_zeros(z.shape[0])
        else:
            mine = z.detach().gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
            out = torch.where(labels >= 0, mine, 0.0)
        return comm.all_reduce(out, ReduceOp.SUM, self.group)

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

    def _check_label_range(self, y_all: torch.Tensor, batch: int, on_host: bool) -> None:
        bad = (y_all < 0) | (y_all >= self.num_classes)
        if not on_host:  # steady state: fails on the device, the host does not wait for it
            torch._assert_async(~bad.any(), f"labels: a value is outside [0, {self.num_classes})")
            return
        if bool(bad.any()):  # every rank sees the same gathered labels and raises together
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
        """Restart this rank's sampling generator from ``(seed, rank, step)``.

        Used when a run resumes on another world size: the saved generators belong to the old
        ranks, so each new rank derives its own deterministically from its new rank.
        """
        self._generator.manual_seed(sampler_seed(self.seed, self.rank, step))

    def get_extra_state(self) -> dict[str, Any]:
        """The sampling generator's state (per rank), so a resumed run samples the same."""
        return {"sampler_state": self._generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`get_extra_state`."""
        self._generator.set_state(state["sampler_state"])

    def extra_repr(self) -> str:
        """Slice, size and sampling, for ``print(head)``."""
        return (
            f"classes [{self.class_start}, {self.class_end}) of {self.num_classes}, "
            f"D={self.embedding_size}, rank {self.rank}/{self.world_size}, "
            f"sample_rate={self.sample_rate}"
        )
