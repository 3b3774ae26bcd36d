"""MXNet RecordIO read and written with numpy alone, byte-compatible with MXNet and DALI.

A record on disk is ``uint32 magic 0xCED7230A``, ``uint32 lrecord = (cflag << 29) | length``,
the payload, and zero padding to 4 bytes (little-endian). A payload that contains the magic
word at a 4-byte-aligned offset is written as several parts (cflag 1 first, 2 middle, 3 last)
with the magic word left out; readers re-insert it. The ``.idx`` file holds ``key<TAB>offset``
lines. An image payload starts with the 24-byte ``IRHeader`` ``'<IfQQ'`` (flag, label, id,
id2); ``flag > 0`` means that many float32 labels follow before the encoded image.
"""

from __future__ import annotations

import mmap
import numbers
import os
import struct
import weakref
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

MAGIC = 0xCED7230A
"""dmlc-core's record magic word (bytes on disk ``0A 23 D7 CE``)."""
MAX_LENGTH = (1 << 29) - 1
"""Largest payload part a record header can describe, in bytes."""
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEAD = struct.Struct("<II")
_HEAD_UNPACK = _HEAD.unpack_from
_PADDING = [b"", b"\0", b"\0\0", b"\0\0\0"]
_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size
"""Bytes of the IRHeader at the start of an image payload (24)."""
_FLOAT32_EXACT = 1 << 24  # integers above this are not all representable in float32


