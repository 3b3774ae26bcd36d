"""TensorBoard sink: every logged scalar as a TensorBoard scalar (extra ``tensorboard``).

Written by rank 0 only, into ``<run dir>/tensorboard``; the tag is the metric name
(``train/loss``, ``eval/val/accuracy`` …) and the x axis the optimizer step. Watch a run with
``tensorboard --logdir runs``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dist_face.metrics.sinks import Sink


class TensorBoardSink(Sink):
    """Writes scalars with ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: event-file directory (created).
        flush_secs: how often the writer flushes to disk, in seconds.

    Raises:
        ImportError: the ``tensorboard`` package is missing; the message says which extra to
            install.
    """

    def __init__(self, log_dir: str | os.PathLike[str], flush_secs: int = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "metrics.tensorboard=true needs the tensorboard package: "
                "pip install 'dist_face[tensorboard]'"
            ) from exc
        self._writer = SummaryWriter(log_dir=str(log_dir), flush_secs=flush_secs)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Add every numeric value as a scalar at ``step``."""
        for name, value in metrics.items():
            if isinstance(value, int | float):
                self._writer.add_scalar(name, float(value), global_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
