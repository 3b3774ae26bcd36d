"""Damaged shard sets on disk: checked records, located errors, verify, safe .bin files."""

from __future__ import annotations

import io
import json
import pickle
import shutil
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dist_face.config import DataConfig
from dist_face.data.format.framing import CorruptRecordError, DataFileError
from dist_face.data.format.recordio import RecordReader
from dist_face.data.format.shards import ShardSet
from dist_face.data.format.verify import verify_shard_set
from dist_face.data.loading.loader import build_loader
from dist_face.dist import Topology
from dist_face.eval.bin_format import BinFormatError, load_bin
from tests.helpers.data_fuzz import SIZE, make_base


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 noisy 32x32 JPEGs of 4 classes in 3 shards."""
    return make_base(tmp_path_factory.mktemp("jpeg"))


@pytest.fixture
def copy(base: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(base, tmp_path / "shards"))


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def _source(root: Path, **kw: object):
    cfg = DataConfig(
        root=str(root), backend="torch", batch_size=4, num_workers=0, image_size=SIZE, hflip=False
    )
    cfg = DataConfig(**{**cfg.__dict__, **kw})
    return build_loader(cfg, Topology(), torch.device("cpu"), seed=0)


def _flip_that_still_decodes(root: Path, i: int) -> np.ndarray:
    """Flip one bit of record ``i``'s JPEG scan data so that it decodes to other pixels."""
    shards = ShardSet.open(root)
    image, _ = shards.read_image(i)
    rec = Path(shards.rec_path(int(shards.shard_ids[i])))
    start = int(shards.offsets[i]) + 8 + 24  # past the record header and the IRHeader
    original = _pixels(image)
    for at in range(len(image) - 40, len(image) // 2, -7):  # inside the entropy-coded scan
        data = bytearray(image)
        data[at] ^= 0x10
        try:
            pixels = _pixels(bytes(data))
        except OSError:
            continue
        if pixels.shape == original.shape and not np.array_equal(pixels, original):
            blob = bytearray(rec.read_bytes())
            blob[start + at] ^= 0x10
            rec.write_bytes(bytes(blob))
            return pixels
    raise AssertionError("no decodable bit flip found")


def test_flipped_bit_that_still_decodes_is_a_counted_skip(copy: Path) -> None:
    wrong = _flip_that_still_decodes(copy, 5)
    source = _source(copy)
    images = torch.cat([x for x, _ in source.epoch(0)])
    pixels = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert source.corrupt_records == 1
    assert not any(np.array_equal(p, wrong) for p in pixels)
    shards = ShardSet.open(copy)
    with pytest.raises(CorruptRecordError, match=r"CRC-32 .* differs from the manifest") as err:
        list(_source(copy, on_corrupt="fail").epoch(0))
    assert err.value.key == int(shards.keys[5]) and err.value.offset == int(shards.offsets[5])
    assert err.value.path == shards.rec_path(int(shards.shard_ids[5]))
    # the unchecked path is the old behaviour: the damaged image is trained on
    unchecked = _source(copy, check_crc=False)
    assert sum(len(x) for x, _ in unchecked.epoch(0)) == 24 and unchecked.corrupt_records == 0


def _rewrite_manifest(root: Path, edit, consistent: bool) -> None:
    path = root / "manifest.parquet"
    table = pq.read_table(path)
    cols = {n: table.column(n).to_numpy(zero_copy_only=False).copy() for n in table.column_names}
    cols = edit(cols)
    types = {f.name: f.type for f in table.schema}
    pq.write_table(pa.table({k: pa.array(v, types[k]) for k, v in cols.items()}), path)
    if consistent:  # as a tool that rewrites both files would
        meta = json.loads((root / "meta.json").read_text())
        meta["num_images"] = len(cols["key"])
        for s, shard in enumerate(meta["shards"]):
            shard["num_records"] = int((cols["shard"] == s).sum())
        if "manifest_crc32" in meta:
            meta["manifest_crc32"] = zlib.crc32(path.read_bytes())
        (root / "meta.json").write_text(json.dumps(meta))


def _swap_labels(cols):
    a = int(np.flatnonzero(cols["label"] != cols["label"][0])[0])
    cols["label"][[0, a]] = cols["label"][[a, 0]]
    return cols


def test_edited_manifest_is_refused_at_open(copy: Path) -> None:
    _rewrite_manifest(copy, _swap_labels, consistent=False)
    with pytest.raises(DataFileError, match=r"manifest\.parquet: file CRC-32 .* manifest_crc32"):
        ShardSet.open(copy)


def test_manifest_label_that_is_not_the_records_is_a_corrupt_record(copy: Path) -> None:
    _rewrite_manifest(copy, _swap_labels, consistent=True)
    shards = ShardSet.open(copy)
    with pytest.raises(CorruptRecordError, match=r"header label \d differs from the manifest"):
        shards.read_image(0)
    source = _source(copy)
    labels = [y for _, y in source.epoch(0)]
    assert source.corrupt_records == 2 and sum(len(y) for y in labels) == 24


# ---------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------
def _problems(root: Path) -> list[str]:
    return [str(b) for b in verify_shard_set(str(root))[1]]


def test_verify_reports_swapped_idx_keys(copy: Path) -> None:
    idx = copy / "shard-00001-of-00003.idx"
    lines = idx.read_text().splitlines()
    (k0, o0), (k1, o1) = (line.split("\t") for line in lines[:2])
    lines[:2] = [f"{k1}\t{o0}", f"{k0}\t{o1}"]
    idx.write_text("\n".join(lines) + "\n")
    bad = _problems(copy)
    assert len(bad) == 2 and all("swapped or edited .idx line" in b for b in bad)
    assert f"key={k1} offset={o0}" in bad[0] or f"key={k1} offset={o0}" in bad[1]


def test_verify_reports_a_duplicated_manifest_row(copy: Path) -> None:
    _rewrite_manifest(copy, lambda c: {k: np.insert(v, 7, v[3]) for k, v in c.items()}, True)
    assert len(ShardSet.open(copy)) == 25  # a consistent edit opens: verify must say it
    bad = _problems(copy)
    assert any("is listed more than once by the manifest (rows 3, 7)" in b for b in bad), bad


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"shards": []}, r"key 'shards': lists no shard"),
        ({"num_classes": "30"}, r"key 'num_classes': expected int, got '30'"),
        ({"num_images": None}, r"key 'num_images': expected int, got None"),
        ({"shards": {}}, r"key 'shards': expected list"),
        ({"labels_in_records": 1}, r"key 'labels_in_records': expected bool"),
        ({"num_classes": -3}, r"key 'num_classes': -3 is not >= 1"),
    ],
)
def test_verify_reports_wrong_meta_types(copy: Path, edit: dict, message: str) -> None:
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, **edit}))
    bad = _problems(copy)
    assert len(bad) == 1 and "meta.json" in bad[0]
    with pytest.raises(DataFileError, match=message):
        ShardSet.open(copy)


