"""An inf/NaN gradient on one rank's head slice makes every rank skip the step."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed import ReduceOp

from dist_face.dist import all_reduce
from dist_face.train.precision import LossScaler
from dist_face.train.step import optimizer_step
from tests.helpers.distributed import run_distributed


def _step(rank: int, world_size: int) -> tuple[float, list[float], int]:
    p = nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([p], lr=0.5, fused=True)
    scaler = LossScaler("bf16", torch.device("cpu"))
    for bad_rank in (1, -1):  # first step: rank 1 overflows; second: nobody does
        p.grad = torch.tensor([float("inf"), 1.0]) if rank == bad_rank else torch.ones(2)
        found = torch.zeros(())
        scaler.unscale([p.grad], found)  # the step's decision: this rank's flag, then MAX
        all_reduce(found, ReduceOp.MAX, None)
        scaler.skipped += found.to(torch.int64)
        optimizer_step(opt, found)
    return found.item(), p.detach().tolist(), int(scaler.skipped)


def test_every_rank_skips_together() -> None:
    for found, weights, skipped in run_distributed(_step, 3):
        assert found == 0.0 and skipped == 1
        assert weights == [0.5, 0.5]  # exactly one applied step on every rank
