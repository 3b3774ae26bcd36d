"""What a step's forward moves outside the optimizers, put back when the step is skipped.

The forward pass runs before the step's skip decision (:meth:`dist_face.train.step.TrainStep.
decide_skip`) and moves state no optimizer owns: the backbone's BatchNorm running statistics
(towards inf when activations overflowed), the head's per-step buffers (AdaFace's norm
statistics, ElasticFace's draw counter, the center loss's centers) and two host-side random
streams (Partial FC's class sampler, ElasticFace's draw seed). A skipped step must leave all of
them as they were: :class:`BufferSnapshot` copies device buffers before the forward and puts
them back on the device where the skip flag is set (no host synchronisation);
:class:`HostRewind` does the same for the host state, reading the flag on the host only when
there is host state to rewind (a head that samples, or ElasticFace): free on a CPU, on a GPU
one wait for the step's end per step.

This module imports no hook and no loop: the step depends on it, and the hooks on the step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dist_face.heads.margins.elastic import ElasticFace
from dist_face.heads.sharded.sampling import ClassSampler, host_work


def batchnorm_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The running statistics and batch counters of every BatchNorm in ``model``."""
    return [
        buf
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        for buf in module.buffers()
    ]


class BufferSnapshot:
    """Copies of some buffers, restored on the device when a step is skipped.

    Buffers of one dtype are saved into one flat tensor, so a snapshot and a restore cost a
    few kernels whatever the number of layers.

    Args:
        buffers: the tensors to track (BatchNorm statistics: :func:`batchnorm_buffers`).
    """

    def __init__(self, buffers: list[torch.Tensor]) -> None:
        groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
        for buf in buffers:
            groups.setdefault((buf.dtype, buf.device), []).append(buf)
        self._groups = [
            (bufs, torch.empty(sum(b.numel() for b in bufs), dtype=dtype, device=device))
            for (dtype, device), bufs in groups.items()
        ]
        self._now = [torch.empty_like(saved) for _, saved in self._groups]  # reused every step

    @classmethod
    def of_batchnorm(cls, model: nn.Module) -> BufferSnapshot:
        """A snapshot of ``model``'s BatchNorm statistics."""
        return cls(batchnorm_buffers(model))

    def nonfinite(self) -> torch.Tensor | None:
        """0-dim device bool: a floating-point buffer holds inf/NaN (None: none tracked)."""
        flags = []
        for (bufs, saved), now in zip(self._groups, self._now):
            if saved.is_floating_point():
                torch.cat([b.reshape(-1) for b in bufs], out=now)
                flags.append(~torch.isfinite(now).all())
        return torch.stack(flags).any() if flags else None

    def save(self) -> None:
        """Copy the buffers' current values."""
        for bufs, saved in self._groups:
            torch.cat([b.reshape(-1) for b in bufs], out=saved)

    def restore_if(self, skipped: torch.Tensor) -> None:
        """Put the saved values back where ``skipped`` (0-dim, nonzero = skipped) is set."""
        for (bufs, saved), now in zip(self._groups, self._now):
            torch.cat([b.reshape(-1) for b in bufs], out=now)
            torch.where(skipped.bool(), saved, now, out=now)
            torch._foreach_copy_(
                bufs, [p.view_as(b) for p, b in zip(now.split([b.numel() for b in bufs]), bufs)]
            )


class HostRewind:
    """The host state a loss's forward advances, put back when the step is skipped.

    Partial FC's sampling streams and ElasticFace's draw counter: saved before the forward.

    Args:
        loss_fn: the step's loss (the head, or the head with auxiliary losses).
    """

    def __init__(self, loss_fn: object) -> None:
        modules = list(loss_fn.modules()) if isinstance(loss_fn, nn.Module) else []
        self._samplers = [  # (sampler, its head): a plain attribute, not a module; r = 1 draws none
            (s, m)
            for m in modules
            for s in vars(m).values()
            if isinstance(s, ClassSampler) and s.active
        ]
        self._elastic = [m for m in modules if isinstance(m, ElasticFace)]
        self._saved: list[Callable[[], None]] = []
        self._flag: torch.Tensor | None = None  # the skip flag on the host, reused

    @property
    def active(self) -> bool:
        """Whether there is host state to rewind (the step then reads its skip flag)."""
        return bool(self._samplers or self._elastic)

    def save(self) -> None:
        """Note the host state before the forward."""
        self._saved = [_restorer(s, head) for s, head in self._samplers]
        self._saved += [_restorer(m) for m in self._elastic]

    def restore_if(self, skipped: torch.Tensor) -> None:
        """Put the noted state back if ``skipped`` (0-dim, nonzero = skipped) is set.

        Only when :attr:`active`: the flag is then copied to the host and read there. On a
        CPU that costs nothing; on a GPU the host waits for the step's end (the copy goes to
        pinned memory behind an event), once per step: the price of rewinding host state
        that the device decides about. Without sampling or ElasticFace nothing is read.
        """
        if not self.active:
            return
        if self._flag is None:
            pinned = skipped.device.type == "cuda"
            self._flag = torch.zeros((), dtype=skipped.dtype, pin_memory=pinned)
        self._flag.copy_(skipped, non_blocking=True)
        if skipped.device.type == "cuda":
            done = torch.cuda.Event()
            done.record()
            done.synchronize()
        with host_work(self._flag):
            if bool(self._flag):
                for restore in self._saved:
                    restore()


def _restorer(obj: ClassSampler | ElasticFace, owner: object = None) -> Callable[[], None]:
    """A closure putting ``obj``'s host state back as it is now.

    A sampler whose head prepares the next steps' labels ahead (``owner.label_prefetch``,
    :mod:`dist_face.heads.sharded.label_path`) is put back through the prefetch, which draws the
    waiting samples again from the restored stream.
    """
    if isinstance(obj, ClassSampler):
        state = obj.state()

        def restore() -> None:
            prefetch = getattr(owner, "label_prefetch", None)
            if prefetch is not None and prefetch.waiting:
                prefetch.redraw(state)
            else:
                obj.load_state(state)

        return restore
    step = obj._step  # the host copy of the draw counter (its device buffer: BufferSnapshot)
    return lambda: setattr(obj, "_step", step)
