"""A real SIGTERM during a real evaluation: the evaluation gives way at a batch boundary and
the run stops with its checkpoint (exit 75), instead of finishing the evaluation first."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from pathlib import Path

import pytest

from dist_face.checkpoint import latest_checkpoint, read_manifest
from dist_face.train.signals import EXIT_PREEMPTED
from tests.unit.test_preflight import run_main  # noqa: F401 (fixture)


class _SignalWhenEvaluating(logging.Handler):
    """Sends SIGTERM to this process shortly after the evaluation of step ``at`` begins."""

    def __init__(self, at: int) -> None:
        super().__init__(logging.INFO)
        self.at = at
        self.timer: threading.Timer | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(f"evaluating step {self.at} ") and self.timer is None:
            self.timer = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
            self.timer.start()


@pytest.mark.timeout(300)
def test_sigterm_during_evaluation_stops_at_a_batch_boundary(
    run_main,  # noqa: F811
    small_dataset: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    trigger = _SignalWhenEvaluating(at=2)
    logging.getLogger().addHandler(trigger)
    try:
        code, errors = run_main(
            f"--data.root={small_dataset}/shards",
            f"--eval.targets=[{small_dataset}/val.bin]",
            "--eval.every=2",
            "--eval.batch_size=1",  # 600 images, one batch each: the signal lands mid-way
            f"--output_root={tmp_path}",
            "--name=r",
            "--train.max_steps=6",
            "--train.log_every=1",
            "--data.num_workers=0",
            "--data.batch_size=16",
            "--checkpoint.every=0",
        )
    finally:
        logging.getLogger().removeHandler(trigger)
    assert trigger.timer is not None  # the evaluation of step 2 began
    assert (code, errors) == (EXIT_PREEMPTED, [])
    lines = [r.getMessage() for r in caplog.records]
    said = [m for m in lines if "interrupted by SIGTERM" in m]
    assert len(said) == 1, lines
    done, total = map(int, re.search(r"after (\d+) of (\d+) images", said[0]).groups())
    # the 300 pairs' distinct images (each is embedded once), cut short at a batch boundary
    distinct = [m for m in lines if "pairs of" in m and "distinct images" in m]
    assert distinct and f"300 pairs of {total} distinct images" in distinct[0], distinct
    assert 0 < done < total, said
    stopped = [m for m in lines if m.startswith("stopped by SIGTERM at step 2 ")]
    assert stopped, lines
    ckpt = latest_checkpoint(tmp_path / "r")  # the stop's checkpoint, and it verifies
    assert ckpt is not None and read_manifest(ckpt).step == 2
    assert not (tmp_path / "r" / "eval.json").exists()  # nothing of the interrupted one
