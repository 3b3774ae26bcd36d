"""Hundreds of epoch boundaries on 2 ranks: loader workers start every epoch, never hang.

Each epoch is one batch per rank, followed by a collective as in training, so a rank whose
new worker never starts would hold the other in the collective. ``data.timeout_s`` turns such
a stall into an error naming the rank, epoch and worker. The full count (``soak`` marker) is
300 boundaries per worker count, run with ``DIST_FACE_SOAK=1``; the default suite runs 10.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from dist_face.config import DataConfig
from dist_face.data.loading.loader import build_loader
from dist_face.dist import Topology, all_reduce
from tests.helpers.datasets import color_coded_shards
from tests.helpers.distributed import run_distributed

RECORDS, B = 16, 8  # 8 records per rank and epoch: one batch


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return color_coded_shards(tmp_path_factory.mktemp("tiny"), records=RECORDS, classes=4)


def _epochs(rank: int, world: int, root: str, workers: int, epochs: int) -> dict:
    cfg = DataConfig(
        root=root, backend="torch", batch_size=B, num_workers=workers, prefetch=1, timeout_s=60
    )
    source = build_loader(cfg, Topology.from_env(), torch.device("cpu"), seed=5)
    seen = torch.zeros(RECORDS, dtype=torch.long)
    start = time.perf_counter()
    for epoch in range(epochs):
        batches = source.epoch(epoch)
        try:
            for images, _ in batches:
                ids = ((images[:, 0, 0, 0] + 1) * 127.5).round().long()
                seen.index_add_(0, ids, torch.ones_like(ids))
                all_reduce(seen.clone())  # both ranks meet every epoch, as the head does
        finally:
            batches.close()
    all_reduce(seen)
    return {"seen": seen, "seconds": time.perf_counter() - start}


def _check(tiny_shards: Path, workers: int, epochs: int) -> None:
    # a stalled worker fails within data.timeout_s (60 s); this bound is only for slowness
    outs = run_distributed(_epochs, 2, str(tiny_shards), workers, epochs, timeout=3500)
    # every record exactly once per epoch over the two ranks: no epoch was cut short
    assert torch.equal(outs[0]["seen"], torch.full((RECORDS,), epochs))


@pytest.mark.timeout(900)
@pytest.mark.parametrize("workers", [1, 2])
def test_epoch_boundaries_subset(tiny_shards: Path, workers: int) -> None:
    _check(tiny_shards, workers, epochs=10)


@pytest.mark.soak
@pytest.mark.skipif(not os.environ.get("DIST_FACE_SOAK"), reason="set DIST_FACE_SOAK=1")
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("workers", [1, 2])
def test_300_epoch_boundaries(tiny_shards: Path, workers: int) -> None:
    _check(tiny_shards, workers, epochs=300)
