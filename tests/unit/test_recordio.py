"""RecordIO framing, payloads and the reader against hand-written bytes and bad files."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from dist_face.data.format.recordio import (
    MAGIC,
    CorruptRecordError,
    IRHeader,
    RecordReader,
    RecordWriter,
    frame,
    pack_record,
    read_index,
    scan,
    unpack_record,
)

M = bytes.fromhex("0a23d7ce")  # the magic word as it lies on disk


def lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", (cflag << 29) | length)


def write(tmp_path: Path, records: list[tuple[int, bytes]], name: str = "x") -> RecordReader:
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    with RecordWriter(rec, idx) as w:
        for key, payload in records:
            w.write(key, payload)
    return RecordReader(rec, idx)


def test_hand_written_file_bytes(tmp_path: Path) -> None:
    # Oracle written by hand from the dmlc-core layout, independent of the writer.
    payload_a = b"abcdef"  # 6 bytes -> 2 bytes of padding
    payload_b = b"wxyz" + M + b"12345678" + M + b"q"  # magic at aligned offsets 4 and 16
    expected = (
        M + lrec(0, 6) + b"abcdef\0\0"
        + M + lrec(1, 4) + b"wxyz"
        + M + lrec(2, 8) + b"12345678"
        + M + lrec(3, 1) + b"q\0\0\0"
    )  # fmt: skip
    reader = write(tmp_path, [(0, payload_a), (7, payload_b)])
    assert (tmp_path / "x.rec").read_bytes() == expected
    assert (tmp_path / "x.idx").read_text() == "0\t0\n7\t16\n"
    assert reader.read(0) == payload_a and reader.read(7) == payload_b
    assert list(reader.keys) == [0, 7] and len(reader) == 2


def test_hand_written_image_payload() -> None:
    # IRHeader '<IfQQ': flag, float label, id, id2; then the image bytes.
    expected = struct.pack("<I", 0) + struct.pack("<f", 3.0) + (5).to_bytes(8, "little")
    expected += bytes(8) + b"\xff\xd8jpeg"
    assert pack_record(3, b"\xff\xd8jpeg", id=5) == expected
    header, image = unpack_record(expected)
    assert header == IRHeader(0, 3.0, 5, 0) and image == b"\xff\xd8jpeg"


def test_multi_float_labels_round_trip() -> None:
    payload = pack_record([7.0, 1.0, 0.5], b"img", id=9)
    assert payload[:4] == struct.pack("<I", 3) and payload[4:8] == bytes(4)
    assert payload[24:36] == np.array([7.0, 1.0, 0.5], "<f4").tobytes()
    header, image = unpack_record(payload)
    assert header.flag == 3 and header.id == 9 and image == b"img"
    np.testing.assert_array_equal(header.label, np.float32([7.0, 1.0, 0.5]))
    assert header.label.dtype == np.float32


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # empty payload
        pack_record(1, b""),  # a 0-byte image
        M,  # only the magic: two empty parts
        M * 3,  # magic several times in a row
        b"ab" + M + b"cd",  # unaligned magic is not escaped
        b"abcd" + M + b"efgh" + M,  # ends with the magic
        M + b"x" * 4001 + M + bytes(3),
        pack_record(2, M * 5 + b"tail"),  # header shifts the image: magic at aligned offsets
    ],
)
def test_round_trip_is_byte_exact(tmp_path: Path, payload: bytes) -> None:
    reader = write(tmp_path, [(3, payload), (4, b"next")])
    assert reader.read(3) == payload and reader.read(4) == b"next"
    assert [k for k, _ in reader] == [3, 4]
    data = (tmp_path / "x.rec").read_bytes()
    assert len(data) % 4 == 0
    assert [p for _, p in scan(data)] == [payload, b"next"]


def test_split_records_have_the_right_flags() -> None:
    data = frame(M * 2)
    words = np.frombuffer(data, "<u4")
    assert words.tolist() == [MAGIC, 1 << 29, MAGIC, 2 << 29, MAGIC, 3 << 29]


def test_unpack_rejects_short_payloads() -> None:
    with pytest.raises(CorruptRecordError, match="shorter than the 24-byte IRHeader"):
        unpack_record(b"abc")
    bad = struct.pack("<IfQQ", 5, 0.0, 0, 0) + b"\0" * 8  # announces 5 floats, has 2
    with pytest.raises(CorruptRecordError, match="announces 5 float32 labels"):
        unpack_record(bad)


def test_label_that_float32_cannot_hold_is_refused() -> None:
    pack_record(2**24, b"")
    with pytest.raises(ValueError, match="float32"):
        pack_record(2**24 + 1, b"")


def reader_error(tmp_path: Path, data: bytes, idx: str, key: int = 0) -> CorruptRecordError:
    (tmp_path / "b.rec").write_bytes(data)
    (tmp_path / "b.idx").write_text(idx)
    with pytest.raises(CorruptRecordError) as info:
        RecordReader(tmp_path / "b.rec").read(key)
    err = info.value
    assert err.path == str(tmp_path / "b.rec") and err.key == key
    return err


def test_truncated_file(tmp_path: Path) -> None:
    good = frame(b"12345678")
    err = reader_error(tmp_path, good + good[:5], "0\t0\n1\t16\n", key=1)
    assert err.offset == 16 and "truncated" in err.reason


def test_wrong_magic(tmp_path: Path) -> None:
    err = reader_error(tmp_path, b"\0\0\0\0" + frame(b"abcd")[4:], "0\t0\n")
    assert err.offset == 0 and "wrong magic 0x00000000" in err.reason


def test_length_past_end_of_file(tmp_path: Path) -> None:
    err = reader_error(tmp_path, M + lrec(0, 100) + b"abcd", "0\t0\n")
    assert "runs past the end of the file" in err.reason and "key 0" in str(err)


def test_idx_pointing_mid_record(tmp_path: Path) -> None:
    data = frame(b"abcdefgh") + frame(b"x" * 4 + M + b"y" * 4)
    err = reader_error(tmp_path, data, "0\t4\n")  # 4 bytes into the first record
    assert "wrong magic" in err.reason and "middle of a record" in err.reason
    err = reader_error(tmp_path, data, "0\t28\n")  # the second part of a split record
    assert "unexpected part flag 3" in err.reason


def test_missing_key_and_malformed_idx(tmp_path: Path) -> None:
    reader = write(tmp_path, [(0, b"a")])
    with pytest.raises(KeyError, match=r"key 5 is not in .*x\.idx"):
        reader.read(5)
    (tmp_path / "y.rec").write_bytes(b"")
    (tmp_path / "y.idx").write_text("0\t0\nbanana\n")
    with pytest.raises(ValueError, match=r"y\.idx:2: expected"):
        RecordReader(tmp_path / "y.rec")


def test_sparse_keys_and_file_order(tmp_path: Path) -> None:
    records = [(k, pack_record(k % 3, bytes([k % 256]) * k)) for k in (90, 5, 1000, 17)]
    reader = write(tmp_path, records)
    for key, payload in records:
        assert reader.read(key) == payload
    # iteration follows the offsets even when the idx lines are out of order
    lines = (tmp_path / "x.idx").read_text().splitlines()
    (tmp_path / "x.idx").write_text("\n".join(reversed(lines)) + "\n")
    assert [k for k, _ in RecordReader(tmp_path / "x.rec")] == [90, 5, 1000, 17]
    keys, offsets = read_index(tmp_path / "x.idx")
    assert keys.tolist() == [17, 1000, 5, 90] and offsets[-1] == 0


def test_reader_pickles_without_its_map(tmp_path: Path) -> None:
    reader = write(tmp_path, [(0, b"hello"), (1, b"world")])
    assert reader.read(0) == b"hello"  # opens the map
    blob = pickle.dumps(reader)
    assert len(blob) < 2000
    clone = pickle.loads(blob)
    assert clone.read(1) == b"world"


def test_insightface_style_file(tmp_path: Path) -> None:
    from dist_face.data.packing.sources import RecSource

    # Hand-built: header [N+1, N+1+K], N=5 images of K=2 identities, then identity records.
    images = [(1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]
    records = [(0, pack_record([6.0, 8.0], b""))]
    records += [(k, pack_record([float(c), 1.0], b"\xff\xd8img%d" % k)) for k, c in images]
    records += [(6, pack_record([1.0, 3.0], b"")), (7, pack_record([3.0, 6.0], b""))]
    write(tmp_path, records, "ins")
    src = RecSource(str(tmp_path / "ins.rec"))
    assert src.image_keys.tolist() == [1, 2, 3, 4, 5]
    assert src.labels.tolist() == [0, 0, 1, 1, 1] and src.num_classes == 2
    assert src.identity_ranges.tolist() == [[1, 3], [3, 6]]
    assert src.read(2) == b"\xff\xd8img3" and src.describe(2) == "ins.rec:3"


def test_headerless_file_with_scalar_labels(tmp_path: Path) -> None:
    from dist_face.data.packing.sources import RecSource

    records = [(k, pack_record(float(k % 4), b"j%d" % k)) for k in range(10)]
    records.append((10, pack_record(3, M * 8)))  # a split record takes the slow path
    write(tmp_path, records, "plain")
    src = RecSource(str(tmp_path / "plain.rec"))
    assert src.identity_ranges is None and len(src) == 11
    assert src.labels.tolist() == [k % 4 for k in range(10)] + [3]


def test_non_integer_label_is_named(tmp_path: Path) -> None:
    from dist_face.data.packing.sources import RecSource

    write(tmp_path, [(0, pack_record(1, b"a")), (1, pack_record(2.5, b"b"))], "frac")
    with pytest.raises(CorruptRecordError, match=r"key 1.*label 2\.5"):
        RecSource(str(tmp_path / "frac.rec"))


def _read_in_child(reader: RecordReader, key: int, queue) -> None:
    queue.put(reader.read(key))


def test_forked_child_maps_the_file_itself(tmp_path: Path) -> None:
    import multiprocessing as mp

    reader = write(tmp_path, [(0, b"parent"), (1, b"child")])
    assert reader.read(0) == b"parent"  # the parent's map exists before the fork
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_in_child, args=(reader, 1, queue))
    proc.start()
    got = queue.get(timeout=30)
    proc.join(30)
    assert got == b"child" and proc.exitcode == 0
