"""Real damage to a file on disk, as a failing disk, a full one or a careless copy leaves it."""

from __future__ import annotations

from pathlib import Path

DAMAGES = ("flip", "truncate", "empty")


def damage(path: Path, how: str) -> None:
    """Damage ``path`` in place.

    ``flip``: 8 bytes in the middle with every bit inverted; ``truncate``: cut to a third;
    ``empty``: 0 bytes.
    """
    data = bytearray(Path(path).read_bytes())
    if how == "flip":
        mid = len(data) // 2
        data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    elif how == "truncate":
        data = data[: len(data) // 3]
    elif how == "empty":
        data = bytearray()
    else:
        raise ValueError(f"unknown damage {how!r}; known: {', '.join(DAMAGES)}")
    Path(path).write_bytes(bytes(data))
