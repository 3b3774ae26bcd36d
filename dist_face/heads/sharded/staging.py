"""Host-to-device copies of the head's per-step index tensors, with no per-step host allocation.

The sampled class ids and remapped labels are computed on the host (they are known there
before the step). A copy from pageable memory makes the host wait for the device's queue, and
``pin_memory()`` on every step allocates page-locked memory each time (slow, and not allowed
while a CUDA graph is captured). A :class:`Staging` keeps a few pinned buffers, allocated once
and grown only when a step needs more, and hands them out in turn; a buffer is reused only
after the copy that last read it has run (an event recorded behind that copy), which with
several buffers in the ring is long done.
"""

from __future__ import annotations

import torch

DEPTH = 4
"""Pinned buffers in the ring: a buffer is rewritten ``DEPTH`` steps after its last copy."""


class Staging:
    """Ring of pinned host buffers for non-blocking copies to one device."""

    def __init__(self, depth: int = DEPTH) -> None:
        self.depth = depth
        self._buffers: list[torch.Tensor | None] = [None] * depth
        self._events: list[object | None] = [None] * depth
        self._next = 0

    def to_device(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``t`` (CPU) on ``device``; on the CPU or a non-CUDA device, ``t`` or a plain copy."""
        if device.type == "cpu":
            return t
        if device.type != "cuda":
            return t.to(device)
        slot = self._next
        self._next = (slot + 1) % self.depth
        buf = self._buffers[slot]
        flat = t.reshape(-1)
        if buf is None or buf.numel() < flat.numel() or buf.dtype != t.dtype:
            buf = torch.empty(max(flat.numel(), 1), dtype=t.dtype).pin_memory()
            self._buffers[slot] = buf
        elif self._events[slot] is not None:
            self._events[slot].synchronize()  # the copy DEPTH steps ago: finished by now
        host = buf[: flat.numel()]
        host.copy_(flat)
        out = host.to(device, non_blocking=True).view(t.shape)
        if self._events[slot] is None:
            self._events[slot] = torch.cuda.Event()
        self._events[slot].record()
        return out
