"""Cheap host-side readings of memory, for log steps, and the timing rule benchmarks share."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Callable

import torch


def memory_stats(device: torch.device) -> dict[str, float]:
    """Device memory (allocated, reserved) on CUDA; the process's resident set on the CPU.

    Returns:
        ``memory/device_allocated_bytes`` and ``memory/device_reserved_bytes`` on CUDA, else
        ``memory/rss_bytes`` (from /proc/self/statm where it exists).
    """
    if device.type == "cuda":
        return {
            "memory/device_allocated_bytes": float(torch.cuda.memory_allocated(device)),
            "memory/device_reserved_bytes": float(torch.cuda.memory_reserved(device)),
        }
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return {"memory/rss_bytes": float(pages * os.sysconf("SC_PAGE_SIZE"))}
    except (OSError, ValueError, IndexError):
        return {}


def rss_follows_live_memory() -> None:
    """Make the process's resident set follow its live CPU memory, for peak measurements.

    glibc keeps freed blocks resident in per-thread arenas and below a dynamic mmap threshold,
    which made the peak RSS of identical runs differ by ~80 MB. After this call every block of
    64 KiB or more is mapped and unmapped, in one arena. A no-op where there is no glibc.
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is None or not hasattr(libc, "mallopt"):
        return
    for option, value in ((-3, 1 << 16), (-1, 1 << 16), (-8, 1)):  # MMAP/TRIM_THRESHOLD, ARENA_MAX
        libc.mallopt(option, value)


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """Fastest of ``repeat`` wall-clock timings of ``fn()``, in seconds.

    Benchmarks report the minimum because noise on a shared machine only ever adds time.
    """
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
