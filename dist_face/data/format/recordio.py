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

from dist_face.data.format.framing import (
    HEAD_UNPACK,
    ITER_CHUNK,
    MAGIC,
    MAX_LENGTH,
    CorruptRecordError,
    DataFileError,
    frame,
    frame_pieces,
    read_frame,
    read_index,
    read_payload,
    scan,
    single_part_ends,
)

__all__ = [
    "HEAD_UNPACK",
    "IR_SIZE",
    "MAGIC",
    "MAX_LENGTH",
    "CorruptRecordError",
    "DataFileError",
    "IRHeader",
    "MappedFile",
    "RecordReader",
    "RecordWriter",
    "frame",
    "pack_record",
    "read_frame",
    "read_index",
    "read_payload",
    "scalar_label",
    "scan",
    "unpack_record",
]

_IR = struct.Struct("<IfQQ")
IR_SIZE = _IR.size
"""Bytes of the IRHeader at the start of an image payload (24)."""
_FLOAT32_EXACT = 1 << 24  # integers above this are not all representable in float32


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


class MappedFile:
    """A read-only memory map of one file, opened lazily once per process.

    The map is dropped when pickled (spawned workers) and in forked children, so every
    process maps the file itself.
    """

    _live: ClassVar[weakref.WeakSet[MappedFile]] = weakref.WeakSet()

    def __init__(self, path: str) -> None:
        self.path = path
        self._buf: Any = None

    def get(self) -> Any:
        """The mapped file (``mmap``, or ``b""`` for an empty file), mapping it if needed."""
        if self._buf is None:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                # mmap refuses empty files; an empty bytes object behaves the same for reads.
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            MappedFile._live.add(self)
        return self._buf

    @staticmethod
    def _forget_all() -> None:
        for mapped in list(MappedFile._live):
            mapped._buf = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


os.register_at_fork(after_in_child=MappedFile._forget_all)


class RecordReader:
    """Random and sequential access to a ``.rec``/``.idx`` pair through a memory map.

    The file is mapped on first access in each process and the mapping is dropped when the
    reader is pickled, so DataLoader workers can share one reader.

    Args:
        rec_path: The ``.rec`` file.
        idx_path: Its ``.idx``; None derives it from ``rec_path`` (``x.rec`` -> ``x.idx``).

    Raises:
        FileNotFoundError: Either file is missing.
        DataFileError: A malformed ``.idx`` line, or a duplicate key (a ValueError).
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
        self._map = MappedFile(self.rec_path)
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
        offset = self._offsets.item(self._lookup.position(key))
        return read_payload(self._map.get(), offset, self.rec_path, key)

    def read_at(self, offset: int, key: int | None = None) -> bytes:
        """The payload of the record starting at byte ``offset``."""
        return read_payload(self._map.get(), int(offset), self.rec_path, key)

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        """``(key, payload)`` for every indexed record, in file (offset) order."""
        buf, path = self._map.get(), self.rec_path
        order = np.argsort(self._offsets, kind="stable")
        for start in range(0, order.size, ITER_CHUNK):
            chunk = order[start : start + ITER_CHUNK]
            keys, offsets = self._keys[chunk], self._offsets[chunk]
            ends = single_part_ends(buf, offsets)  # validated headers, -1 where not simple
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
                raise DataFileError(f"key {self._sorted[dup[0]]} appears more than once", idx_path)
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
