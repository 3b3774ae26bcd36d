"""Training straight from an InsightFace ``.rec``/``.idx``: index scan, cached manifest, loaders."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_face.config import DataConfig
from dist_face.data.format.rec_index import cache_paths, open_dataset, open_rec
from dist_face.data.format.recordio import RecordReader, unpack_record
from dist_face.data.format.shards import ShardSet
from dist_face.data.loading.loader import build_loader
from dist_face.dist import Topology
from tests.helpers.insightface import write_insightface_rec

N, C, B = 60, 7, 4


def _label(record: int) -> int:
    return record * C // N  # contiguous identity groups, as InsightFace files are sorted


def _items() -> list[tuple[bytes, int]]:
    """Solid-colour PNGs whose red channel is the record number (survives decode and flips)."""
    out = []
    for i in range(N):
        buf = io.BytesIO()
        Image.new("RGB", (112, 112), (i, 255 - i, 7)).save(buf, format="PNG")
        out.append((buf.getvalue(), _label(i)))
    return out


@pytest.fixture(scope="module", params=[True, False], ids=["header", "headerless"])
def rec_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("insightface")
    write_insightface_rec(folder, _items(), header=request.param)
    return folder


def _source(root: Path | str, rank: int, world: int, backend: str = "torch", **kw: object):
    cfg = DataConfig(
        **{"root": str(root), "backend": backend, "batch_size": B, "num_workers": 0, **kw}
    )
    topo = Topology(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    return build_loader(cfg, topo, torch.device("cpu"), seed=3)


def _ids(batches) -> list[int]:
    out = []
    for images, labels in batches:
        assert images.shape == (B, 3, 112, 112)
        pixel = ((images[:, 0, 0, 0] + 1) * 127.5).round().long()
        assert labels.tolist() == [_label(p) for p in pixel.tolist()]  # labels travel along
        out += pixel.tolist()
    return out


def test_scan_matches_the_records_read_one_by_one(rec_folder: Path) -> None:
    data = open_dataset(rec_folder)  # the folder: train.rec/train.idx inside
    assert (len(data), data.num_classes) == (N, C)
    reader = RecordReader(rec_folder / "train.rec")
    expected = dict(_items_by_key(reader))
    assert sorted(data.keys.tolist()) == sorted(expected)
    for i in range(len(data)):  # reference: an independent full read of every record
        image, label = data.read_image(i)
        assert (image, label) == expected[int(data.keys[i])]
    assert (np.diff(data.offsets) > 0).all()  # file order, as DALI needs


def _items_by_key(reader: RecordReader):
    for key in reader.keys.tolist():
        header, image = unpack_record(reader.read(key))
        if image:  # header and identity records carry no image
            yield key, (image, int(header.label))


def test_torch_loader_reads_every_record_once_on_two_ranks(rec_folder: Path) -> None:
    rec = rec_folder / "train.rec"  # the .rec itself works as data.root too
    seen = [i for r in range(2) for i in _ids(_source(rec, r, 2).epoch(0))]
    # 30 records per rank in full batches of 4: 28 each; the rest waits for the next epoch
    assert len(seen) == len(set(seen)) == 2 * 28 and set(seen) <= set(range(N))


def test_dali_loader_on_the_cpu_reads_the_rec(
    rec_folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (extra 'dali')")
    with caplog.at_level("WARNING", logger="dist_face.data.loading.loader"):
        per_rank = [_ids(_source(rec_folder, r, 2, "dali").epoch(0)) for r in range(2)]
    assert "not globally shuffled" in caplog.text  # sorted by identity: few ids per batch
    seen = [i for ids in per_rank for i in ids]
    assert len(seen) == len(set(seen)) == 2 * ((N // 2) // B) * B


def test_manifest_is_cached_beside_the_data_and_rebuilt_when_the_files_change(
    tmp_path: Path,
) -> None:
    rec = write_insightface_rec(tmp_path / "data", _items())
    beside = Path(cache_paths(str(rec))[0])
    open_rec(str(rec))
    assert beside.is_file()
    built = beside.stat().st_mtime_ns
    open_rec(str(rec))  # reused: the cache file is not rewritten
    assert beside.stat().st_mtime_ns == built
    # a replaced dataset (fewer records, new size and mtime) is scanned again
    write_insightface_rec(tmp_path / "data", _items()[:30])
    assert len(open_rec(str(rec))) == 30
    assert beside.stat().st_mtime_ns != built


def test_read_only_data_caches_in_the_cache_directory(tmp_path: Path) -> None:
    data, cache = tmp_path / "ro", tmp_path / "cache"
    data.mkdir()
    mounted = _read_only(data)
    try:
        rec = data / "train.rec"
        assert len(open_rec(str(rec), cache_dir=cache)) == N
        assert not Path(cache_paths(str(rec))[0]).exists()
        cached = list((cache / "rec_manifests").glob("train-*.parquet"))
        assert len(cached) == 1
        stamp = cached[0].stat().st_mtime_ns
        assert len(open_rec(str(rec), cache_dir=cache)) == N
        assert cached[0].stat().st_mtime_ns == stamp
    finally:
        if mounted:
            subprocess.run(["umount", str(data)], check=True)
        else:
            data.chmod(0o755)


def _read_only(folder: Path) -> bool:
    """Fill ``folder`` with the dataset, then make it read-only; True when it is a mount."""
    if os.geteuid() != 0:  # permissions stop an ordinary user
        write_insightface_rec(folder, _items())
        folder.chmod(0o555)
        return False
    # root ignores permissions: a real read-only file system (needs CAP_SYS_ADMIN)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"root without permission to mount a tmpfs: {mounted.stderr.decode()}")
    write_insightface_rec(folder, _items())
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    return True


def test_a_rec_where_a_shard_set_is_expected_says_what_to_do(rec_folder: Path, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"dist-face-pack .*train\.rec OUT_DIR"):
        ShardSet.open(rec_folder / "train.rec")
    reshard = Path(sys.executable).parent / "dist-face-reshard"  # the real console script
    out = subprocess.run(
        [reshard, str(rec_folder), str(tmp_path / "o"), "--shards", "2"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "--data.root=" in out.stderr and "dist-face-pack" in out.stderr
    assert "Traceback" not in out.stderr


def test_tools_that_read_any_source_take_the_release_folder(rec_folder: Path) -> None:
    from dist_face.cli.inspect import summarize

    summary = summarize(str(rec_folder))  # the folder, not train.rec
    assert (summary["kind"], summary["num_images"], summary["num_classes"]) == ("rec", N, C)


def test_auto_on_a_gpu_reads_a_rec_with_torch_and_shuffled_shards_with_dali(
    rec_folder: Path, color_shards: Path
) -> None:
    pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (extra 'dali')")

    def backend(root: Path) -> str:  # the choice only: nothing runs on the device
        cfg = DataConfig(root=str(root), backend="auto", batch_size=B, num_workers=0)
        topo = Topology(rank=0, world_size=1, local_rank=0, local_world_size=1)
        return build_loader(cfg, topo, torch.device("cuda"), seed=3).backend

    assert backend(rec_folder) == "torch"
    assert backend(color_shards) == "dali"
