"""A rank that waits for a stop signal: ``python -m tests.helpers.wait_for_signal DIR``.

Installs the trainer's :class:`~dist_face.train.signals.StopSignals`, writes ``DIR/ready-<rank>``,
and once a signal arrived writes its name to ``DIR/got-<rank>`` and exits 75 as the trainer does.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from dist_face.train.signals import EXIT_PREEMPTED, StopSignals

if __name__ == "__main__":
    out, rank = Path(sys.argv[1]), os.environ["RANK"]
    signals = StopSignals()
    signals.install()
    (out / f"ready-{rank}").touch()
    deadline = time.monotonic() + 60
    while not signals.received and time.monotonic() < deadline:
        time.sleep(0.05)
    (out / f"got-{rank}").write_text(
        signal.Signals(signals.received).name if signals.received else ""
    )
    sys.exit(EXIT_PREEMPTED)
