"""The label path run one step ahead on gloo ranks against the same head run inline.

The inline head (no :class:`LabelPrefetch`) is today's reference: gather, check and sample
inside the forward. The prefetching head gets each step's labels one step early, as the
trainer hands them, and must keep the same classes, the same loss, and the same sampling
stream of record at every step (what a checkpoint saves), including a sample still waiting.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dist_face.dist import comm
from dist_face.heads import PartialFC
from dist_face.heads.sharded.label_path import LabelPrefetch
from tests.helpers.distributed import run_distributed

C, D, B, STEPS = 29, 8, 4, 6
SEED = 3


def _steps(rank: int, world_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(100 + rank)
    return [
        (torch.randn(B, D, generator=gen), torch.randint(0, C, (B,), generator=gen))
        for _ in range(STEPS)
    ]


def _inline(rank: int, world_size: int) -> dict[str, Any]:
    head = PartialFC(D, C, "arcface", 0.3, seed=SEED)
    out: dict[str, Any] = {"sampled": [], "loss": [], "state": []}
    for x, y in _steps(rank, world_size):
        out["loss"].append(head(x, y).detach())
        out["sampled"].append(head.last_sampled)
        out["state"].append(head.sampler.state())
    return out


def _ahead(rank: int, world_size: int) -> dict[str, Any]:
    head = PartialFC(D, C, "arcface", 0.3, seed=SEED)
    group = comm.label_group(None)
    prefetch = LabelPrefetch(head, group).attach()
    steps = _steps(rank, world_size)
    out: dict[str, Any] = {"sampled": [], "loss": [], "state": [], "waiting": []}
    prefetch.submit(steps[0][1])
    for t, (x, y) in enumerate(steps):
        if t + 1 < len(steps):  # the trainer pulls step t + 1 before it runs step t
            prefetch.submit(steps[t + 1][1])
        out["loss"].append(head(x, y).detach())
        out["sampled"].append(head.last_sampled)
        out["waiting"].append(prefetch.waiting)
        out["state"].append(head.sampler.state())  # a checkpoint here: a sample waits
    # a run stopped with a step pulled ahead: the stream returns to before its draw
    prefetch.submit(steps[0][1])
    prefetch.close()
    out["closed_state"] = head.sampler.generator.get_state()
    out["detached"] = head.label_prefetch is None
    out["own_group"] = group is not None and group != comm.control_group(None)
    return out


def _out_of_range(rank: int, world_size: int) -> str:
    head = PartialFC(D, C, "arcface", 0.3, seed=SEED)
    prefetch = LabelPrefetch(head, comm.label_group(None)).attach()
    x, y = _steps(rank, world_size)[0]
    if rank == world_size - 1:
        y = y.clone()
        y[1] = C + 7
    prefetch.submit(y)
    try:
        head(x, y)
    except ValueError as exc:
        return str(exc)
    finally:
        prefetch.close()
    return "no error"


@pytest.mark.parametrize("world_size", [2, 3])
def test_prefetched_labels_sample_and_save_as_inline(world_size: int) -> None:
    inline = run_distributed(_inline, world_size, timeout=120)
    ahead = run_distributed(_ahead, world_size, timeout=120)
    for r, (ref, got) in enumerate(zip(inline, ahead, strict=True)):
        for t in range(STEPS):
            assert torch.equal(got["sampled"][t], ref["sampled"][t]), (r, t)
            assert torch.equal(got["loss"][t], ref["loss"][t]), (r, t)
            # the stream of record is the inline one although step t + 1's sample is drawn
            assert torch.equal(got["state"][t], ref["state"][t]), (r, t)
        assert got["waiting"] == [1] * (STEPS - 1) + [0]
        assert torch.equal(got["closed_state"], ref["state"][-1])
        assert got["detached"] and got["own_group"]
    # the sample really is drawn: not every class is kept, and ranks differ
    assert inline[0]["sampled"][0].numel() < C


def test_a_label_out_of_range_is_one_line_on_every_rank() -> None:
    said = run_distributed(_out_of_range, 2, timeout=120)
    assert said == [f"labels: value {C + 7} (rank 1, row 1) is outside [0, {C})"] * 2
