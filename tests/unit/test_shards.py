"""Packing into shard sets and reading them back through ShardSet."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from dist_face.data.format.recordio import (
    CorruptRecordError,
    RecordReader,
    RecordWriter,
    pack_record,
    unpack_record,
)
from dist_face.data.format.shards import ShardSet, relabel
from dist_face.data.packing.pack import PackOptions, pack, shard_bounds
from dist_face.data.packing.sources import FolderSource, ListSource, RecSource
from tests.helpers.images import make_image_folder


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[bytes, int]]]:
    files = make_image_folder(tmp_path / "images", classes=5, per_class=4)
    return tmp_path / "images", files


def test_pack_folder_round_trip(tmp_path: Path, folder) -> None:
    root, files = folder
    meta = pack(
        FolderSource(str(root)), str(tmp_path / "out"), PackOptions(num_shards=3, seed=1), False
    )
    assert meta.num_images == len(files) == 22 and meta.num_classes == 5
    assert meta.image_shape == [16, 16, 3] and meta.shuffled
    shards = ShardSet.open(tmp_path / "out")
    manifest = shards.manifest.to_pydict()
    assert len(shards) == 22 and shards.num_shards == 3
    assert [s.num_records for s in meta.shards] == np.diff(shard_bounds(22, 3)).tolist()
    for i in range(len(shards)):
        image, label = shards.read_image(i)
        assert (image, label) == files[manifest["source"][i]]
    assert sorted(manifest["source"]) == sorted(files)
    assert manifest["source"] != sorted(files)  # shuffled
    # shards are plain headerless files: keys 0..n-1, record label == manifest label
    for s in range(3):
        reader = RecordReader(shards.rec_path(s))
        assert reader.keys.tolist() == list(range(meta.shards[s].num_records))
        rows = np.flatnonzero(shards.shard_ids == s)
        for key, payload in reader:
            header, _ = unpack_record(payload)
            assert header.flag == 0 and header.label == shards.labels[rows[key]]
    on_disk = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert on_disk["num_classes"] == 5 and len(on_disk["shards"]) == 3
    assert sorted(os.listdir(tmp_path / "out"))[:2] == ["manifest.parquet", "meta.json"]


def test_seed_decides_the_order_and_workers_do_not(tmp_path: Path, folder) -> None:
    root, _ = folder
    src = FolderSource(str(root))
    pack(src, str(tmp_path / "a"), PackOptions(num_shards=2, seed=7), False)
    pack(src, str(tmp_path / "b"), PackOptions(num_shards=2, seed=7, workers=2), False)
    pack(src, str(tmp_path / "c"), PackOptions(num_shards=2, seed=8), False)
    for name in ("shard-00000-of-00002.rec", "shard-00001-of-00002.idx", "meta.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "shard-00000-of-00002.rec").read_bytes() != (
        tmp_path / "c" / "shard-00000-of-00002.rec"
    ).read_bytes()


class FailingSource(FolderSource):
    def read(self, i: int) -> bytes:
        if i == 13:
            raise OSError("disk went away")
        return super().read(i)


def test_crash_leaves_no_shard_set(tmp_path: Path, folder) -> None:
    root, _ = folder
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk went away"):
        pack(FailingSource(str(root)), str(out), PackOptions(num_shards=2, shuffle=False), False)
    assert os.listdir(out) == []
    with pytest.raises(FileNotFoundError, match="not a complete shard set"):
        ShardSet.open(out)
    with pytest.raises(FileExistsError, match="not empty"):
        (out / "junk").write_text("x")
        pack(FolderSource(str(root)), str(out), PackOptions(), False)


def test_pack_from_lst_and_from_insightface_rec(tmp_path: Path, folder) -> None:
    _, files = folder
    names = sorted(files)
    lst = tmp_path / "images" / "train.lst"
    lst.write_text("".join(f"{i}\t{files[n][1]}\t{n}\n" for i, n in enumerate(names)))
    src = ListSource(str(lst))
    assert src.labels.tolist() == [files[n][1] for n in names] and src.num_classes == 5

    # An InsightFace-style rec: header, images sorted by identity, identity records.
    n, k = len(names), 5
    with RecordWriter(tmp_path / "ins.rec", tmp_path / "ins.idx") as w:
        w.write(0, pack_record([n + 1, n + 1 + k], b""))
        for i, name in enumerate(names, 1):
            w.write(i, pack_record([files[name][1], 0], files[name][0]))
        starts = np.searchsorted([files[x][1] for x in names], np.arange(k + 1)) + 1
        for c in range(k):
            w.write(n + 1 + c, pack_record([starts[c], starts[c + 1]], b""))
    rec_src = RecSource(str(tmp_path / "ins.rec"))
    assert rec_src.identity_ranges.tolist() == [[starts[c], starts[c + 1]] for c in range(k)]
    pack(rec_src, str(tmp_path / "out"), PackOptions(num_shards=2), False)
    shards = ShardSet.open(tmp_path / "out")
    got = sorted(shards.read_image(i) for i in range(len(shards)))
    assert got == sorted(files.values())


def test_corrupt_record_is_located(tmp_path: Path, folder) -> None:
    root, _ = folder
    pack(FolderSource(str(root)), str(tmp_path / "out"), PackOptions(num_shards=2), False)
    shards = ShardSet.open(tmp_path / "out")
    i = int(np.flatnonzero(shards.shard_ids == 1)[2])
    path = shards.rec_path(1)
    with open(path, "r+b") as f:
        f.seek(int(shards.offsets[i]))
        f.write(b"XXXX")
    with pytest.raises(CorruptRecordError) as info:
        shards.read(i)
    assert (info.value.path, info.value.key, info.value.offset) == (path, 2, shards.offsets[i])
    assert "wrong magic" in str(info.value) and "key 2" in str(info.value)


def test_relabel_rewrites_only_the_manifest(tmp_path: Path, folder) -> None:
    root, _ = folder
    pack(FolderSource(str(root)), str(tmp_path / "out"), PackOptions(num_shards=2), False)
    before = (tmp_path / "out" / "shard-00000-of-00002.rec").read_bytes()
    shards = ShardSet.open(tmp_path / "out")
    new = (shards.labels + 1) % 7
    meta = relabel(str(tmp_path / "out"), new, 7)
    assert meta.num_classes == 7 and not meta.labels_in_records
    again = ShardSet.open(tmp_path / "out")
    assert np.array_equal(again.labels, new) and again.read_image(0)[1] == new[0]
    assert (tmp_path / "out" / "shard-00000-of-00002.rec").read_bytes() == before
    with pytest.raises(ValueError, match="outside"):
        relabel(str(tmp_path / "out"), new, 3)
    # a manifest whose labels exceed meta.json's class count is refused by name
    meta_path = tmp_path / "out" / "meta.json"
    meta_path.write_text(meta_path.read_text().replace('"num_classes": 7', '"num_classes": 2'))
    with pytest.raises(ValueError, match=r"manifest.parquet: row \d+ .* outside \[0, 2\)"):
        ShardSet.open(tmp_path / "out")


def test_shard_set_pickles_small(tmp_path: Path, folder) -> None:
    root, _ = folder
    pack(FolderSource(str(root)), str(tmp_path / "out"), PackOptions(num_shards=2), False)
    shards = ShardSet.open(tmp_path / "out")
    first = shards.read(0)
    clone = pickle.loads(pickle.dumps(shards))
    assert clone.read(0) == first and np.array_equal(clone.labels, shards.labels)
    with pytest.raises(IndexError, match="outside"):
        shards.read(len(shards))


def test_split_records_read_through_the_shard_set(tmp_path: Path) -> None:
    from dist_face.data.format.shards import ShardWriter, commit_shard_set

    magic = bytes.fromhex("0a23d7ce")
    images = [b"\xff\xd8" + bytes(6) + magic * 3, b"plain", magic + b"ab"]
    (tmp_path / "out").mkdir()
    writer = ShardWriter(str(tmp_path / "out"), 0, 1)
    for label, image in enumerate(images):
        writer.add(pack_record(label, image), label, f"img{label}")
    commit_shard_set(
        str(tmp_path / "out"), [writer.finish()], num_classes=3, image_shape=None,
        shuffled=False, seed=None,
    )  # fmt: skip
    shards = ShardSet.open(tmp_path / "out")
    assert [shards.read_image(i) for i in range(3)] == [(b, i) for i, b in enumerate(images)]
