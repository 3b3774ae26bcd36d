"""Mixed precision: autocast, the dynamic loss scale and overflow detection, all on device.

fp16 needs a dynamic loss scale; bf16 and fp32 run with a scale of 1. In every precision the
unscaled gradients are checked for inf/NaN. The step
(:meth:`~dist_face.train.step.TrainStep.decide_skip`, the only skip path) all-reduces the
overflow flag (MAX) over the ranks, because the class-center gradients differ per rank: a rank
that skipped while another stepped would let the replicated backbone diverge. The flag stays
on the device; fused optimizers read it and skip, and the scale is updated with torch's
device-side AMP kernel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch.distributed import ProcessGroup

from dist_face.config import ConfigError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast context for the backbone forward (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(precision, device)
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot train in, before anything is built.

    Raises:
        ConfigError: fp16 without CUDA (autocast's fp16 loss scaling and DeepSpeed's fp16 are
            CUDA-only).
    """
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"train.precision: fp16 needs a CUDA device, this rank trains on {device}; "
            "use bf16 or fp32"
        )


class LossScaler:
    """Dynamic (fp16) or unit (bf16/fp32) loss scaling with a cross-rank overflow flag.

    Args:
        precision: fp32, bf16 or fp16.
        device: the training device.
        init_scale: first scale for fp16.
        growth_interval: overflow-free steps before the fp16 scale doubles.
        group: process group over which the overflow flag is reduced.
    """

    def __init__(
        self,
        precision: str,
        device: torch.device,
        init_scale: float = 65536.0,
        growth_interval: int = 2000,
        group: ProcessGroup | None = None,
    ) -> None:
        self.dynamic = precision == "fp16"
        self.group = group
        self.growth_interval = growth_interval
        self.scale = torch.full((), init_scale if self.dynamic else 1.0, device=device)
        self._growth_tracker = torch.zeros((), dtype=torch.int32, device=device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)
        """Steps skipped for inf/NaN gradients so far (a device tensor; read on log steps)."""

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss · scale`` (identity for bf16/fp32)."""
        return loss * self.scale if self.dynamic else loss

    def unscale(self, grads: Iterable[torch.Tensor], found_inf: torch.Tensor) -> None:
        """Divide ``grads`` by the scale in place; set ``found_inf`` to 1.0 on inf/NaN.

        ``found_inf`` (0-dim) is this rank's flag only: the step
        (:meth:`~dist_face.train.step.TrainStep.decide_skip`) reduces it over the ranks.
        """
        inv_scale = self.scale.double().reciprocal().float()
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for g in grads:
            by_dtype.setdefault(g.dtype, []).append(g)
        for grads in by_dtype.values():
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)

    def update(self, found_inf: torch.Tensor) -> None:
        """Halve the fp16 scale on overflow; double it after ``growth_interval`` clean steps."""
        if self.dynamic:
            torch._amp_update_scale_(
                self.scale, self._growth_tracker, found_inf, 2.0, 0.5, self.growth_interval
            )

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Scale, growth tracker and skip count, for checkpoints."""
        return {
            "scale": self.scale,
            "growth_tracker": self._growth_tracker,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.scale.copy_(state["scale"])
        self._growth_tracker.copy_(state["growth_tracker"])
        self.skipped.copy_(state["skipped"])
