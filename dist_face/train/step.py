"""One optimizer step: forward, loss, backward, overflow check, clip, update. No I/O.

The step returns device tensors and never reads them back, so the host runs ahead of the
device; hooks read values only on logging steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dist_face.dist import comm
from dist_face.train.guard import BufferSnapshot
from dist_face.train.precision import LossScaler, autocast
from dist_face.train.timing import StepTimer

Batch = tuple[torch.Tensor, torch.Tensor]


def optimizer_step(optimizer: torch.optim.Optimizer, found_inf: torch.Tensor) -> None:
    """Apply ``optimizer`` unless ``found_inf`` is set.

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


class TrainStep:
    """Callable running one optimizer step over ``grad_accum`` micro-batches.

    Args:
        backbone: the (possibly DDP-wrapped) backbone: images ``[B, 3, H, W]`` → ``[B, D]``.
        loss_fn: the head (and any auxiliary losses): ``(embeddings [B, D] fp32, labels [B])``
            → scalar loss of the global batch, or ``(scalar, {part: unweighted scalar})``
            (:class:`~dist_face.heads.aux_losses.WeightedSum`).
        optimizers: backbone and head optimizers, stepped together or skipped together.
        schedulers: stepped once per optimizer step.
        scaler: loss scaling and the cross-rank overflow flag.
        precision: fp32, bf16 or fp16 (autocast of the backbone; the head stays fp32).
        clip_params: parameters whose gradient norm is clipped (the backbone's).
        clip_grad_norm: maximum global L2 norm; 0 disables clipping.
        timer: records the time of each phase (forward, head collectives, backward,
            optimizer) without synchronising; None to not time.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
        scaler: LossScaler,
        precision: str,
        clip_params: Sequence[nn.Parameter],
        clip_grad_norm: float,
        timer: StepTimer | None = None,
    ) -> None:
        self.backbone = backbone
        self.loss_fn = loss_fn
        self.optimizers = list(optimizers)
        self.schedulers = list(schedulers)
        self.scaler = scaler
        self.precision = precision
        self.clip_params = list(clip_params)
        self.clip_grad_norm = clip_grad_norm
        self.timer = timer
        self._params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]
        self._bn = BufferSnapshot(backbone)  # a skipped step leaves BatchNorm statistics alone

    def __call__(self, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
        """Run forward/backward on every micro-batch, then one update.

        Returns:
            Device tensors: ``loss`` (mean over micro-batches), ``grad_norm`` (backbone, before
            clipping), ``skipped`` (1.0 if the update was skipped for inf/NaN), and
            ``loss/<part>`` (unweighted, mean over micro-batches) when the loss function
            returns ``(total, parts)`` (a head with auxiliary losses).
        """
        timer = self.timer
        comm.time_collectives(timer)
        try:
            total = torch.zeros((), device=self.scaler.scale.device)
            parts: dict[str, torch.Tensor] = {}
            self._bn.save()
            for i, (images, labels) in enumerate(batches):
                last = i == len(batches) - 1
                with self._no_sync(not last):
                    if timer is not None:
                        timer.start("forward")
                    embeddings = self.embed(images)
                    loss = self.loss_fn(embeddings.float(), labels)
                    if isinstance(loss, tuple):  # (total, {name: unweighted part})
                        loss, named = loss
                        for name, value in named.items():
                            part = value.detach() / len(batches)
                            parts[f"loss/{name}"] = parts.get(f"loss/{name}", 0) + part
                    loss = loss / len(batches)
                    if timer is not None:
                        timer.start("backward")
                    self.backward(loss, last)
                total += loss.detach()
            if timer is not None:
                timer.start("optimizer")
            found_inf, grad_norm = self.update()
            self._bn.restore_if(found_inf)
            for sched in self.schedulers:
                sched.step()
            if timer is not None:
                timer.end_step()
        finally:
            comm.time_collectives(None)
        return {"loss": total, "grad_norm": grad_norm.detach(), "skipped": found_inf, **parts}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone forward under autocast: ``[B, 3, H, W]`` → ``[B, D]``."""
        with autocast(self.precision, images.device):
            return self.backbone(images)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Back-propagate one micro-batch's ``loss`` (``last``: the step's final micro-batch)."""
        self.scaler.scale_loss(loss).backward()

    def update(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Check, clip and apply the accumulated gradients; zero them.

        Returns:
            ``(found_inf, grad_norm)``: the all-ranks overflow flag and the backbone's gradient
            norm before clipping (0 when clipping is off), both 0-dim device tensors.
        """
        found_inf = self.scaler.unscale_and_check(self._params)
        grad_norm = torch.zeros((), device=found_inf.device)
        if self.clip_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(
                self.clip_params, self.clip_grad_norm, foreach=True
            )
        for opt in self.optimizers:
            optimizer_step(opt, found_inf)
        self.scaler.update(found_inf)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        return found_inf, grad_norm

    def _no_sync(self, skip_reduce: bool) -> contextlib.AbstractContextManager:
        # accumulate micro-batches locally; DDP all-reduces on the last one only
        if skip_reduce and isinstance(self.backbone, DistributedDataParallel):
            return self.backbone.no_sync()
        return contextlib.nullcontext()
