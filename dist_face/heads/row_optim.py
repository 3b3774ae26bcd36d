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
the backward's gradient carries the loss scale; ``grad_scale`` (a device tensor or a float,
set by the trainer) divides it out. Because the update happens in backward, a step that the
trainer skips for an overflow in the *backbone's* gradients still updates the sampled centers:
their gradient is computed in float32 from finite embeddings and is valid.

Margin parameters (UniFace's shared bias) are not rows: they get a normal gradient and are
updated by :meth:`RowSparseOptimizer.step` with the same formulas, honouring ``found_inf``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

RowIndex = slice | torch.Tensor
"""Which rows of a ``[C_local, ...]`` tensor: a contiguous ``slice`` or sorted int64 ids."""


def _rows(t: torch.Tensor, rows: RowIndex) -> torch.Tensor:
    return t[rows] if isinstance(rows, slice) else t.index_select(0, rows)


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
        lr: learning rate.
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
        self.kind = kind
        self.grad_scale: torch.Tensor | float | None = None
        """Divides the gradients handed to :meth:`update_rows` (the fp16 loss scale)."""
        self.found_inf: torch.Tensor | None = None
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

    @torch.no_grad()
    def update_rows(
        self,
        rows: RowIndex,
        grads: list[torch.Tensor | None],
        enabled: torch.Tensor,
    ) -> None:
        """Apply one update to ``rows`` of every row parameter.

        Args:
            rows: the rows (a slice, or sorted unique int64 ids on the parameters' device).
            grads: per row group, the gradient of those rows (``[R, ...]``, float32; None:
                the group is left alone), scaled by ``grad_scale``.
            enabled: 0-dim bool device tensor; False leaves weights and state unchanged.
        """
        for group, grad in zip(self.row_groups, grads, strict=True):
            if grad is None:
                continue
            if self.grad_scale is not None:
                grad = grad / self.grad_scale
            p = group["params"][0]
            self._apply(p, rows, grad, group, enabled)

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """Update the non-row parameters from their ``.grad``, unless ``found_inf`` is set.

        The row parameters were updated in backward (:meth:`update_rows`).
        """
        enabled = None
        if self.found_inf is not None:
            enabled = self.found_inf == 0
        for group in self.param_groups:
            if group["rows"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                flag = enabled if enabled is not None else torch.ones((), dtype=torch.bool)
                flag = flag.to(p.device)
                view = p.view(1, -1) if p.ndim == 0 else p
                self._apply(view, slice(None), p.grad.view_as(view).float(), group, flag, p)

    def _apply(
        self,
        p: torch.Tensor,
        rows: RowIndex,
        grad: torch.Tensor,
        group: dict[str, Any],
        enabled: torch.Tensor,
        owner: torch.Tensor | None = None,
    ) -> None:
        """The SGD/AdamW formulas on ``rows`` of ``p`` in float32, written back in p's dtype."""
        state = self.state[owner if owner is not None else p]
        if owner is not None and owner.ndim == 0:  # a scalar parameter, viewed as [1, 1]
            state = {k: v.view(1, -1) if k != "step" else v for k, v in state.items()}
        lr, wd = group["lr"], group["weight_decay"]
        on = enabled.to(torch.float32)
        w = _rows(p, rows).float()
        # a suppressed step must leave everything as it was: zero the gradient where it may
        # be non-finite, and turn every coefficient into the identity
        grad = torch.where(enabled, grad, 0.0)
        if self.kind == "sgd":
            mu = torch.where(enabled, group["momentum"], 1.0)
            buf = _rows(state["momentum_buffer"], rows).float()
            d = grad.add(w * (wd * on)) if wd else grad
            buf.mul_(mu).add_(d)
            w.sub_(buf * (lr * on))
            _write(state["momentum_buffer"], rows, buf)
        else:
            beta1, beta2 = group["betas"]
            b1 = torch.where(enabled, beta1, 1.0)
            b2 = torch.where(enabled, beta2, 1.0)
            step = _rows(state["step"], rows).add_(on)
            m = _rows(state["exp_avg"], rows).float()
            v = _rows(state["exp_avg_sq"], rows).float()
            w.mul_(1.0 - lr * wd * on)
            m.mul_(b1).add_(grad * (1.0 - b1))
            v.mul_(b2).add_(grad * grad * (1.0 - b2))
            shape = (-1,) + (1,) * (w.ndim - 1)
            t = step.clamp_min(1.0).view(shape)  # never-updated rows: any finite correction
            bc1 = 1.0 - torch.pow(beta1, t)
            bc2 = 1.0 - torch.pow(beta2, t)
            denom = (v.sqrt() / bc2.sqrt()).add_(group["eps"])
            w.sub_(m / denom * (lr * on / bc1))
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
