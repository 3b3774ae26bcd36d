"""Rank 0 evaluating for longer than the process group's timeout does not kill the job.

The job's group has a 1 s timeout (``dist.timeout_s``); rank 0's evaluation takes about 2 s
(a backbone whose forward sleeps). The other rank waits at the evaluation barrier, which goes
over a gloo group with its own timeout (``eval.timeout_s``); afterwards both ranks still run a
collective on the job's group. A barrier on the job's group itself fails after 1 s.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from torch import nn

from dist_face.dist import Topology
from dist_face.metrics import InMemorySink
from dist_face.train.hooks import EvalHook, evaluation_group
from dist_face.train.loop import TrainState
from tests.helpers.distributed import run_distributed

pytestmark = pytest.mark.dist

SLEEP_S = 0.5  # per forward: 2 forwards (image and mirror) per batch, 2 batches


class SlowNet(nn.Module):
    """An embedding network that takes ``SLEEP_S`` per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLEEP_S)
        return self.fc(x.mean((2, 3)))


def _evaluate(rank: int, world: int, target: str, run_dir: str) -> tuple[float, float]:
    topology = Topology.from_env()
    hook = EvalHook(
        [target],
        1,
        SlowNet(),
        topology,
        InMemorySink(),
        Path(run_dir),
        batch_size=20,  # the 40 images of 20 pairs: two batches
        device=torch.device("cpu"),
        group=evaluation_group(60.0),
    )
    trainer = SimpleNamespace(state=TrainState(), pause_s=0.0)  # what the hook reads
    hook.before_train(trainer)
    start = time.perf_counter()
    hook.evaluate(trainer)
    waited = time.perf_counter() - start
    total = torch.ones(1)
    dist.all_reduce(total)  # the job's group survived
    return waited, float(total)


def test_a_long_evaluation_on_rank_0_does_not_kill_the_job(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    outs = run_distributed(
        _evaluate,
        2,
        str(tiny_dataset / "val.bin"),
        str(tmp_path),
        env={"DIST_FACE_TEST_PG_TIMEOUT_S": "1"},
        timeout=120,
    )
    for waited, total in outs:
        assert waited > 1.5 and total == 2.0  # longer than the group's timeout, and alive
    assert (tmp_path / "eval.json").exists()
