"""The hand-written differentiable all-gather against a single-process reference."""

from __future__ import annotations

import pytest
import torch

from dist_face.dist import all_gather_with_grad
from tests.helpers.distributed import run_distributed

B, D = 3, 5


def _inputs(world_size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(world_size * B, D, generator=gen, dtype=torch.float64)


def _weights(world_size: int) -> torch.Tensor:
    # a different linear functional per rank, so the backward sum is not symmetric
    gen = torch.Generator().manual_seed(11)
    return torch.randn(world_size, world_size * B, D, generator=gen, dtype=torch.float64)


def _gather_rank(rank: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = _inputs(world_size)[rank * B : (rank + 1) * B].clone().requires_grad_(True)
    gathered = all_gather_with_grad(x)
    # each rank's part of the objective L = sum_r <w_r, gathered>
    (gathered * _weights(world_size)[rank]).sum().backward()
    return gathered.detach(), x.grad


@pytest.mark.parametrize("world_size", [2, 3])
def test_all_gather_forward_and_grad_match_reference(world_size: int) -> None:
    x = _inputs(world_size).requires_grad_(True)
    (x.unsqueeze(0) * _weights(world_size)).sum().backward()  # reference: L on one process
    for _ in range(20):  # 20 clean launches in a row: no rank may die at exit
        outs = run_distributed(_gather_rank, world_size)
        for rank, (gathered, grad) in enumerate(outs):
            torch.testing.assert_close(gathered, x.detach(), rtol=0, atol=0)
            torch.testing.assert_close(grad, x.grad[rank * B : (rank + 1) * B], rtol=1e-12, atol=0)


def test_all_gather_is_identity_without_process_group() -> None:
    x = torch.randn(4, 2, requires_grad=True)
    y = all_gather_with_grad(x)
    assert y is x
