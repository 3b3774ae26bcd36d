"""The largest tensor an operation allocates while a block of code runs."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestOutput(TorchDispatchMode):
    """Records ``largest = (numel, op)`` of any operation's output tensor.

    Views, in-place operations and ``out=`` calls are left out: they write into, or look at,
    memory that exists already.
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = (0, "")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name.endswith("_") or func.is_view or "out" in (kwargs or {}):
            return out
        for t in out if isinstance(out, tuple | list) else [out]:
            if torch.is_tensor(t) and t.numel() > self.largest[0]:
                self.largest = (t.numel(), name)
        return out
