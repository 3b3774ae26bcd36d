"""Partial FC sampling: Partial FC's size from host labels, and every positive always kept."""

from __future__ import annotations

import pytest
import torch

from dist_face.heads.sharded.sampling import num_sampled, sample_classes, sample_size

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("num_local", "budget"), [(50, 10), (50, 2), (6, 1), (7, 0)])
def test_size_is_partial_fc_rule_and_positives_are_kept(num_local: int, budget: int) -> None:
    gen = torch.Generator().manual_seed(1)
    n = 12
    for trial in range(30):
        g = torch.Generator().manual_seed(trial)
        owned = torch.rand(n, generator=g) < 0.7
        local = torch.where(owned, torch.randint(0, num_local, (n,), generator=g), -1)
        index, labels = sample_classes(local, num_local, budget, gen)
        positives = len(local[owned].unique())
        assert index.shape == (min(num_local, max(budget, positives)),)
        assert torch.equal(index, index.unique())  # sorted, distinct
        assert torch.equal(index[labels[owned]], local[owned])  # positives kept, remapped
        assert (labels[~owned] == -1).all()


def test_labels_on_another_device_are_never_read() -> None:
    """Device labels (here meta: no values at all) get the shape bound min(N, num_local)."""
    local = torch.empty(12, dtype=torch.long, device="meta")
    index, labels = sample_classes(local, 50, 5, torch.Generator().manual_seed(0))
    assert index.shape == (sample_size(50, 5, 12),) == (12,)
    assert labels.shape == (12,)


def test_rows_touched_at_partial_fc_scale() -> None:
    """N = 256, C = 4000, W = 2, r = 0.05: each rank keeps max(⌈r·C_local⌉, positives).

    The shape bound kept 256 rows per rank; the rule asks for 100, raised to the ~128
    positives of the rank, which must be within 1.25x of max(r·C_local, positives).
    """
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4000, (256,), generator=torch.Generator().manual_seed(3))
    for rank in range(2):
        local = labels - 2000 * rank
        local = torch.where((local >= 0) & (local < 2000), local, -1)
        budget = num_sampled(2000, 0.05)
        assert budget == 100
        index, _ = sample_classes(local, 2000, budget, gen)
        positives = len(local[local >= 0].unique())
        assert len(index) <= 1.25 * max(0.05 * 2000, positives)
        assert len(index) == max(100, positives) < 150


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
