"""Scratch tensors reused from block to block and step to step.

A fresh ``[chunk, D]`` tensor per block costs, on the CPU, page faults that take longer than the
copy into it (glibc hands large blocks back to the system when they are freed): gathering
16,384 rows of 512 floats takes 27 ms into a new tensor and 12 ms into a reused one. CUDA's
caching allocator already reuses memory; there a workspace is merely harmless.
"""

from __future__ import annotations

import math

import torch


class Workspace:
    """Named scratch buffers; a name holds one live block at a time."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        """A ``shape`` view of buffer ``name`` (uninitialised), grown when too small."""
        size = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < size or buf.dtype != dtype or buf.device != device:
            buf = self._buffers[name] = torch.empty(size, dtype=dtype, device=device)
        return buf[:size].view(shape)

    def gather(
        self, name: str, src: torch.Tensor, rows: slice | torch.Tensor, dtype
    ) -> torch.Tensor:
        """Rows of ``src`` in ``dtype``: a view when no copy is needed, else a buffer."""
        if isinstance(rows, slice) and src.dtype == dtype:
            return src.detach()[rows]
        count = len(range(*rows.indices(src.shape[0]))) if isinstance(rows, slice) else len(rows)
        out = self.get(name, (count, *src.shape[1:]), dtype, src.device)
        if isinstance(rows, slice):
            return out.copy_(src.detach()[rows])
        if src.dtype == dtype:
            return torch.index_select(src.detach(), 0, rows, out=out)
        return out.copy_(src.detach().index_select(0, rows))
