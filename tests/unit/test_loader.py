"""The torch loader: equal batches per rank, every record once per epoch, resume, corruption."""

from __future__ import annotations

import io
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_face.config import ConfigError, DataConfig
from dist_face.data.format.framing import CorruptRecordError
from dist_face.data.format.shards import ShardSet
from dist_face.data.loading.loader import DataTimeoutError, build_loader
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
    for per_rank in (B, 3 * B):  # the position is global: both ranks consumed per_rank each
        rest = _ids(_source(shards, 1, 2, num_workers=workers).epoch(0, 2 * per_rank))
        assert rest == whole[per_rank:]


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


def _images(batches) -> torch.Tensor:
    return torch.cat([images for images, _ in batches])


@pytest.mark.parametrize("workers", [0, 2])
def test_flips_and_augmentations_do_not_depend_on_the_resume_point(
    shards: Path, workers: int
) -> None:
    """Per-sample randomness comes from (seed, epoch, position), never from the offset."""
    augs = {"aug_downscale_p": 0.5, "aug_blur_p": 0.5, "aug_hsv_p": 0.5, "aug_gray_p": 0.3}
    whole = _images(_source(shards, 1, 2, num_workers=workers, **augs).epoch(2))
    for per_rank in (B, 3 * B):
        src = _source(shards, 1, 2, num_workers=workers, **augs)
        rest = _images(src.epoch(2, 2 * per_rank))
        assert torch.equal(rest, whole[per_rank:])
    # and not on the worker count that read them either
    assert torch.equal(_images(_source(shards, 1, 2, num_workers=1, **augs).epoch(2)), whole)


@pytest.mark.parametrize(("before", "after", "steps"), [(2, 3, 3), (3, 2, 1), (2, 3, 2)])
@pytest.mark.parametrize("workers", [0, 2])
def test_resize_mid_epoch_reads_every_record_once(
    shards: Path, before: int, after: int, steps: int, workers: int
) -> None:
    """Sample ids logged across a resize: the global position loses and repeats nothing."""
    seen: list[int] = []
    for rank in range(before):  # each old rank consumed `steps` batches before the stop
        seen += _ids(_source(shards, rank, before, num_workers=workers).epoch(0))[: steps * B]
    consumed = steps * B * before
    rest = [
        _ids(_source(shards, rank, after, num_workers=workers).epoch(0, consumed))
        for rank in range(after)
    ]
    left = -(-(N - consumed) // after) // B * B  # full batches of the padded rest per rank
    assert [len(ids) for ids in rest] == [left] * after
    everything = seen + [i for ids in rest for i in ids]
    assert len(everything) == len(set(everything))  # nothing seen twice
    # what is missing is only the partial last batch of each rank
    assert N - len(everything) == (N - consumed) - left * after
    if steps != 2:  # these resume points leave no partial batch: every record exactly once
        assert sorted(everything) == list(range(N))


_FORKS: list[str] = []
os.register_at_fork(before=lambda: _FORKS.append(threading.current_thread().name))


def _children() -> set[int]:
    """Pids of this process's live children (from /proc)."""
    out = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            out.add(int(stat.parent.name))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_are_forked_by_the_thread_opening_the_epoch(shards: Path, workers: int) -> None:
    """Never from the prefetch thread: a fork there can leave the child stopped for ever."""
    _FORKS.clear()
    for epoch in range(3):
        ids = _ids(_source(shards, 0, 1, num_workers=workers).epoch(epoch))
        assert len(ids) == N // B * B
    assert _FORKS == ["MainThread"] * (3 * workers)


def test_a_stopped_worker_is_an_error_naming_rank_epoch_and_worker(shards: Path) -> None:
    before = _children()
    # 10 s: far above a healthy batch's latency even on a loaded machine
    batches = _source(shards, 1, 2, num_workers=2, timeout_s=10.0).epoch(3)
    workers = sorted(_children() - before)
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGSTOP)  # a real hang: the process exists but never answers
    try:
        got = 0
        with pytest.raises(DataTimeoutError) as err:
            for _ in batches:
                got += 1
        assert got < N // 2 // B  # it stopped before the end of the epoch
        assert (
            f"rank 1, epoch 3: batch {got} since the epoch was opened did not arrive within "
            f"data.timeout_s=10 s from loader worker 1 of 2 (pid {workers[1]})"
        ) in str(err.value)
        assert got % 2 == 1  # batches alternate between the workers: worker 1 owes odd ones
    finally:
        os.kill(workers[1], signal.SIGCONT)
        batches.close()