def test_verify_reports_shard_values_of_wrong_type(copy: Path) -> None:
    meta = json.loads((copy / "meta.json").read_text())
    meta["shards"][1]["rec_bytes"] = "7260"
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataFileError, match=r"meta\.json: key 'shards\[1\]\.rec_bytes'"):
        ShardSet.open(copy)
    meta["shards"][1] = {**meta["shards"][0], "name": "../elsewhere"}
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataFileError, match=r"not a plain file name"):
        ShardSet.open(copy)


# ---------------------------------------------------------------------------------------------
# errors name the file
# ---------------------------------------------------------------------------------------------
def test_damaged_parquet_names_the_manifest(copy: Path) -> None:
    path = copy / "manifest.parquet"
    data = bytearray(path.read_bytes())
    data[4:200] = bytes(196)  # the first data pages
    path.write_bytes(bytes(data))
    meta = json.loads((copy / "meta.json").read_text())
    for crc in (None, zlib.crc32(data)):  # sets without the checksum, or damage under it
        meta["manifest_crc32"] = crc
        (copy / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(DataFileError, match=rf"{path}: Parquet cannot read it"):
            ShardSet.open(copy)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: t.drop_columns(["label"]), r"has no column 'label'"),
        (
            lambda t: t.set_column(4, "label", pa.array([str(v) for v in t["label"].to_pylist()])),
            r"column 'label': has type string, expected an integer",
        ),
        (
            lambda t: t.set_column(4, "label", pa.array([None, *t["label"].to_pylist()[1:]])),
            r"column 'label', row 0: is null",
        ),
        (
            lambda t: t.set_column(2, "offset", pa.array([2**40] * len(t), pa.uint64())),
            r"row 0: record runs past the end of its \.rec",
        ),
    ],
)
def test_manifest_columns_are_checked(copy: Path, edit, expected: str) -> None:
    path = copy / "manifest.parquet"
    table = pq.read_table(path)
    assert table.column_names[2] == "offset" and table.column_names[4] == "label"
    pq.write_table(edit(table), path)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(
        json.dumps({**meta, "manifest_crc32": zlib.crc32(path.read_bytes())})
    )
    with pytest.raises(DataFileError, match=rf"{path}: {expected}"):
        ShardSet.open(copy)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("3\t", r"\.idx:2: expected 'key\\toffset' \(two int64\), got b'3\\t\\n'"),
        ("3 1000", r"\.idx:2: expected 'key\\toffset'"),
        ("99999999999999999999\t0", r"\.idx:2: expected 'key\\toffset'"),
        ("3\t-8", r"\.idx:2: negative offset -8"),
    ],
)
def test_bad_idx_line_names_file_and_line(copy: Path, line: str, expected: str) -> None:
    idx = copy / "shard-00000-of-00003.idx"
    lines = idx.read_text().splitlines()
    lines[1] = line
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFileError, match=expected) as err:
        RecordReader(copy / "shard-00000-of-00003.rec")
    assert err.value.path == str(idx) and err.value.line == 2


