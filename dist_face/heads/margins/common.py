"""Margin functions: turn projections of embeddings on class centers into logits.

A margin sees one block of columns of the ``[N, C]`` score matrix (all classes on one device,
or one rank's slice of them) and the target column of each row that falls in that block. It
never communicates; the head gathers embeddings, reduces the softmax and hands a margin the
one cross-rank quantity it may need (every row's target cosine, ``needs_target_cos``).

Notation: ``x`` embedding, ``w_j`` class center ``j``, ``cos θ_j = w_jᵀx / (‖w_j‖‖x‖)``,
``y`` the label, ``s`` the scale. What the head projects, ``z``, depends on two class flags:

=====================  ====================  ==================  ===========================
``normalize_embedding``  ``normalize_weight``  ``z_ij``             used by
=====================  ====================  ==================  ===========================
True                   True                  ``cos θ_ij``        NormFace, CosFace, ArcFace…
False                  True                  ``‖x_i‖ cos θ_ij``  SphereFace (A-Softmax)
False                  False                 ``w_jᵀ x_i``        softmax, L-Softmax
=====================  ====================  ==================  ===========================

Cosine scores are clamped to ``[-1, 1]`` by the head. Every margin here is registered in
:data:`MARGINS`; per-step state (λ annealing, CurricularFace's ``t``) lives in buffers that
evolve identically on every rank and travel in ``state_dict``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from dist_face.config.base import require
from dist_face.registry import Registry

MARGINS: Registry[type[Margin]] = Registry("margin")


def check_scale(scale: float) -> None:
    """The logit scale ``s`` must be positive (a margin's ``__init__`` calls this)."""
    require(scale > 0, "scale", f"must be > 0, got {scale}")


def check_angle(name: str, value: float) -> None:
    """An additive angular margin must lie in ``[0, π)`` radians."""
    require(0.0 <= value < math.pi, name, f"must be in [0, π), got {value}")


def check_cos_margin(name: str, value: float) -> None:
    """An additive cosine margin must lie in ``(-1, 1)``."""
    require(-1.0 < value < 1.0, name, f"must be in (-1, 1), got {value}")


# Keeps d/dc sqrt(1 - c²) and d/dc acos(c) finite at |c| = 1 (the head clamps cosines there).
_SIN_EPS = 1e-12
_ACOS_EPS = 1e-7


@dataclass
class MarginInput:
    """What a margin receives for one block of ``K`` columns of the global ``[N, C]`` scores.

    Attributes:
        z: ``[N, K]`` float32 projections (see the module table).
        labels: ``[N]`` int64, column of row ``i``'s target in this block, ``-1`` if the target
            lives in another rank's block (sampling always keeps positives).
        x_norm: ``[N]`` float32 ``‖x_i‖`` (None for cosine margins, unless ``needs_x_norm``;
            differentiable: its gradient reaches the embeddings).
        w_norm: ``[K]`` float32 ``‖w_j‖`` (None for cosine margins).
        bias: ``[K]`` float32 per-class bias (only for margins with ``class_bias``), else None.
        target_cos: ``[N]`` float32 ``cos θ_{i,y_i}`` of every row, detached, identical on all
            ranks (only for margins with ``needs_target_cos``), else None.
    """

    z: torch.Tensor
    labels: torch.Tensor
    x_norm: torch.Tensor | None
    w_norm: torch.Tensor | None
    bias: torch.Tensor | None = None
    target_cos: torch.Tensor | None = None

    @functools.cached_property  # one kernel per block, however often a margin reads it
    def owned(self) -> torch.Tensor:
        """``[N]`` bool: row ``i``'s target column is in this block."""
        return self.labels >= 0

    @functools.cached_property
    def target_index(self) -> torch.Tensor:
        """``[N, 1]`` int64 target column of every row (0 for rows owned elsewhere)."""
        return self.labels.clamp_min(0)[:, None]

    def target_z(self) -> torch.Tensor:
        """``[N]`` projection at each row's target column (column 0 where not owned).

        Every row has a value, so margins compute on all ``N`` rows with masks and
        :func:`replace_targets`, and never count the owned rows on the host (``nonzero``).
        """
        if self.z.shape[1] == 0:  # no class in this block
            return self.z.new_zeros(self.z.shape[0])
        return self.z.gather(1, self.target_index).squeeze(1)


class Margin(nn.Module):
    """Base class. ``logits(MarginInput) -> [N, K] logits`` for softmax objectives.

    Class flags tell the head what to compute: ``normalize_embedding``, ``normalize_weight``
    (the projection ``z``), ``class_bias`` (a per-class bias sharded with the centers),
    ``needs_target_cos`` (every row's target cosine, all-reduced) and ``objective``:
    ``"softmax"`` (cross-entropy over all classes, with all-reduced max and denominator) or
    ``"uce"`` (``logits`` returns ``[N]`` per-row loss sums over this block's columns).

    Extension points for margins that adapt to the sample: ``needs_x_norm`` (cosine margins
    that read ``‖x‖``: AdaFace, MagFace), :meth:`row_loss` (a per-row term added to the loss:
    MagFace's regulariser) and ``sub_centers`` (``K`` centers per class, the class's cosine
    being the max over them: sub-center ArcFace).
    """

    normalize_embedding: bool = True
    normalize_weight: bool = True
    class_bias: bool = False
    needs_target_cos: bool = False
    objective: str = "softmax"
    target_only: bool = False
    """Every non-target logit is ``scale · z``; only the target's is changed, by
    :meth:`target_logit` (a function of the target's ``z`` alone). The fused loss then
    differentiates the ``[N]`` targets, not the whole ``[N, K]`` block."""
    scale: float = 1.0
    needs_x_norm: bool = False
    """Cosine margin that also reads every row's ``‖x‖`` in ``MarginInput.x_norm``."""
    has_row_loss: bool = False
    """:meth:`row_loss` adds a per-row term of ``‖x‖`` to the loss."""
    sub_centers: int = 1
    """Centers per class (``K``); the class's cosine is the max over its ``K`` sub-centers."""

    def begin_step(
        self, target_cos: torch.Tensor | None, x_norm: torch.Tensor | None = None
    ) -> None:
        """Advance per-step state (λ annealing, CurricularFace's ``t``) once per head forward.

        A head that evaluates :meth:`logits` block by block, and again in backward, calls this
        exactly once per forward; :meth:`logits` only reads the state. No-op by default.

        Args:
            target_cos: ``[N]`` every row's target cosine (``needs_target_cos`` margins).
            x_norm: ``[N]`` every row's ``‖x‖``, detached, identical on all ranks (the
                gathered batch); None when the caller has no embeddings at hand.
        """

    def row_loss(self, x_norm: torch.Tensor) -> torch.Tensor:
        """``[N]`` extra loss of each row from its ``‖x‖`` (``has_row_loss`` margins).

        The head adds its batch mean to the loss, identically on every rank, and the gradient
        once (not once per rank).
        """
        raise NotImplementedError(f"{type(self).__name__} has no row loss")

    def logits(self, inp: MarginInput) -> torch.Tensor:  # pragma: no cover - abstract
        """Logits ``[N, K]`` (float32) of this block; a pure function of ``inp`` and the state.

        Must not write into ``inp.z``: the head may keep it from forward for backward.
        """
        raise NotImplementedError

    def target_logit(self, zt: torch.Tensor) -> torch.Tensor:
        """``[N]`` target logits from the targets' ``z`` ``[N]`` (``target_only`` margins)."""
        raise NotImplementedError(f"{type(self).__name__} is not target_only")

    def forward(self, inp: MarginInput) -> torch.Tensor:
        """One step over one block holding every class: :meth:`begin_step`, then :meth:`logits`."""
        self.begin_step(inp.target_cos, None if inp.x_norm is None else inp.x_norm.detach())
        return self.logits(inp)


def replace_targets(
    logits: torch.Tensor, inp: MarginInput, values: torch.Tensor, unchanged: torch.Tensor
) -> torch.Tensor:
    """Write each owned row's target ``values`` ``[N]`` into a fresh ``logits`` ``[N, K]``.

    The write covers every row at ``inp.target_index`` (so its size never depends on the
    labels): rows owned elsewhere get ``unchanged`` ``[N]``, the value ``logits`` already has
    there, recomputed from ``inp.z`` (reading it from ``logits`` would not survive the in-place
    write in backward). Differentiable: overwritten entries pass their gradient to ``values``
    (owned rows) or ``unchanged`` (the others).
    """
    if logits.shape[1] == 0:
        return logits
    src = torch.where(inp.owned, values.to(logits.dtype), unchanged.to(logits.dtype))
    return logits.scatter_(1, inp.target_index, src[:, None])


def scaled_with_targets(
    margin: Margin, inp: MarginInput, target: torch.Tensor | None = None
) -> torch.Tensor:
    """``s · z`` ``[N, K]`` with each owned row's target replaced by ``margin.target_logit``.

    The logits of every ``target_only`` margin. ``target`` ``[N]``: the target logits when
    the caller has them already (the fused loss's backward).
    """
    zt = inp.target_z()
    if target is None:
        target = margin.target_logit(zt)
    return replace_targets(inp.z * margin.scale, inp, target, zt * margin.scale)


def sin_from_cos(c: torch.Tensor) -> torch.Tensor:
    """``sin θ = sqrt(1 - cos² θ)`` with a finite gradient at ``|c| = 1``."""
    return torch.sqrt((1.0 - c * c).clamp_min(_SIN_EPS))


def safe_acos(c: torch.Tensor) -> torch.Tensor:
    """``acos`` of ``c`` clamped just inside ``[-1, 1]`` so the gradient stays finite."""
    return torch.acos(c.clamp(-1.0 + _ACOS_EPS, 1.0 - _ACOS_EPS))


def filter_interclass(z: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zero non-target cosines above ``threshold`` (arcface_torch's inter-class filtering).

    Noisy datasets hold the same person under two labels; such near-duplicate centers get
    ``cos > threshold``. Filtered entries become 0 (not -inf, so they stay in the denominator)
    with zero gradient. Targets are never filtered. ``threshold <= 0`` disables it.

    Args:
        z: ``[N, K]`` cosines.
        labels: ``[N]`` target column or -1.
        threshold: cosine above which a non-target entry is filtered.
    """
    if threshold <= 0:
        return z
    with torch.no_grad():
        dirty = z > threshold
        if z.shape[1] > 0:  # targets are never filtered
            cols = labels.clamp_min(0)[:, None]
            dirty.scatter_(1, cols, dirty.gather(1, cols) & (labels < 0)[:, None])
    return z.masked_fill(dirty, 0.0)


@MARGINS.register("softmax")
class Softmax(Margin):
    """Plain softmax with a per-class bias (the baseline): ``logit_j = w_jᵀx + b_j``.

    Neither embeddings nor centers are normalized and there is no scale. The bias is a
    parameter of the head (``[num_local]`` per rank, sharded like the centers) and is excluded
    from weight decay by ``PartialFC.no_weight_decay``.
    """

    normalize_embedding = False
    normalize_weight = False
    class_bias = True

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """``z + b`` (``[N, K]``)."""
        assert inp.bias is not None, "softmax needs the head's class bias"
        return inp.z + inp.bias


@MARGINS.register("normface")
class NormFace(Margin):
    """Normalized softmax (NormFace): ``logit_j = s · cos θ_j``, no margin.

    Args:
        scale: s (16–64 in the literature; 64 by default here).
    """

    target_only = True

    def __init__(self, scale: float = 64.0) -> None:
        super().__init__()
        check_scale(scale)
        self.scale = scale

    def target_logit(self, zt: torch.Tensor) -> torch.Tensor:
        """``s · cos θ_y``: no margin."""
        return zt * self.scale

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """``s · cos θ``."""
        return inp.z * self.scale


@MARGINS.register("cosface")
class CosFace(Margin):
    """AM-Softmax / CosFace (LMCL): target ``s (cos θ_y − m)``, others ``s cos θ_j``.

    Args:
        scale: s (CosFace paper 64, AM-Softmax 30).
        margin: m, the additive cosine margin (paper 0.35; insightface uses 0.4).
    """

    target_only = True

    def __init__(self, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__()
        check_scale(scale)
        check_cos_margin("margin", margin)
        self.scale, self.margin = scale, margin

    def target_logit(self, zt: torch.Tensor) -> torch.Tensor:
        """``s (cos θ_y − m)``."""
        return (zt - self.margin) * self.scale

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Scaled cosines with the target shifted by ``-m``."""
        return scaled_with_targets(self, inp)


def arcface_target(c: torch.Tensor, margin: float, easy_margin: bool) -> torch.Tensor:
    """ArcFace's target cosine ``cos(θ + m)`` in the exact analytic form, with its guards.

    ``cos(θ + m) = cos θ cos m − sin θ sin m``. Past ``θ > π − m`` the curve turns up again, so
    the default falls back to ``cos θ − m sin m`` there (insightface's ``th``/``mm``), which keeps
    the logit decreasing in θ. ``easy_margin`` instead applies the margin only when
    ``cos θ > 0``.
    """
    cos_m, sin_m = math.cos(margin), math.sin(margin)
    phi = c * cos_m - sin_from_cos(c) * sin_m
    if easy_margin:
        return torch.where(c > 0, phi, c)
    th = math.cos(math.pi - margin)
    mm = math.sin(math.pi - margin) * margin
    return torch.where(c > th, phi, c - mm)


@MARGINS.register("arcface")
class ArcFace(Margin):
    """ArcFace (additive angular margin): target ``s cos(θ_y + m)``, others ``s cos θ_j``.

    The default is the exact, differentiable analytic form of :func:`arcface_target`
    (``th``/``mm`` fallback, or ``easy_margin``). ``straight_through=True`` is arcface_torch's
    variant since Dec 2022: the forward value is the same, but the margin is treated as a
    constant offset in backward (``∂logit/∂cos θ = s`` for the target too), which its authors
    found more stable for ViTs.

    Args:
        scale: s (64).
        margin: m in radians (0.5).
        easy_margin: only apply the margin where ``cos θ_y > 0``.
        straight_through: gradient of the target as if there were no margin.
    """

    target_only = True

    def __init__(
        self,
        scale: float = 64.0,
        margin: float = 0.5,
        easy_margin: bool = False,
        straight_through: bool = False,
    ) -> None:
        super().__init__()
        check_scale(scale)
        check_angle("margin", margin)
        self.scale, self.margin = scale, margin
        self.easy_margin, self.straight_through = easy_margin, straight_through

    def target_logit(self, zt: torch.Tensor) -> torch.Tensor:
        """``s cos(θ_y + m)`` (straight-through: the margin as a constant offset)."""
        if self.straight_through:
            with torch.no_grad():
                shift = arcface_target(zt, self.margin, self.easy_margin) - zt
            return (zt + shift) * self.scale
        return arcface_target(zt, self.margin, self.easy_margin) * self.scale

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Scaled cosines with the target replaced by ``cos(θ + m)``."""
        return scaled_with_targets(self, inp)


@MARGINS.register("combined")
class CombinedMargin(Margin):
    """InsightFace's combined margin: target ``s (cos(m1 θ_y + m2) − m3)``, others ``s cos θ_j``.

    Any ``m1, m2, m3``: (1, m, 0) is ArcFace without its fallback, (1, 0, m) is CosFace,
    (m, 0, 0) a SphereFace-like multiplicative margin, (1, 0.3, 0.2) insightface's combined
    recipe. θ comes from ``acos`` of the clamped cosine. No fallback: where ``m1 θ + m2 > π``
    the target is no longer monotonic in θ (harmless in practice, where ``θ_y ≪ π``).

    Args:
        scale: s (64).
        m1: multiplicative angular margin (1.0).
        m2: additive angular margin in radians (0.3).
        m3: additive cosine margin (0.2).
    """

    target_only = True

    def __init__(
        self, scale: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2
    ) -> None:
        super().__init__()
        check_scale(scale)
        check_angle("m2", m2)
        check_cos_margin("m3", m3)
        self.scale, self.m1, self.m2, self.m3 = scale, m1, m2, m3

    def target_logit(self, zt: torch.Tensor) -> torch.Tensor:
        """``s (cos(m1 θ_y + m2) − m3)``."""
        return (torch.cos(self.m1 * safe_acos(zt) + self.m2) - self.m3) * self.scale

    def logits(self, inp: MarginInput) -> torch.Tensor:
        """Scaled cosines with the target replaced by ``cos(m1 θ + m2) − m3``."""
        return scaled_with_targets(self, inp)
