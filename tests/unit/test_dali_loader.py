"""The DALI backend on the CPU: equal batches, coverage, determinism, exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_face.config import ConfigError, DataConfig
from dist_face.data.loading.loader import build_loader
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
    assert _ids(_source(color_shards, 0, 2).epoch(0, 2 * 2 * B)) == whole[2 * B :]


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

    from dist_face.data.format.shards import ShardSet, relabel

    copy = tmp_path / "relabelled"
    shutil.copytree(color_shards, copy)
    relabel(copy, ShardSet.open(copy).labels, C)
    with pytest.raises(ConfigError, match=r"data\.backend: dali reads labels"):
        _source(copy, 0, 1)


def test_combined_index_shifts_each_shard_by_the_earlier_rec_files(
    color_shards: Path, tmp_path: Path
) -> None:
    from dist_face.data.format.shards import ShardSet
    from dist_face.data.loading.dali_loader import combined_index

    shards = ShardSet.open(color_shards)
    expected, base = [], 0
    for s in range(shards.num_shards):  # reference: the shards' own .idx files
        with open(shards.idx_path(s)) as f:
            expected += [base + int(line.split("\t")[1]) for line in f if line.strip()]
        base += Path(shards.rec_path(s)).stat().st_size
    path = combined_index(shards, tmp_path / "cache")
    assert path.parent == tmp_path / "cache"  # never inside the dataset
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert [int(k) for k, _ in rows] == list(range(N))
    assert [int(off) for _, off in rows] == expected


def test_combined_index_refuses_records_out_of_file_order(
    color_shards: Path, tmp_path: Path
) -> None:
    from dist_face.data.format.shards import ShardSet
    from dist_face.data.loading.dali_loader import combined_index

    shards = ShardSet.open(color_shards)
    rows = (shards.shard_ids == 1).nonzero()[0]
    shards.offsets = shards.offsets.copy()
    shards.offsets[rows[[2, 3]]] = shards.offsets[rows[[3, 2]]]
    with pytest.raises(ValueError, match=r"manifest\.parquet: row \d+ \(shard 1, key"):
        combined_index(shards, tmp_path)


def test_dali_warns_that_it_cannot_skip_and_needs_the_package(
    color_shards: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level("WARNING", logger="dist_face.data.loading.loader"):
        _source(color_shards, 0, 1, on_corrupt="skip")
    assert "cannot skip undecodable records" in caplog.text
    assert "tools/verify.py" in caplog.text
    monkeypatch.setattr("dist_face.data.loading.dali_loader.dali_available", lambda: False)
    with pytest.raises(ConfigError, match=r"data\.backend: dali needs nvidia-dali"):
        _source(color_shards, 0, 1)


def test_both_backends_deliver_the_same_channels_last_layout(color_shards: Path) -> None:
    layouts = []
    for backend in ("dali", "torch"):
        images, labels = next(iter(_source(color_shards, 0, 1, backend).epoch(0)))
        assert images.is_contiguous(memory_format=torch.channels_last), backend
        layouts.append((images.shape, images.stride(), labels.dtype))
    assert layouts[0] == layouts[1]