def test_undecodable_meta_json_is_named(copy: Path) -> None:
    (copy / "meta.json").write_bytes(b'{"num_classes": \xff}')
    with pytest.raises(DataFileError, match=r"meta\.json: not UTF-8"):
        ShardSet.open(copy)
    (copy / "meta.json").write_text('{"num_classes": 4,')
    with pytest.raises(DataFileError, match=r"meta\.json: not valid JSON"):
        ShardSet.open(copy)


# ---------------------------------------------------------------------------------------------
# .bin memory bombs
# ---------------------------------------------------------------------------------------------
class _Bomb:
    """Pickles as ``bytes(2**40)``: a terabyte from a few dozen bytes."""

    def __init__(self, kind: type = bytes) -> None:
        self.kind = kind

    def __reduce__(self):
        return (self.kind, (2**40,))


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_memory_bomb_bin_is_refused(tmp_path: Path, protocol: int) -> None:
    path = tmp_path / "bomb.bin"
    path.write_bytes(pickle.dumps(_Bomb(), protocol=protocol))
    assert path.stat().st_size < 64
    with pytest.raises(BinFormatError, match=r"bomb\.bin: refusing"):
        load_bin(path)
    path.write_bytes(pickle.dumps(([_Bomb(bytearray)] * 2, [True]), protocol=protocol))
    with pytest.raises(BinFormatError, match=r"refusing bytearray\(int\)"):
        load_bin(path)


def test_sizes_in_place_of_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sizes.bin"
    path.write_bytes(pickle.dumps(([2**40, 2**40], [True])))  # no global at all
    with pytest.raises(BinFormatError, match=r"sizes\.bin: image 0 is a int"):
        load_bin(path)
    array = pickle.dumps(([np.zeros(4, np.uint8)] * 2, [True]), protocol=2)
    huge = array.replace(b"K\x04\x85", b"J\x00\x00\x00\x40\x85")  # shape (2**30,), 4 bytes
    assert huge != array
    path.write_bytes(huge)
    with pytest.raises(BinFormatError, match=r"sizes\.bin: not a verification pickle"):
        load_bin(path)


def test_pack_relabel_and_reshard_record_the_manifest_checksum(copy: Path, tmp_path: Path) -> None:
    from dist_face.cli.reshard import main as reshard_main
    from dist_face.data.format.shards import relabel

    def recorded(root: Path) -> bool:
        meta = json.loads((root / "meta.json").read_text())
        return meta["manifest_crc32"] == zlib.crc32((root / "manifest.parquet").read_bytes())

    assert recorded(copy)
    relabel(str(copy), (ShardSet.open(copy).labels + 1) % 4, 4)
    assert recorded(copy) and ShardSet.open(copy).read_image(0)  # labels no longer in records
    assert reshard_main([str(copy), str(tmp_path / "re"), "--shards", "2", "--quiet"]) == 0
    assert recorded(tmp_path / "re") and len(ShardSet.open(tmp_path / "re")) == 24
