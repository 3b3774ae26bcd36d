"""The oldest torch this package runs on, checked at start-up.

The head's low-precision GEMMs write float32 products straight from bf16/fp16 inputs with
``torch.mm(a, b, out_dtype=torch.float32)`` (:mod:`dist_face.heads.sharded.kernels`). That overload
(aten ``mm.dtype``, with ``bmm``/``addmm``/``baddbmm``) came with pytorch/pytorch#150812
(April 2025, after the 2.7 branch cut) and is first in torch 2.8's documentation of
``torch.mm``; older torch raises a TypeError mid-step. pyproject.toml declares the same floor.
"""

from __future__ import annotations

import importlib.metadata
import re

from dist_face.config import ConfigError

TORCH_FLOOR = (2, 8)
"""(major, minor) of the oldest torch with ``torch.mm(..., out_dtype=)``."""


def installed_torch() -> str:
    """The installed torch distribution's version (torch's own ``__version__`` if no record)."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        import torch

        return torch.__version__


def check_torch_version(installed: str | None = None) -> None:
    """Refuse a torch older than :data:`TORCH_FLOOR`.

    Args:
        installed: the version string to check (default: :func:`installed_torch`).

    Raises:
        ConfigError: one line naming the version found and the one needed.
    """
    installed = installed_torch() if installed is None else installed
    found = re.match(r"(\d+)\.(\d+)", installed)
    if found is None or (int(found[1]), int(found[2])) < TORCH_FLOOR:
        major, minor = TORCH_FLOOR
        raise ConfigError(
            f"torch {installed} is installed; dist_face needs torch>={major}.{minor} "
            "(torch.mm(..., out_dtype=) of the head's bf16/fp16 GEMMs)"
        )
