"""The DALI backend on the CPU: equal batches, coverage, determinism, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_face.config import ConfigError, DataConfig
from dist_face.data.loader import build_loader
from dist_face.dist import Topology

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (extra 'dali')")

N, C, B = 60, 7, 4


def _source(root: Path, rank: int, world: int, backend: str = "dali", **kw: object):
    cfg = DataConfig(
        **{"root": str(root), "backend": backend, "batch_size": B, "num_workers": 1, **kw}
    )
    topo = Topology(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    return build_loader(cfg, topo, torch.device("cpu"), seed=3)


def _ids(batches) -> list[int]:
    out = []
    for images, labels in batches:
        assert images.shape == (B, 3, 112, 112) and images.dtype == torch.float32
        assert labels.shape == (B,) and labels.dtype == torch.int64
        pixel = ((images[:, 0, 0, 0] + 1) * 127.5).round().long()
        assert torch.equal(labels, pixel % C)  # labels travel with their images
        out += pixel.tolist()
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_equal_batches_and_no_duplicates(color_shards: Path, world: int) -> None:
    per_rank = [_ids(_source(color_shards, r, world).epoch(0)) for r in range(world)]
    expected = (N // world) // B
    assert [len(ids) for ids in per_rank] == [expected * B] * world
    seen = [i for ids in per_rank for i in ids]
    assert len(set(seen)) == len(seen)
    # at most W·(B−1) + W records wait for a later epoch (partial batches, uneven pieces)
    assert N - len(seen) <= world * (B - 1) + world


def test_order_is_a_function_of_seed_and_epoch(color_shards: Path) -> None:
    first = _ids(_source(color_shards, 1, 2).epoch(0))
    assert _ids(_source(color_shards, 1, 2).epoch(0)) == first
    assert _ids(_source(color_shards, 1, 2).epoch(1)) != first


def test_resume_skips_exactly_the_consumed_batches(color_shards: Path) -> None:
    whole = _ids(_source(color_shards, 0, 2).epoch(0))
    assert _ids(_source(color_shards, 0, 2).epoch(0, offset=2 * B)) == whole[2 * B :]


def test_pixels_match_the_torch_backend(color_shards: Path) -> None:
    dali_images, _ = next(iter(_source(color_shards, 0, 1, hflip=False).epoch(0)))
    by_id = {}
    for images, _ in _source(color_shards, 0, 1, "torch", hflip=False).epoch(0):
        for x in images:
            by_id[int(((x[0, 0, 0] + 1) * 127.5).round())] = x
    ids = ((dali_images[:, 0, 0, 0] + 1) * 127.5).round().long().tolist()
    compared = [i for i in ids if i in by_id]
    assert len(compared) >= B - 1  # the torch epoch holds all but < B records
    for i, image in zip(ids, dali_images):
        if i in by_id:
            # PNG decodes exactly in both; the [-1, 1] scaling may differ by a float ulp
            def pixels(t: torch.Tensor) -> torch.Tensor:
                return ((t + 1) * 127.5).round().to(torch.uint8)

            assert torch.equal(pixels(image), pixels(by_id[i]))
            torch.testing.assert_close(image, by_id[i], rtol=0, atol=1e-6)


def test_auto_on_cpu_uses_torch_and_relabelled_sets_are_refused(
    color_shards: Path, tmp_path: Path
) -> None:
    assert _source(color_shards, 0, 1, "auto").backend == "torch"
    import shutil

    from dist_face.data.shards import ShardSet, relabel

    copy = tmp_path / "relabelled"
    shutil.copytree(color_shards, copy)
    relabel(copy, ShardSet.open(copy).labels, C)
    with pytest.raises(ConfigError, match=r"data\.backend: dali reads labels"):
        _source(copy, 0, 1)