class CorruptRecordError(ValueError):
    """A record cannot be read or decoded; names the file, key and byte offset.

    Loaders catch this class to skip-and-count or to fail on a bad record.

    Attributes:
        path: The ``.rec`` file (or None when only a payload was given).
        key: The record's key from the ``.idx`` (or None when unknown).
        offset: Byte offset of the record's first header in ``path`` (or None).
        reason: What is wrong, without the location.
    """

    def __init__(
        self,
        reason: str,
        path: str | os.PathLike[str] | None = None,
        key: int | None = None,
        offset: int | None = None,
    ) -> None:
        self.path = None if path is None else os.fspath(path)
        self.key = key
        self.offset = offset
        self.reason = reason
        where = []
        if self.path is not None:
            where.append(self.path)
        if key is not None:
            where.append(f"key {key}")
        if offset is not None:
            where.append(f"offset {offset}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)

    def located(
        self, path: str | os.PathLike[str] | None, key: int | None, offset: int | None
    ) -> CorruptRecordError:
        """The same error with the location filled in where it was missing."""
        return CorruptRecordError(
            self.reason,
            self.path if self.path is not None else path,
            self.key if self.key is not None else key,
            self.offset if self.offset is not None else offset,
        )


class IRHeader(NamedTuple):
    """MXNet's image-record header.

    Attributes:
        flag: 0 for a scalar label; k > 0 when k float32 labels follow the header.
        label: The scalar label (flag 0) or a float32 array of ``flag`` labels.
        id: Record id.
        id2: High bits of the id, normally 0.
    """

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


# ---------------------------------------------------------------------------------------------
# Payloads: IRHeader + labels + image bytes
# ---------------------------------------------------------------------------------------------
def pack_record(
    label: float | Sequence[float] | np.ndarray, image_bytes: bytes, id: int = 0, id2: int = 0
) -> bytes:
    """Build an image payload exactly as ``mxnet.recordio.pack`` does.

    Args:
        label: A number (stored in the header, flag 0) or a sequence of k numbers (flag k,
            stored as k float32 after the header, header label 0).
        image_bytes: The encoded image (any bytes, possibly empty).
        id: Record id (uint64).
        id2: High bits of the id (uint64).

    Returns:
        ``IRHeader`` (24 bytes) + ``[float32 × k]`` + ``image_bytes``.

    Raises:
        ValueError: An integer label that float32 cannot hold exactly (|label| > 2^24), or
            an id outside uint64.
    """
    if not (0 <= id < 1 << 64 and 0 <= id2 < 1 << 64):
        raise ValueError(f"record id ({id}, {id2}) must be in [0, 2^64)")
    if isinstance(label, numbers.Number):
        _check_float32_label(float(label))  # type: ignore[arg-type]
        return _IR.pack(0, float(label), id, id2) + bytes(image_bytes)  # type: ignore[arg-type]
    labels = np.asarray(label, dtype=np.float64).ravel()
    for value in labels:
        _check_float32_label(float(value))
    return _IR.pack(labels.size, 0.0, id, id2) + labels.astype("<f4").tobytes() + bytes(image_bytes)


def unpack_record(payload: bytes | memoryview) -> tuple[IRHeader, bytes]:
    """Split an image payload into its header and image bytes (``mxnet.recordio.unpack``).

    Args:
        payload: A record payload as returned by :meth:`RecordReader.read`.

    Returns:
        ``(header, image_bytes)``; ``header.label`` is a float when ``flag == 0``, otherwise a
        float32 array of length ``flag``.

    Raises:
        CorruptRecordError: The payload is shorter than its header and labels claim.
    """
    if len(payload) < IR_SIZE:
        raise CorruptRecordError(
            f"payload of {len(payload)} bytes is shorter than the {IR_SIZE}-byte IRHeader"
        )
    flag, label, rid, rid2 = _IR.unpack_from(payload, 0)
    if flag == 0:
        return IRHeader(0, label, rid, rid2), bytes(payload[IR_SIZE:])
    end = IR_SIZE + 4 * flag
    if len(payload) < end:
        raise CorruptRecordError(
            f"IRHeader flag {flag} announces {flag} float32 labels but the payload has only "
            f"{len(payload)} bytes (not an image record?)"
        )
    labels = np.frombuffer(payload, dtype="<f4", count=flag, offset=IR_SIZE).astype(np.float32)
    return IRHeader(flag, labels, rid, rid2), bytes(payload[end:])


def scalar_label(header: IRHeader) -> float:
    """The class label of a record: the scalar, or the first of a label array (MXNet rule)."""
    if header.flag == 0:
        return float(header.label)  # type: ignore[arg-type]
    return float(header.label[0])  # type: ignore[index]


def _check_float32_label(value: float) -> None:
    if value.is_integer() and abs(value) > _FLOAT32_EXACT:
        raise ValueError(
            f"label {value:.0f} cannot be stored exactly in the float32 record header "
            f"(integers above 2^24 = {_FLOAT32_EXACT} lose precision)"
        )


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------
def frame(payload: bytes | memoryview) -> bytes:
    """The on-disk bytes of one record, split around aligned magic words like dmlc-core.

    Args:
        payload: The record payload (< 2^29 bytes).

    Returns:
        One or more ``magic | lrecord | part`` frames; only the last part is zero-padded.
    """
    return b"".join(frame_pieces(bytes(payload)))


def frame_pieces(payload: bytes) -> list[bytes]:
    """:func:`frame` as a list of pieces to write in order (avoids copying the payload)."""
    size = len(payload)
    if size > MAX_LENGTH:
        raise ValueError(f"record payload of {size} bytes exceeds the 2^29 - 1 byte limit")
    out = []
    start = 0
    # Only magic words at 4-byte-aligned offsets split a record (dmlc-core scans words);
    # one vectorised compare is faster than bytes.find on image data.
    words = np.frombuffer(payload, dtype="<u4", count=size // 4)
    for pos in (np.flatnonzero(words == MAGIC) * 4).tolist():
        out.append(_HEAD.pack(MAGIC, ((1 if start == 0 else 2) << 29) | (pos - start)))
        out.append(payload[start:pos])
        start = pos + 4
    out.append(_HEAD.pack(MAGIC, ((3 if start else 0) << 29) | (size - start)))
    out.append(payload[start:] if start else payload)
    out.append(_PADDING[-(size - start) % 4])
    return out


def read_frame(
    buf: Any, offset: int, path: str | None = None, key: int | None = None
) -> tuple[bytes, int]:
    """Decode the record that starts at ``offset`` of a buffer (an mmap or bytes).

    Args:
        buf: The whole ``.rec`` contents (supports ``len``, slicing and ``struct.unpack_from``).
        offset: Byte offset of the record's first magic word.
        path: File name for error messages.
        key: Record key for error messages.

    Returns:
        ``(payload, end)`` where ``end`` is the offset just past the record's padding.

    Raises:
        CorruptRecordError: Truncated header, wrong magic, a part running past the end of
            the file, or an offset that points into the middle of a split record.
    """
    # Fast path: a complete single-part record (cflag 0 <=> lrecord < 2^29).
    if offset + 8 <= len(buf):
        magic, lrec = _HEAD_UNPACK(buf, offset)
        end = offset + 8 + lrec
        if magic == MAGIC and lrec <= MAX_LENGTH and end <= len(buf):
            return buf[offset + 8 : end], end + (-lrec & 3)
    return _read_parts(buf, offset, path, key)


def read_payload(buf: Any, offset: int, path: str | None = None, key: int | None = None) -> bytes:
    """The payload of the record at ``offset`` (:func:`read_frame` without the end offset).

    This is the per-record hot path of every reader: one header unpack and one slice (the
    only copy) for a single-part record; split records and errors take the slow path.
    """
    try:
        magic, lrec = _HEAD_UNPACK(buf, offset)
    except struct.error:  # fewer than 8 bytes left: the slow path names the problem
        magic = lrec = -1
    if magic == MAGIC and lrec <= MAX_LENGTH:
        data = buf[offset + 8 : offset + 8 + lrec]
        if len(data) == lrec:
            return data
    return _read_parts(buf, offset, path, key)[0]


def _read_parts(buf: Any, offset: int, path: str | None, key: int | None) -> tuple[bytes, int]:
    """Slow path of :func:`read_frame`: split records and every error case."""
    size = len(buf)
    parts: list[bytes] = []
    pos = offset
    while True:
        if pos + 8 > size:
            what = "record header" if pos == offset else "next part of a split record"
            raise CorruptRecordError(
                f"truncated file: {what} needs 8 bytes at offset {pos}, file has {size}",
                path,
                key,
                offset,
            )
        magic, lrec = _HEAD.unpack_from(buf, pos)
        if magic != MAGIC:
            raise CorruptRecordError(
                f"wrong magic 0x{magic:08X} at offset {pos} (expected 0x{MAGIC:08X}); "
                "the .idx offset may point into the middle of a record",
                path,
                key,
                offset,
            )
        cflag, length = lrec >> 29, lrec & MAX_LENGTH
        if cflag > 3 or (pos == offset and cflag in (2, 3)) or (pos != offset and cflag in (0, 1)):
            raise CorruptRecordError(
                f"unexpected part flag {cflag} at offset {pos}; the .idx offset may point "
                "into the middle of a split record",
                path,
                key,
                offset,
            )
        end = pos + 8 + length
        if end > size:
            raise CorruptRecordError(
                f"record length {length} at offset {pos} runs past the end of the file "
                f"({size} bytes): truncated file or corrupt length",
                path,
                key,
                offset,
            )
        parts.append(bytes(buf[pos + 8 : end]))
        pos = end + (-length % 4)
        if cflag in (0, 3):
            return (_MAGIC_BYTES.join(parts) if len(parts) > 1 else parts[0]), pos


def scan(buf: Any, path: str | None = None) -> Iterator[tuple[int, bytes | CorruptRecordError]]:
    """Walk every record of a ``.rec`` buffer in file order, without an index.

    Yields:
        ``(offset, payload)`` for each record, or ``(offset, error)`` for the first record that
        cannot be framed; the scan stops after an error (the rest cannot be located).
    """
    pos, size = 0, len(buf)
    while pos < size:
        try:
            payload, end = read_frame(buf, pos, path)
        except CorruptRecordError as err:
            yield pos, err
            return
        yield pos, payload
        pos = end


# ---------------------------------------------------------------------------------------------
# Index files
# ---------------------------------------------------------------------------------------------
def read_index(idx_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a ``.idx`` file of ``key<whitespace>offset`` lines.

    Returns:
        ``(keys, offsets)``, both int64 arrays in file-line order.

    Raises:
        ValueError: A line that is not two integers, naming the file and line.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if os.path.getsize(idx_path) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    try:
        table = pacsv.read_csv(
            idx_path,
            read_options=pacsv.ReadOptions(column_names=["key", "offset"]),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(
                column_types={"key": pa.int64(), "offset": pa.int64()}
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        _diagnose_index(idx_path)
        raise
    keys = table.column("key").to_numpy()
    offsets = table.column("offset").to_numpy()
    if (offsets < 0).any():
        line = int(np.flatnonzero(offsets < 0)[0]) + 1
        raise ValueError(f"{os.fspath(idx_path)}:{line}: negative offset {offsets[line - 1]}")
    return keys.astype(np.int64, copy=False), offsets.astype(np.int64, copy=False)


def _diagnose_index(idx_path: str | os.PathLike[str]) -> None:
    """Raise a ValueError naming the first malformed line of an index file."""
    with open(idx_path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 2 or not all(_is_int(x) for x in fields):
                raise ValueError(
                    f"{os.fspath(idx_path)}:{line_no}: expected 'key\\toffset', got {line[:80]!r}"
                )


def _is_int(token: bytes) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Writer and reader
# ---------------------------------------------------------------------------------------------
class RecordWriter:
    """Append records to a ``.rec`` and their ``key<TAB>offset`` lines to a ``.idx``.

    Equivalent to ``mxnet.recordio.MXIndexedRecordIO(idx, rec, 'w')`` with ``write_idx``.
    Use as a context manager, or call :meth:`close`.

    Args:
        rec_path: The ``.rec`` file to create (truncated if present).
        idx_path: The ``.idx`` file to create, or None to write no index.
    """

    def __init__(
        self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None
    ) -> None:
        self.rec_path = os.fspath(rec_path)
        self.idx_path = None if idx_path is None else os.fspath(idx_path)
        self._rec = open(self.rec_path, "wb", buffering=1 << 20)
        self._idx = None if idx_path is None else open(idx_path, "w", buffering=1 << 16)
        self._pos = 0

    @property
    def tell(self) -> int:
        """Bytes written to the ``.rec`` so far (the offset of the next record)."""
        return self._pos

    def write(self, key: int, payload: bytes | memoryview) -> int:
        """Append one record; returns its byte offset in the ``.rec``."""
        offset = self._pos
        for piece in frame_pieces(bytes(payload)):
            self._rec.write(piece)
            self._pos += len(piece)
        if self._idx is not None:
            self._idx.write(f"{int(key)}\t{offset}\n")
        return offset

    def close(self) -> None:
        """Flush and close both files (idempotent)."""
        self._rec.close()
        if self._idx is not None:
            self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Mapped:
    """A read-only memory map of one file, opened lazily once per process.

    The map is dropped when pickled (spawned workers) and in forked children, so every
    process maps the file itself.
    """

    _live: ClassVar[weakref.WeakSet[_Mapped]] = weakref.WeakSet()

    def __init__(self, path: str) -> None:
        self.path = path
        self._buf: Any = None

    def get(self) -> Any:
        if self._buf is None:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                # mmap refuses empty files; an empty bytes object behaves the same for reads.
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            _Mapped._live.add(self)
        return self._buf

    @staticmethod
    def _forget_all() -> None:
        for mapped in list(_Mapped._live):
            mapped._buf = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


os.register_at_fork(after_in_child=_Mapped._forget_all)


class RecordReader:
    """Random and sequential access to a ``.rec``/``.idx`` pair through a memory map.

    The file is mapped on first access in each process and the mapping is dropped when the
    reader is pickled, so DataLoader workers can share one reader.

    Args:
        rec_path: The ``.rec`` file.
        idx_path: Its ``.idx``; None derives it from ``rec_path`` (``x.rec`` -> ``x.idx``).

    Raises:
        FileNotFoundError: Either file is missing.
        ValueError: A malformed ``.idx`` line, or a duplicate key.
    """

    def __init__(
        self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str] | None = None
    ) -> None:
        self.rec_path = os.fspath(rec_path)
        self.idx_path = os.fspath(idx_path or os.path.splitext(self.rec_path)[0] + ".idx")
        for p in (self.rec_path, self.idx_path):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"record file {p} does not exist")
        keys, offsets = read_index(self.idx_path)
        self._map = _Mapped(self.rec_path)
        self._keys = keys
        self._offsets = offsets
        self._lookup = _KeyLookup(keys, self.idx_path)

    def __len__(self) -> int:
        return int(self._keys.size)

    @property
    def keys(self) -> np.ndarray:
        """Keys in ``.idx`` line order (int64)."""
        return self._keys

    @property
    def offsets(self) -> np.ndarray:
        """Byte offsets in ``.idx`` line order (int64)."""
        return self._offsets

    def offset_of(self, key: int) -> int:
        """Byte offset of the record with ``key``; KeyError naming the files if absent."""
        return int(self._offsets[self._lookup.position(key)])

    def positions(self, keys: np.ndarray) -> np.ndarray:
        """Positions in ``.idx`` line order of ``keys`` (int64); KeyError if one is absent."""
        return self._lookup.positions(np.asarray(keys, dtype=np.int64))

    def read(self, key: int) -> bytes:
        """The payload of the record with ``key``.

        Raises:
            KeyError: ``key`` is not in the ``.idx``.
            CorruptRecordError: The record cannot be framed (names file, key and offset).
        """
        offset = int(self._offsets[self._lookup.position(key)])
        return read_payload(self._map.get(), offset, self.rec_path, key)

    def read_at(self, offset: int, key: int | None = None) -> bytes:
        """The payload of the record starting at byte ``offset``."""
        return read_payload(self._map.get(), int(offset), self.rec_path, key)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """``(key, payload)`` for every indexed record, in file (offset) order."""
        buf, path = self._map.get(), self.rec_path
        order = np.argsort(self._offsets, kind="stable")
        for start in range(0, order.size, _ITER_CHUNK):
            chunk = order[start : start + _ITER_CHUNK]
            keys, offsets = self._keys[chunk], self._offsets[chunk]
            ends = _single_part_ends(buf, offsets)  # validated headers, -1 where not simple
            if (ends >= 0).all():  # all single-part: slice in C, no Python frame per record
                slices = map(slice, (offsets + 8).tolist(), ends.tolist())
                yield from zip(keys.tolist(), map(buf.__getitem__, slices))
                continue
            for key, offset, end in zip(keys.tolist(), offsets.tolist(), ends.tolist()):
                if end >= 0:
                    yield key, buf[offset + 8 : end]
                else:
                    yield key, read_frame(buf, offset, path, key)[0]

    @property
    def file_size(self) -> int:
        """Size of the ``.rec`` in bytes."""
        return len(self._map.get())

    def buffer(self) -> Any:
        """The read-only mapped ``.rec`` (for sequential scans)."""
        return self._map.get()


_ITER_CHUNK = 1 << 16  # records whose headers are checked at once while iterating


def _single_part_ends(buf: Any, offsets: np.ndarray) -> np.ndarray:
    """Payload end of each record at ``offsets`` that is a valid single-part record, else -1.

    Reads the 8-byte headers with one vectorised gather, so iteration needs no per-record
    header parsing in Python.
    """
    size = len(buf)
    ends = np.full(offsets.size, -1, dtype=np.int64)
    fits = offsets + 8 <= size
    if size == 0 or not fits.any():
        return ends
    view = np.frombuffer(buf, dtype=np.uint8)
    at = offsets[fits]
    words = [view[at + j].astype(np.uint32) << np.uint32(8 * (j % 4)) for j in range(8)]
    magic = words[0] | words[1] | words[2] | words[3]
    lrec = (words[4] | words[5] | words[6] | words[7]).astype(np.int64)
    end = at + 8 + lrec
    ok = (magic == MAGIC) & (lrec <= MAX_LENGTH) & (end <= size)
    ends[np.flatnonzero(fits)[ok]] = end[ok]
    return ends


class _KeyLookup:
    """key -> index position; O(1) for the usual contiguous keys, binary search otherwise."""

    def __init__(self, keys: np.ndarray, idx_path: str) -> None:
        self._idx_path = idx_path
        n = keys.size
        self._first = int(keys[0]) if n else 0
        self._contiguous = bool(
            n == 0 or np.array_equal(keys, np.arange(self._first, self._first + n))
        )
        if not self._contiguous:
            self._order = np.argsort(keys, kind="stable")
            self._sorted = keys[self._order]
            dup = np.flatnonzero(self._sorted[1:] == self._sorted[:-1])
            if dup.size:
                raise ValueError(f"{idx_path}: key {self._sorted[dup[0]]} appears more than once")
        self._n = n

    def position(self, key: int) -> int:
        key = int(key)
        if self._contiguous:
            pos = key - self._first
            if 0 <= pos < self._n:
                return pos
        else:
            pos = int(np.searchsorted(self._sorted, key))
            if pos < self._n and self._sorted[pos] == key:
                return int(self._order[pos])
        raise KeyError(f"key {key} is not in {self._idx_path}")

    def positions(self, keys: np.ndarray) -> np.ndarray:
        if self._contiguous:
            pos = keys - self._first
            ok = (pos >= 0) & (pos < self._n)
        else:
            at = np.minimum(np.searchsorted(self._sorted, keys), max(self._n - 1, 0))
            ok = (self._sorted[at] == keys) if self._n else np.zeros(keys.size, bool)
            pos = self._order[at] if self._n else at
        if not ok.all():
            raise KeyError(f"key {int(keys[~ok][0])} is not in {self._idx_path}")
        return pos.astype(np.int64)
