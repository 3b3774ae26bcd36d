"""The torch loader: equal batches per rank, every record once per epoch, resume, corruption."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_face.config import ConfigError, DataConfig
from dist_face.data.framing import CorruptRecordError
from dist_face.data.loader import build_loader
from dist_face.data.shards import ShardSet
from dist_face.dist import Topology

N, C, B = 60, 7, 4  # 60 records of 7 classes; batches of 4


@pytest.fixture
def shards(color_shards: Path) -> Path:
    return color_shards


def _source(root: Path, rank: int, world: int, **kw: object):
    cfg = DataConfig(
        **{"root": str(root), "backend": "torch", "batch_size": B, "num_workers": 0, **kw}
    )
    topo = Topology(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    return build_loader(cfg, topo, torch.device("cpu"), seed=3)


def _ids(batches) -> list[int]:
    out = []
    for images, labels in batches:
        assert images.shape == (B, 3, 112, 112) and images.dtype == torch.float32
        assert labels.dtype == torch.int64
        assert images.min() >= -1 and images.max() <= 1
        pixel = ((images[:, 0, 0, 0] + 1) * 127.5).round().long()
        assert torch.equal(labels, pixel % C)  # labels come with their own images
        out += pixel.tolist()
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("workers", [0, 2])
def test_every_record_once_per_epoch_on_equal_batches(
    shards: Path, world: int, workers: int
) -> None:
    per_rank = []
    for rank in range(world):
        src = _source(shards, rank, world, num_workers=workers)
        per_rank.append(_ids(src.epoch(0)))
    assert len({len(ids) for ids in per_rank}) == 1  # identical batch counts on every rank
    seen = sorted(i for ids in per_rank for i in ids)
    spr = -(-N // world)  # padded to ceil(N / W) samples per rank
    full = spr // B * B  # only full batches are yielded
    assert len(per_rank[0]) == full
    if full * world >= N:  # nothing left in a partial batch: all records, padding repeats some
        assert set(seen) == set(range(N)) and len(seen) == full * world
    else:
        assert len(set(seen)) == len(seen)
    again = [_ids(_source(shards, 0, world, num_workers=workers).epoch(0))]
    assert again[0] == per_rank[0]  # deterministic from (seed, epoch)
    assert _ids(_source(shards, 0, world).epoch(1)) != per_rank[0]  # a new order next epoch


def test_drop_last_gives_floor(shards: Path) -> None:
    src = _source(shards, 0, 7, drop_last=True)
    assert src.samples_per_rank == N // 7 and src.batches_per_epoch == (N // 7) // B


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_with_unseen_records(shards: Path, workers: int) -> None:
    whole = _ids(_source(shards, 1, 2, num_workers=workers).epoch(0))
    for consumed in (B, 3 * B):
        rest = _ids(_source(shards, 1, 2, num_workers=workers).epoch(0, offset=consumed))
        assert rest == whole[consumed:]


def _corrupt_one(shards: Path, tmp_path: Path) -> tuple[Path, int, int]:
    import shutil

    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    s = ShardSet.open(copy)
    i = 5
    pixel_id = int(np.asarray(Image.open(io.BytesIO(s.read_image(i)[0])))[0, 0, 0])
    rec = Path(s.rec_path(int(s.shard_ids[i])))
    data = bytearray(rec.read_bytes())
    start = int(s.offsets[i]) + 8 + 24  # past the record and image headers
    data[start : start + 16] = b"\x00" * 16  # the PNG signature is gone
    rec.write_bytes(bytes(data))
    return copy, int(s.keys[i]), pixel_id


def test_corrupt_record_is_skipped_and_counted(shards: Path, tmp_path: Path) -> None:
    copy, _, bad = _corrupt_one(shards, tmp_path)
    src = _source(copy, 0, 1)
    ids = _ids(src.epoch(0))
    assert len(ids) == (N // B) * B and src.corrupt_records == 1  # still full batches
    assert bad not in ids


def test_corrupt_record_fails_when_configured(shards: Path, tmp_path: Path) -> None:
    copy, key, _ = _corrupt_one(shards, tmp_path)
    with pytest.raises(CorruptRecordError, match=rf"key {key}") as err:
        _ids(_source(copy, 0, 1, on_corrupt="fail").epoch(0))
    assert err.value.path.endswith(".rec") and err.value.offset is not None


def test_synthetic_source_and_config_errors(shards: Path) -> None:
    cfg = DataConfig(root="synthetic", num_classes=10, batch_size=B, synthetic_samples=40)
    src = build_loader(cfg, Topology(), torch.device("cpu"), seed=0)
    batches = list(src.epoch(0))
    assert len(batches) == 10 and batches[0][0].shape == (B, 3, 112, 112)
    with pytest.raises(ConfigError, match=r"data\.num_classes"):
        build_loader(DataConfig(root="synthetic"), Topology(), torch.device("cpu"), seed=0)
    with pytest.raises(ConfigError, match=r"data\.root"):
        build_loader(DataConfig(root="/nonexistent"), Topology(), torch.device("cpu"), seed=0)
    with pytest.raises(ConfigError, match=r"data\.num_classes: 3, but"):
        _source(shards, 0, 1, num_classes=3)
    with pytest.raises(ConfigError, match=r"data\.batch_size"):
        _source(shards, 0, 1, batch_size=100)


def test_decoded_pixels_match_pillow(shards: Path) -> None:
    src = _source(shards, 0, 1, hflip=False)
    s = ShardSet.open(shards)
    images, _ = next(iter(src.epoch(0)))
    first = int(((images[0, 0, 0, 0] + 1) * 127.5).round())
    i = next(
        j
        for j in range(N)
        if np.asarray(Image.open(io.BytesIO(s.read_image(j)[0])))[0, 0, 0] == first
    )
    expected = np.asarray(Image.open(io.BytesIO(s.read_image(i)[0])).convert("RGB"))
    got = ((images[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("workers", [0, 2])
def test_closing_an_epoch_early_joins_its_prefetch_thread(shards: Path, workers: int) -> None:
    """A prefetch thread left running aborts the process at interpreter exit."""
    import threading

    def prefetchers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "dist_face-prefetch"]

    before = len(prefetchers())
    batches = _source(shards, 0, 1, num_workers=workers, prefetch=1).epoch(0)
    next(batches)  # the thread now blocks on a full queue
    assert len(prefetchers()) == before + 1
    batches.close()
    assert len(prefetchers()) == before
