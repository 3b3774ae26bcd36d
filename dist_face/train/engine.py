"""The backbone's side of a training step, behind one interface for DDP and DeepSpeed.

An :class:`Engine` runs the backbone forward and backward, owns its loss scale, applies (or
skips) its update and saves and loads its state in the engine-independent checkpoint layout.
The step (:class:`~dist_face.train.step.TrainStep`) drives any engine the same way and makes
the one skip decision of the step; the class-center head stays outside every engine.
:class:`DDPEngine` is the backbone in DDP (or bare at one rank) under torch autocast;
:class:`~dist_face.train.deepspeed_engine.DeepSpeedEngine` is the backbone inside DeepSpeed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_face.train.precision import LossScaler, autocast


class Engine(Protocol):
    """What the step asks of the backbone's engine.

    Attributes:
        module: the bare backbone (BatchNorm statistics, evaluation, export).
        scaler: the loss scale the head's gradients carry, and the group the step's skip flag
            is reduced over.
        optimizers: the backbone's optimizers (their learning rate follows the schedulers).
    """

    module: nn.Module
    scaler: LossScaler
    optimizers: list[torch.optim.Optimizer]

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        """Context of one micro-batch's forward and backward (``last``: the step's final one)."""
        ...

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``[B, D]`` of images ``[B, 3, H, W]`` (in the engine's precision)."""
        ...

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Back-propagate one micro-batch's (unscaled) ``loss``; the engine scales it."""
        ...

    def checked_params(self) -> list[nn.Parameter]:
        """Backbone parameters whose gradients the step unscales and checks with the head's."""
        ...

    def step(self, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the backbone's update unless ``skip`` (0-dim float, 1.0 = skip); zero grads.

        Returns:
            ``(skip, grad_norm)``: ``skip`` extended by the engine's own verdict (DeepSpeed's
            overflow check), the backbone's gradient norm before clipping (0 when off).
        """
        ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(fp32 weights by name, torch.optim state dict)``; collective under ZeRO."""
        ...

    def load_state(self, weights: dict[str, torch.Tensor], optim_state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`, on any world size (collective under ZeRO)."""
        ...


def optimizer_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Apply ``optimizer`` unless ``found_inf`` is set (0-dim float, exactly 0.0 or 1.0).

    Fused optimizers (and the head's row-sparse one) read the flag on the device and skip the
    whole update (momentum, Adam moments and weight decay included). Others need the flag on
    the host: one synchronisation, only on devices without fused kernels.
    """
    if optimizer.defaults.get("fused") or getattr(optimizer, "reads_found_inf", False):
        optimizer.found_inf = found_inf  # read by the fused kernels, as GradScaler does
        optimizer.grad_scale = None
        optimizer.step()
    elif not bool(found_inf):
        optimizer.step()


class DDPEngine:
    """The backbone in DDP (or bare at one rank), under autocast, with torch's optimizers.

    Args:
        model: the (possibly DDP-wrapped) backbone: images ``[B, 3, H, W]`` → ``[B, D]``.
        optimizers: the backbone's optimizers.
        scaler: loss scaling (fp16) and the data-parallel group of the skip flag.
        precision: fp32, bf16 or fp16 (autocast of the backbone).
        clip_grad_norm: maximum global L2 norm of the backbone's gradient; 0 disables it.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizers: Sequence[torch.optim.Optimizer],
        scaler: LossScaler,
        precision: str,
        clip_grad_norm: float = 0.0,
    ) -> None:
        self.model = model
        self.module = model.module if isinstance(model, DistributedDataParallel) else model
        self.optimizers = list(optimizers)
        self.scaler = scaler
        self.precision = precision
        self.clip_grad_norm = clip_grad_norm
        self._params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]
        self._clip = list(self.module.parameters())
        self._zero = torch.zeros((), device=scaler.scale.device)  # the norm when not clipping

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        """Accumulate all but the last micro-batch locally; DDP all-reduces on the last one."""
        if not last and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone forward under autocast: ``[B, 3, H, W]`` → ``[B, D]``."""
        with autocast(self.precision, images.device):
            return self.model(images)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Back-propagate ``loss · scale``."""
        self.scaler.scale_loss(loss).backward()

    def checked_params(self) -> list[nn.Parameter]:
        """Every parameter of the backbone's optimizers."""
        return self._params

    def step(self, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, then step every optimizer unless ``skip``; zero the gradients."""
        grad_norm = self._zero
        if self.clip_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(
                self._clip, self.clip_grad_norm, foreach=True
            )
        for opt in self.optimizers:
            optimizer_step(opt, skip)
            opt.zero_grad(set_to_none=True)
        return skip, grad_norm

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The backbone's ``state_dict`` and its (single) optimizer's."""
        return self.module.state_dict(), self.optimizers[0].state_dict()

    def load_state(self, weights: dict[str, torch.Tensor], optim_state: dict[str, Any]) -> None:
        """Load what :meth:`state` (or the DeepSpeed engine) saved."""
        self.module.load_state_dict(weights)
        self.optimizers[0].load_state_dict(optim_state)
