"""Crash-safe file writes: temporary name, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new entry in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to ``path`` so that a reader sees the old file or the whole new one.

    Raises:
        OSError, RuntimeError: the write failed (on a full disk ``torch.save`` raises
            ``RuntimeError``); the temporary file is removed and any previous file at ``path``
            is left intact.
    """
    return atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """``write(f)`` into a temporary file, fsync it and rename it ``path``; fsync the directory.

    Raises:
        Whatever ``write`` or the file system raised; the temporary file is removed and any
        previous file at ``path`` is left intact.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
