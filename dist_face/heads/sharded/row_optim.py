"""Row-sparse SGD and AdamW for the class centers: only the rows used this step move.

With Partial FC a step touches ``K = r · C_local`` of a rank's ``C_local`` centers. A dense
optimizer still walks all ``C_local`` rows (weight decay, momentum) and needs a dense
``[C_local, D]`` gradient; at r = 0.1 that walk is most of the step. Here the head's backward
hands each block of kept rows its gradient to a
:class:`~dist_face.heads.sharded.row_grads.RowGradSink`
(:mod:`dist_face.heads.sharded.fused_loss`), and :meth:`RowSparseOptimizer.step` applies them block
by block after the step's skip decision; no ``[C_local, D]`` gradient exists.

Semantics (those of the original MXNet Partial FC and PLSC's sparse momentum): a row that was
not sampled this step keeps its weight *and* its optimizer state; weight decay and momentum
apply to sampled rows only. With ``sample_rate = 1`` every row is used every step and the
update equals torch's SGD/AdamW. AdamW's bias correction uses a per-row step count (the number
of times the row was updated), so a rarely sampled row is not over-corrected.

The update never waits for the device: :meth:`RowSparseOptimizer.step` reads the step's skip
flag (``found_inf``, a 0-dim device tensor, as torch's fused optimizers do), and a skipped step
leaves the centers, their momentum, Adam moments and step counts unchanged. The gradients in
the sink are unscaled (fp16) and checked for inf/NaN by the step, with every other gradient,
before this update.

Margin parameters (UniFace's shared bias) are not rows: they get a normal gradient and are
updated by :meth:`RowSparseOptimizer.step` with the same formulas, honouring ``found_inf``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dist_face.heads.sharded.row_grads import RowGradSink, RowIndex
from dist_face.heads.sharded.workspace import Workspace

__all__ = ["RowIndex", "RowSparseOptimizer", "build_row_optimizer"]


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
    :attr:`sink`'s blocks; the last holds every other parameter of the head (margin parameters),
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
        self.sink = RowGradSink()
        """Where the head's backward puts the kept rows' gradients (``head.hand_rows_to``)."""
        self.found_inf: torch.Tensor | None = None
        self._always: torch.Tensor | None = None
        self._workspace = Workspace()  # gathered optimizer rows, reused across blocks
        self._consts: dict[tuple[float, str], torch.Tensor] = {}
        self._on: tuple[torch.Tensor, torch.Tensor] | None = None  # (flag, flag as 0/1 float)
        for group in self.param_groups:
            for p in group["params"]:
                self._init_state(p)
            device = group["params"][0].device
            for value in (group["momentum"], *group["betas"], 1.0, 0.0):  # made once, here
                self._const(value, device)

    def _const(self, value: float, device: torch.device) -> torch.Tensor:
        """``value`` as a 0-dim float32 tensor on ``device``, made once.

        ``torch.where(flag, 0.9, 1.0)`` costs a fill kernel per Python number, every call.
        """
        key = (float(value), str(device))
        if key not in self._consts:
            self._consts[key] = torch.tensor(float(value), dtype=torch.float32, device=device)
        return self._consts[key]

    def _float_flag(self, enabled: torch.Tensor) -> torch.Tensor:
        """``enabled`` as a float32 0/1, converted once per flag (every block gets the same)."""
        if self._on is None or self._on[0] is not enabled:
            self._on = (enabled, enabled.to(torch.float32))
        return self._on[1]

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
        """The groups updated row by row, in the order of each sink block's gradients."""
        return [g for g in self.param_groups if g["rows"]]

    @torch.no_grad()
    def step(self, closure: None = None) -> None:
        """Apply the sink's row gradients and the non-row parameters' ``.grad``.

        Nothing moves when ``found_inf`` (the step's skip flag, set by
        :func:`~dist_face.train.engine.optimizer_step`) is nonzero; the sink is emptied either
        way. Without a flag (direct use) the update is applied unless the head's loss was
        inf/NaN.
        """
        # the step's flag already holds the head's own verdict (its decision reads the sink);
        # used directly, a block whose loss was inf/NaN still stops the update
        enabled = self.sink.finite() if self.found_inf is None else self.found_inf == 0
        for rows, grads in self.sink.blocks:
            for group, grad in zip(self.row_groups, grads, strict=True):
                if grad is None:
                    continue
                p = group["params"][0]
                self._apply(p, rows, grad, group, self._flag(enabled, p.device))
        self.sink.clear()
        for group in self.param_groups:
            if group["rows"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                view = p.view(1, -1) if p.ndim == 0 else p
                flag = self._flag(enabled, p.device)
                self._apply(view, slice(None), p.grad.view_as(view).float(), group, flag, p)

    def _flag(self, enabled: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """The 0-dim bool "apply" flag on ``device`` (True, made once, without a step flag)."""
        if enabled is None:
            if self._always is None or self._always.device != device:
                self._always = torch.ones((), dtype=torch.bool, device=device)
            return self._always
        return enabled.to(device)

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
    ) -> None:
        """The SGD/AdamW formulas on ``rows`` of ``p`` in float32, written back in p's dtype."""
        state = self.state[owner if owner is not None else p]
        if owner is not None and owner.ndim == 0:  # a scalar parameter, viewed as [1, 1]
            state = {k: v.view(1, -1) if k != "step" else v for k, v in state.items()}
        lr, wd = group["lr"], group["weight_decay"]  # lr: 0-dim device tensor
        on = self._float_flag(enabled)
        one = self._const(1.0, enabled.device)
        # a view when the rows are contiguous float32: updated in place
        w = self._workspace.gather("param", p, rows, torch.float32)
        # a skipped step must leave everything as it was: with the gradient zeroed (whatever
        # it held, NaN included) every coefficient becomes the identity
        grad = torch.where(enabled, grad, self._const(0.0, enabled.device), out=grad)
        if self.kind == "sgd":
            buf = self._gather(state, "momentum_buffer", rows)
            if wd:  # g + wd·w (grad is the sink's own tensor)
                grad = grad.addcmul_(w, on * wd)
            # buf ← g + μ·buf in one pass (in place through out=)
            keep = torch.where(enabled, self._const(group["momentum"], enabled.device), one)
            torch.addcmul(grad, buf, keep, out=buf)
            w.addcmul_(buf, on * lr, value=-1.0)
            _write(state["momentum_buffer"], rows, buf)
        else:
            beta1, beta2 = group["betas"]
            step = self._gather(state, "step", rows).add_(on)
            m = self._gather(state, "exp_avg", rows)
            v = self._gather(state, "exp_avg_sq", rows)
            w.mul_(1.0 - on * (lr * wd))
            # with the gradient zeroed, a suppressed step only needs β → 1
            b1, b2 = self._const(beta1, enabled.device), self._const(beta2, enabled.device)
            m.mul_(torch.where(enabled, b1, one)).add_(grad, alpha=1.0 - beta1)
            v.mul_(torch.where(enabled, b2, one)).addcmul_(grad, grad, value=1.0 - beta2)
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
    """The row-sparse optimizer of a :class:`~dist_face.heads.sharded.partial_fc.PartialFC`.

    ``weight`` is decayed with ``weight_decay``; the class bias and margin parameters are not.
    """
    rows = [(head.weight, weight_decay)]
    if head.bias is not None:
        rows.append((head.bias, 0.0))
    row_ids = {id(p) for p, _ in rows}
    others = [p for p in head.parameters() if id(p) not in row_ids]
    return RowSparseOptimizer(rows, others, kind, lr, momentum=momentum)
