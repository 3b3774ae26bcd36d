"""Make a gloo default group behave, for placement checks, like an NCCL one.

``pretend_nccl()`` reports the default group's backend as ``nccl`` and makes every collective
on it refuse a tensor that is not on a CUDA device, with the error NCCL gives. Groups created
afterwards (a gloo control group) keep their real backend and rules. On a machine without a
GPU this exposes exactly the placements that would fail on a GPU cluster.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

_COLLECTIVES = (
    "all_reduce",
    "broadcast",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
)


@contextlib.contextmanager
def pretend_nccl() -> Iterator[list[tuple[str, str, str]]]:
    """Within the block the default group is ``nccl``; yields a log of (op, backend, device)."""
    real_backend = dist.get_backend
    originals = {name: getattr(dist, name) for name in _COLLECTIVES}
    log: list[tuple[str, str, str]] = []

    def backend(group=None) -> str:
        if group is None or group is dist.group.WORLD:
            return "nccl"
        return real_backend(group)

    def checked(name):
        real = originals[name]

        def call(*args, **kwargs):
            group = kwargs.get("group")
            tensors = [a for a in args if torch.is_tensor(a)]
            tensors += [t for a in args if isinstance(a, list) for t in a if torch.is_tensor(t)]
            b = str(backend(group))
            for t in tensors:
                log.append((name, b, t.device.type))
                if b == "nccl" and t.device.type != "cuda":
                    raise RuntimeError(
                        f"No backend type associated with device type {t.device.type}"
                    )
            return real(*args, **kwargs)

        return call

    dist.get_backend = backend
    for name in _COLLECTIVES:
        setattr(dist, name, checked(name))
    try:
        yield log
    finally:
        dist.get_backend = real_backend
        for name, fn in originals.items():
            setattr(dist, name, fn)
