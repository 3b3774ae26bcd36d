"""One logging set-up for every entry point: stdlib logging; a training rank prefixes its lines."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def init_logging(rank: int | None = None, level: int | str = logging.INFO) -> None:
    """Configure the root logger to write ``[rankN] time LEVEL logger: message`` to stderr.

    Args:
        rank: The training rank whose lines these are; None (single-process tools) writes no
            ``[rankN]`` prefix.
        level: Lowest level written.

    All ranks log; filter on the launcher side (``torchrun --local-ranks-filter 0``) when one
    rank's lines are enough. Calling it again replaces the previous set-up.
    """
    handler = logging.StreamHandler(sys.stderr)
    prefix = "" if rank is None else f"[rank{rank}] "
    handler.setFormatter(logging.Formatter(prefix + _FORMAT, datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
