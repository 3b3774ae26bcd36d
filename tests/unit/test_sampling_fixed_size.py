"""Partial FC sampling: its size depends on shapes only, and every positive is always kept."""

from __future__ import annotations

import pytest
import torch

from dist_face.heads.sampling import sample_classes, sample_size

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("num_local", "budget"), [(50, 10), (50, 2), (6, 1), (7, 0)])
def test_size_is_fixed_by_shapes_and_positives_are_kept(num_local: int, budget: int) -> None:
    gen = torch.Generator().manual_seed(1)
    n = 12
    expected = min(num_local, max(budget, n))
    assert sample_size(num_local, budget, n) == expected
    for trial in range(30):
        g = torch.Generator().manual_seed(trial)
        owned = torch.rand(n, generator=g) < 0.7
        local = torch.where(owned, torch.randint(0, num_local, (n,), generator=g), -1)
        index, labels = sample_classes(local, num_local, budget, gen)
        assert index.shape == (expected,)  # never depends on how many positives there are
        assert torch.equal(index, index.unique())  # sorted, distinct
        assert torch.equal(index[labels[owned]], local[owned])  # positives kept, remapped
        assert (labels[~owned] == -1).all()


def test_negatives_are_uniform() -> None:
    """Each of the 40 negatives is drawn with probability (budget - positives) / 40."""
    gen = torch.Generator().manual_seed(0)
    local = torch.tensor([0, 1, -1, -1])  # 2 positives, budget 12 → 10 of 40 negatives kept
    counts = torch.zeros(42)
    for _ in range(2000):
        index, _ = sample_classes(local, 42, 12, gen)
        counts[index] += 1
    assert counts[0] == counts[1] == 2000
    freq = counts[2:] / 2000
    assert (freq - 0.25).abs().max() < 0.05
