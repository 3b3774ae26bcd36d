"""One logging set-up for every entry point: stdlib logging, lines prefixed with the rank."""

from __future__ import annotations

import logging
import sys

_FORMAT = "[rank{rank}] %(asctime)s %(levelname)s %(name)s: %(message)s"


def init_logging(rank: int = 0, level: int | str = logging.INFO) -> None:
    """Configure the root logger to write ``[rankN] time LEVEL logger: message`` to stderr.

    All ranks log; filter on the launcher side (``torchrun --local-ranks-filter 0``) when one
    rank's lines are enough. Calling it again replaces the previous set-up.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_FORMAT.format(rank=rank), datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
