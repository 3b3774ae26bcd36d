"""Row-sparse SGD and AdamW for the class centers: only the rows used this step move.

With Partial FC a step touches ``K = r · C_local`` of a rank's ``C_local`` centers. A dense
optimizer still walks all ``C_local`` rows (weight decay, momentum) and needs a dense
``[C_local, D]`` gradient; at r = 0.1 that walk is most of the step. Here the head hands each
block of rows its gradient during backward (:mod:`dist_face.heads.fused_loss`) and the rows
are updated at once, while they are still in cache; no ``[C_local, D]`` gradient exists.

Semantics (those of the original MXNet Partial FC and PLSC's sparse momentum): a row that was
not sampled this step keeps its weight *and* its optimizer state; weight decay and momentum
apply to sampled rows only. With ``sample_rate = 1`` every row is used every step and the
update equals torch's SGD/AdamW. AdamW's bias correction uses a per-row step count (the number
of times the row was updated), so a rarely sampled row is not over-corrected.

The update never waits for the device: a step whose head loss is not finite is suppressed on
the device (weights and state unchanged) through ``enabled``, a 0-dim bool tensor. Under fp16
the backward's gradient carries the loss scale; ``loss_scale`` (a device tensor or a float,
set by the trainer) divides it out. Under a loss scale (fp16) the update waits for the
trainer's overflow flag: backward keeps each block's unscaled ``[R, D]`` row gradient (a
compact copy, ``4·D`` bytes per kept class until the step) and :meth:`RowSparseOptimizer.step`
applies them unless ``found_inf`` is set, so a step skipped for an overflow anywhere (the
backbone's gradients included) leaves the centers and their optimizer state unchanged. Without
one (fp32, bf16) the rows are updated in backward, while in cache.

Margin parameters (UniFace's shared bias) are not rows: they get a normal gradient and are
updated by :meth:`RowSparseOptimizer.step` with the same formulas, honouring ``found_inf``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dist_face.heads.workspace import Workspace

RowIndex = slice | torch.Tensor
"""Which rows of a ``[C_local, ...]`` tensor: a contiguous ``slice`` or sorted int64 ids."""


def _write(t: torch.Tensor, rows: RowIndex, value: torch.Tensor) -> None:
    if isinstance(rows, slice):
        dst = t[rows]
        if dst.data_ptr() != value.data_ptr() or dst.dtype != value.dtype:  # not updated in place
            dst.copy_(value)
    else:
        t.index_copy_(0, rows, value.to(t.dtype))


class RowSparseOptimizer(torch.optim.Optimizer):
    """SGD (momentum, weight decay) or AdamW for row-sharded head parameters.

    Param groups: the first holds the row parameters (``weight`` ``[C_local, D]`` and, for the
    softmax margin, ``bias`` ``[C_local]``, which gets no weight decay), updated through
    :meth:`update_rows`; the last holds every other parameter of the head (margin parameters),
    updated densely by :meth:`step`. A learning-rate scheduler scales every group as usual.

    Args:
        row_params: ``[(param, weight_decay)]`` row-sharded parameters, all with the same
            number of rows.
        other_params: the head's remaining trainable parameters (no weight decay).
        kind: ``"sgd"`` or ``"adamw"``.
        lr: learning rate (held as a 0-dim float32 tensor on the parameters' device in every
            group's ``"lr"``; learning-rate schedulers update it in place).
        momentum: SGD momentum (no dampening, no Nesterov, as the dense optimizer).
        betas, eps: AdamW's (torch's defaults).
    """

    reads_found_inf = True
    """:meth:`step` takes the trainer's device-side overflow flag (``found_inf``)."""

    def __init__(
        self,
        row_params: Iterable[tuple[nn.Parameter, float]],
        other_params: Iterable[nn.Parameter],
        kind: str,
        lr: float,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if kind not in ("sgd", "adamw"):
            raise ValueError(f"kind must be 'sgd' or 'adamw', got {kind!r}")
        groups = [{"params": [p], "weight_decay": wd, "rows": True} for p, wd in row_params]
        others = [p for p in other_params if p.requires_grad]
        if others:
            groups.append({"params": others, "weight_decay": 0.0, "rows": False})
        defaults = {"lr": lr, "momentum": momentum, "betas": betas, "eps": eps}
        super().__init__(groups, defaults)
        for group in self.param_groups:
            # a device tensor: read by the update kernels, never by the host, so a captured
            # step (CUDA graphs) sees the scheduler's value (schedulers fill_ tensor rates)
            device = group["params"][0].device
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        self.kind = kind
        self.loss_scale: torch.Tensor | float | None = None
        """Divides the gradients handed to :meth:`update_rows` (the fp16 loss scale)."""
        self.found_inf: torch.Tensor | None = None
        self._deferred: list[tuple[RowIndex, list[torch.Tensor | None], torch.Tensor, bool]] = []
        self._workspace = Workspace()  # gathered optimizer rows, reused across blocks
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)

    def _init_state(self, p: torch.Tensor) -> None:
        state = self.state[p]
        if state:
            return
        if self.kind == "sgd":
            state["momentum_buffer"] = torch.zeros_like(p)
        else:
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            rows = p.shape[0] if p.ndim else 1
            state["step"] = torch.zeros(rows, dtype=torch.float32, device=p.device)

    @property
    def row_groups(self) -> list[dict[str, Any]]:
        """The groups updated row by row, in the order of ``update_rows``' gradients."""
        return [g for g in self.param_groups if g["rows"]]

    def fold_decay(self, enabled: torch.Tensor) -> torch.Tensor | None:
        """SGD's L2 coefficient of the weight rows, for the caller to add to their gradient.

        Adding ``wd · w`` where the head already reads the rows saves a pass over them; the
        caller then hands :meth:`update_rows` that gradient with ``decay_folded=True``.
        None for AdamW (decoupled decay, applied here).

        Args:
            enabled: 0-dim bool; the coefficient is 0 when False.
        """
        if self.kind != "sgd":
            return None
        decay = enabled.to(torch.float32) * self.row_groups[0]["weight_decay"]
        # the gradient arrives multiplied by the loss scale, and so must the term added to it
        return decay if self.loss_scale is None else decay * self.loss_scale

    @torch.no_grad()
    def update_rows(
        self,
        rows: RowIndex,
        grads: list[torch.Tensor | None],
        enabled: torch.Tensor,
        current: list[torch.Tensor | None] | None = None,
        decay_folded: bool = False,
    ) -> None:
        """Apply one update to ``rows`` of every row parameter.

        Args:
            rows: the rows (a slice, or sorted unique int64 ids on the parameters' device).
            grads: per row group, the gradient of those rows (``[R, ...]``, float32; None:
                the group is left alone), scaled by ``loss_scale``. Consumed (updated in
                place). Must be finite where ``enabled`` is False (the head passes zeros).
            enabled: 0-dim bool device tensor; False leaves weights and state unchanged.
            current: per row group, the caller's float32 copy (or view) of those rows, if it
                holds one: updated in place and written back, which saves reading the rows
                again.
            decay_folded: the first group's gradient already includes SGD's L2 term, added
                by the caller with the coefficient from :meth:`fold_decay`; else it is
                added here.
        """
        current = current or [None] * len(grads)
        if self.defers:
            self._defer(rows, grads, enabled, decay_folded)
            return
        for i, (group, grad) in enumerate(zip(self.row_groups, grads, strict=True)):
            if grad is None:
                continue
            if self.loss_scale is not None:
                grad = grad.div_(self.loss_scale)
            p = group["params"][0]
            decayed = decay_folded and i == 0
            self._apply(p, rows, grad, group, enabled, decayed=decayed, rows_now=current[i])

    @property
    def defers(self) -> bool:
        """Whether row updates wait for :meth:`step`: under a dynamic loss scale (fp16).

        The trainer's fp16 scale is a device tensor, DeepSpeed's fp16 scale a float; DeepSpeed
        without fp16 hands a constant 1.0, and those steps are never skipped for an overflow.
        """
        scale = self.loss_scale
        return torch.is_tensor(scale) or (scale is not None and scale != 1.0)

    def _defer(
        self,
        rows: RowIndex,
        grads: list[torch.Tensor | None],
        enabled: torch.Tensor,
        decay_folded: bool,
    ) -> None:
        """Keep a compact copy of one block's row gradients until the overflow flag is known.

        The copies are ``[R, D]`` per block (the gradient of the kept rows only, unscaled):
        at r = 1 they add ``4·D`` bytes per class until :meth:`step`. A block whose own
        gradient overflowed is suppressed like a non-finite loss.
        """
        kept = []
        for grad in grads:
            if grad is None:
                kept.append(None)
                continue
            if self.loss_scale is not None:
                grad = grad / self.loss_scale  # a copy: the head reuses its buffer
            else:
                grad = grad.clone()
            enabled = enabled & torch.isfinite(grad).all()
            kept.append(torch.where(enabled, grad, 0.0))
        self._deferred.append((rows, kept, enabled, decay_folded))

    def _apply_deferred(self, skip: torch.Tensor | None) -> None:
        """Apply the row updates kept by :meth:`_defer`, none of them when ``skip`` is set."""
        for rows, grads, enabled, decay_folded in self._deferred:
            if skip is not None:
                enabled = enabled & (skip == 0)
            for i, (group, grad) in enumerate(zip(self.row_groups, grads, strict=True)):
                if grad is not None:
                    p = group["params"][0]
                    decayed = decay_folded and i == 0
                    self._apply(p, rows, grad, group, enabled, decayed=decayed)
        self._deferred.clear()

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """Update the non-row parameters from their ``.grad``, unless ``found_inf`` is set.

        The row parameters were updated in backward (:meth:`update_rows`), or, under a loss
        scale, are updated here from the gradients kept since, unless ``found_inf`` is set:
        a step skipped for an overflow leaves the centers and their state unchanged.
        """
        self._apply_deferred(self.found_inf)
        enabled = None
        if self.found_inf is not None:
            enabled = self.found_inf == 0
        for group in self.param_groups:
            if group["rows"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if enabled is None:  # no trainer flag: always apply (created on the device)
                    flag = torch.ones((), dtype=torch.bool, device=p.device)
                else:
                    flag = enabled.to(p.device)
                view = p.view(1, -1) if p.ndim == 0 else p
                self._apply(view, slice(None), p.grad.view_as(view).float(), group, flag, p)

    def _gather(self, state: dict[str, torch.Tensor], key: str, rows: RowIndex) -> torch.Tensor:
        """Float32 rows of an optimizer tensor: a view where possible, else a reused buffer."""
        return self._workspace.gather(key, state[key], rows, torch.float32)

    def _apply(
        self,
        p: torch.Tensor,
        rows: RowIndex,
        grad: torch.Tensor,
        group: dict[str, Any],
        enabled: torch.Tensor,
        owner: torch.Tensor | None = None,
        decayed: bool = False,
        rows_now: torch.Tensor | None = None,
    ) -> None:
        """The SGD/AdamW formulas on ``rows`` of ``p`` in float32, written back in p's dtype."""
        state = self.state[owner if owner is not None else p]
        if owner is not None and owner.ndim == 0:  # a scalar parameter, viewed as [1, 1]
            state = {k: v.view(1, -1) if k != "step" else v for k, v in state.items()}
        lr, wd = group["lr"], group["weight_decay"]  # lr: 0-dim device tensor
        on = enabled.to(torch.float32)
        # a view when the rows are contiguous float32: updated in place
        w = (
            rows_now
            if rows_now is not None
            else self._workspace.gather("param", p, rows, torch.float32)
        )
        # a suppressed step must leave everything as it was: every coefficient becomes the
        # identity (the caller hands a finite gradient then, zeros from the head)
        if self.kind == "sgd":
            buf = self._gather(state, "momentum_buffer", rows)
            if wd and not decayed:  # g + wd·w (grad is this block's own tensor)
                grad = grad.addcmul_(w, on * wd)
            # buf ← g + μ·buf in one pass (in place through out=)
            torch.addcmul(grad, buf, torch.where(enabled, group["momentum"], 1.0), out=buf)
            w.addcmul_(buf, on * -lr)
            _write(state["momentum_buffer"], rows, buf)
        else:
            beta1, beta2 = group["betas"]
            step = self._gather(state, "step", rows).add_(on)
            m = self._gather(state, "exp_avg", rows)
            v = self._gather(state, "exp_avg_sq", rows)
            w.mul_(1.0 - on * (lr * wd))
            # with the gradient zeroed, a suppressed step only needs β → 1
            m.mul_(torch.where(enabled, beta1, 1.0)).add_(grad, alpha=1.0 - beta1)
            v.mul_(torch.where(enabled, beta2, 1.0)).addcmul_(grad, grad, value=1.0 - beta2)
            shape = (-1,) + (1,) * (w.ndim - 1)
            t = step.clamp_min(1.0).view(shape)  # never-updated rows: any finite correction
            bc1 = 1.0 - torch.pow(beta1, t)
            bc2 = 1.0 - torch.pow(beta2, t)
            denom = v.sqrt().div_(bc2.sqrt()).add_(group["eps"])
            w.addcdiv_(m, denom.mul_(bc1 / (on * -lr)))  # −lr·m̂/(√v̂ + ε); ±inf when off: 0
            _write(state["exp_avg"], rows, m)
            _write(state["exp_avg_sq"], rows, v)
            _write(state["step"], rows, step)
        _write(p, rows, w)


def build_row_optimizer(
    head: nn.Module, kind: str, lr: float, weight_decay: float, momentum: float
) -> RowSparseOptimizer:
    """The row-sparse optimizer of a :class:`~dist_face.heads.partial_fc.PartialFC`.

    ``weight`` is decayed with ``weight_decay``; the class bias and margin parameters are not.
    """
    rows = [(head.weight, weight_decay)]
    if head.bias is not None:
        rows.append((head.bias, 0.0))
    row_ids = {id(p) for p, _ in rows}
    others = [p for p in head.parameters() if id(p) not in row_ids]
    return RowSparseOptimizer(rows, others, kind, lr, momentum=momentum)
