"""Class-center initialisation independent of the world size, and Partial FC class sampling."""

from __future__ import annotations

import torch

_INIT_BLOCK = 4096  # rows drawn per generator; a row's value depends on (seed, class id) only


def init_class_centers(
    start: int, end: int, dim: int, seed: int, std: float = 0.01
) -> torch.Tensor:
    """Initial centers ``[end - start, D]`` (float32, ``N(0, std²)``) of classes ``[start, end)``.

    Classes are drawn in blocks of 4096 from a generator seeded by ``(seed, block)``, so the
    value of class ``j`` does not depend on how classes are split over ranks: a run on one
    device and a run on W ranks start from the same matrix, without any rank materialising it.
    """
    out = torch.empty((end - start, dim), dtype=torch.float32)
    block = start // _INIT_BLOCK
    while block * _INIT_BLOCK < end:
        lo, hi = block * _INIT_BLOCK, (block + 1) * _INIT_BLOCK
        gen = torch.Generator().manual_seed((seed * 1_000_003 + block) % (2**63))
        rows = torch.randn((_INIT_BLOCK, dim), generator=gen) * std
        a, b = max(lo, start), min(hi, end)
        out[a - start : b - start] = rows[a - lo : b - lo]
        block += 1
    return out


def sampler_seed(seed: int, rank: int, step: int = 0) -> int:
    """Seed of rank ``rank``'s sampling generator: distinct per rank, fixed per run.

    ``step`` > 0 restarts the stream at a resume on another world size (a new rank's state
    must not depend on which old rank's file it would otherwise have read).
    """
    return (seed * 1_000_003 + 7919 * (rank + 1) + 104_729 * step) % (2**63)


def num_sampled(num_local: int, sample_rate: float) -> int:
    """Class budget per rank and step, ``⌊r · num_local⌋`` (the positives count towards it)."""
    return int(sample_rate * num_local)


@torch.no_grad()
def sample_classes(
    local_labels: torch.Tensor, num_local: int, budget: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep every positive class plus uniform negatives up to ``budget`` classes.

    Args:
        local_labels: ``[N]`` int64, local class index of each row or ``-1`` (not on this rank).
        num_local: classes held by this rank.
        budget: classes to keep; if the positives alone exceed it, only they are kept.
        generator: CPU generator (the draw is identical on every device type).

    Returns:
        ``index`` ``[K]`` sorted local class ids kept, and ``labels`` ``[N]`` remapped to
        positions in ``index`` (``-1`` stays ``-1``).
    """
    device = local_labels.device
    owned = local_labels >= 0
    positives = torch.unique(local_labels[owned])  # sorted
    if positives.numel() >= budget:
        index = positives
    else:
        score = torch.rand(num_local, generator=generator).to(device)
        score[positives] = 2.0  # above any uniform draw: positives always win
        index = torch.topk(score, budget, sorted=False).indices.sort().values
    labels = torch.full_like(local_labels, -1)
    labels[owned] = torch.searchsorted(index, local_labels[owned])
    return index, labels
