"""Count the torch calls that make the host wait for the device, on any device.

On a GPU these block the CPU until the device has drained its queue: reading a value
(``item``, ``__bool__``, ``tolist``...), copying to the host, or an op whose output size
depends on the data (``nonzero``, ``unique``, boolean-mask indexing...). On a CPU they cost
nothing, which is why they slip in; a :class:`HostSyncCounter` makes them visible there.
"""

from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from dist_face.heads.sharded.sampling import in_host_work

# data-dependent output size, or a read of device memory by the host
_ALWAYS = {
    "nonzero",
    "argwhere",
    "unique",
    "unique_consecutive",
    "_unique",
    "_unique2",
    "masked_select",
    "bincount",
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__bool__",
    "__int__",
    "__float__",
    "__index__",
    "__complex__",
}


def _has_bool_mask(index: Any) -> bool:
    items = index if isinstance(index, tuple | list) else (index,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


def sync_name(func: Any, args: tuple, kwargs: dict) -> str | None:
    """The name under which ``func(*args, **kwargs)`` counts as a host sync, or None."""
    name = getattr(func, "__name__", "")
    if name in _ALWAYS:
        return name
    if name == "where" and len(args) + len(kwargs) == 1:
        return "where(cond)"
    if name == "repeat_interleave" and "output_size" not in kwargs:
        repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
        if torch.is_tensor(repeats) and repeats.numel() > 1:
            return "repeat_interleave"
    if name in ("__getitem__", "__setitem__") and len(args) > 1 and _has_bool_mask(args[1]):
        return f"{name}[bool mask]"
    if name in ("index_put_", "index_put", "index") and len(args) > 1:
        if _has_bool_mask(args[1]):
            return f"{name}[bool mask]"
    if name == "to" and args and torch.is_tensor(args[0]) and args[0].device.type != "cpu":
        target = args[1] if len(args) > 1 else kwargs.get("device")
        if str(target).startswith("cpu"):
            return "to(cpu)"
    return None


class HostSyncCounter(TorchFunctionMode):
    """Counts host-synchronising torch calls made while it is active (this thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.sites: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = sync_name(func, args, kwargs)
        if name is not None and not in_host_work():  # declared reads of host memory
            self.counts[name] += 1
            self.sites[f"{name} at {_caller()}"] += 1
        return func(*args, **kwargs)

    def reset(self) -> None:
        """Forget what was counted."""
        self.counts.clear()
        self.sites.clear()


def _caller() -> str:
    """The innermost frame outside torch and this module: the code that asked."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "/torch/" not in frame.filename and not frame.filename.endswith("host_syncs.py"):
            return f"{frame.filename.rsplit('/', 2)[-2:]!s}:{frame.lineno}"
    return "?"
