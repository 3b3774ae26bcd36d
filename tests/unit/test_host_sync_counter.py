"""The host-sync counter sees what it must, and nothing else (a test that cannot fail is none)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.host_syncs import HostSyncCounter

pytestmark = pytest.mark.unit


def test_counts_every_listed_sync() -> None:
    x = torch.tensor([0.5, 2.0, 3.0])
    with HostSyncCounter() as counter:
        torch.nonzero(x > 1)
        x.unique()
        x.item() if x.numel() == 1 else x[0].item()
        bool(x[0] > 0)
        x.tolist()
        x.cpu()
        x.numpy()
        torch.masked_select(x, x > 1)
        int(x[0])
        float(x[0])
        [1, 2][x.long()[0]]
        torch.bincount(x.long())
        torch.argwhere(x > 1)
        torch.where(x > 1)
        torch.repeat_interleave(x, torch.tensor([1, 2, 1]))
        x[x > 1]
        x[x > 1] = 0.0
    assert set(counter.counts) == {
        "nonzero",
        "unique",
        "item",
        "__bool__",
        "tolist",
        "cpu",
        "numpy",
        "masked_select",
        "__int__",
        "__float__",
        "__index__",
        "bincount",
        "argwhere",
        "where(cond)",
        "repeat_interleave",
        "__getitem__[bool mask]",
        "__setitem__[bool mask]",
    }


def test_sync_free_equivalents_are_not_counted() -> None:
    x = torch.tensor([0.5, 2.0, 3.0])
    with HostSyncCounter() as counter:
        torch.where(x > 1, x, 0.0)
        x.masked_fill(x > 1, 0.0)
        x.gather(0, torch.tensor([2, 0]))
        x[torch.tensor([0, 2])]
        torch.topk(x, 2)
        torch.repeat_interleave(x, torch.tensor([1, 2, 1]), output_size=4)
        torch._assert_async(x.sum() > 0)
    assert not counter.counts
