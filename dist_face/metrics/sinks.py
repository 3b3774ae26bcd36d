"""Where metric values go. Every sink implements ``log(metrics, step)`` and ``close()``.

Metric names are namespaced with units where they have one: ``train/loss``,
``train/samples_per_s``, ``time/data_wait_share``, ``eval/val/accuracy``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path


class Sink:
    """Base sink: ignores everything (subclasses override what they need)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` (plain floats) at optimizer step ``step``."""

    def close(self) -> None:
        """Flush and release resources."""


class MultiSink(Sink):
    """Fans every call out to several sinks."""

    def __init__(self, sinks: Iterable[Sink]) -> None:
        """Wrap ``sinks``."""
        self.sinks = list(sinks)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Forward to every sink."""
        for sink in self.sinks:
            sink.log(metrics, step)

    def close(self) -> None:
        """Close every sink."""
        for sink in self.sinks:
            sink.close()


class InMemorySink(Sink):
    """Keeps every record as ``(step, metrics)``; for tests and notebooks."""

    def __init__(self) -> None:
        """Start empty."""
        self.records: list[tuple[int, dict[str, float]]] = []

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Append a copy of ``metrics``."""
        self.records.append((step, dict(metrics)))

    def series(self, name: str) -> list[tuple[int, float]]:
        """``(step, value)`` of one metric, in logging order."""
        return [(s, m[name]) for s, m in self.records if name in m]


class JsonlSink(Sink):
    """Appends one JSON object per call to a file (``{"step": …, "time": …, **metrics}``)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open ``path`` for appending (parents are created)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", buffering=1)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Write one line."""
        self._file.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")

    def close(self) -> None:
        """Close the file."""
        self._file.close()


class ConsoleSink(Sink):
    """One human-readable line per training log step; evaluation results on their own line."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        """Log through ``logger`` (default ``dist_face.train``)."""
        self.logger = logger or logging.getLogger("dist_face.train")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Format the known keys; other keys are ignored here."""
        m = metrics
        if "train/loss" in m:
            # unweighted parts of a head with auxiliary losses: "(head 25.4 center 32.4)"
            parts = " ".join(
                f"{k[11:]} {v:.4g}" for k, v in m.items() if k.startswith("train/loss/")
            )
            self.logger.info(
                "step %d/%d epoch %d | %.1f samples/s (rank min %.1f max %.1f) | loss %.4f%s | "
                "lr %.5f | scale %g | skipped %d | corrupt %d | data wait %.1f%% | eta %s",
                step,
                m.get("progress/total_steps", 0),
                m.get("progress/epoch", 0),
                m.get("train/samples_per_s", 0.0),
                m.get("train/rank_samples_per_s_min", 0.0),
                m.get("train/rank_samples_per_s_max", 0.0),
                m["train/loss"],
                f" ({parts})" if parts else "",
                m.get("train/lr", 0),
                m.get("train/loss_scale", 1.0),
                m.get("train/skipped_steps", 0),
                m.get("data/corrupt_records", 0),  # sum over ranks
                100.0 * m.get("time/data_wait_share", 0.0),
                _eta(m.get("progress/eta_s", 0.0)),
            )
        evals = {k: v for k, v in m.items() if k.startswith("eval/")}
        if evals:
            text = " ".join(f"{k[5:]}={v:.4f}" for k, v in sorted(evals.items()))
            self.logger.info("step %d evaluation: %s", step, text)


def _eta(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
