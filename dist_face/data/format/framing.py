r"""RecordIO framing (dmlc-core): record headers, split records, index files, located errors.

A record on disk is ``uint32 magic 0xCED7230A``, ``uint32 lrecord = (cflag << 29) | length``,
the payload, and zero padding to 4 bytes (little-endian). A payload that contains the magic
word at a 4-byte-aligned offset is written as several parts (cflag 1 first, 2 middle, 3 last)
with the magic word left out; readers re-insert it. The ``.idx`` file holds ``key<TAB>offset``
lines. :mod:`dist_face.data.format.recordio` is the public face of this module.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np

MAGIC = 0xCED7230A
"""dmlc-core's record magic word (bytes on disk ``0A 23 D7 CE``)."""
MAX_LENGTH = (1 << 29) - 1
"""Largest payload part a record header can describe, in bytes."""
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEAD = struct.Struct("<II")
HEAD_UNPACK = _HEAD.unpack_from
"""Unpack ``(magic, lrecord)`` from a buffer at an offset."""
_PADDING = [b"", b"\0", b"\0\0", b"\0\0\0"]


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


class DataFileError(ValueError):
    """A shard-set file (``.idx``, manifest, ``meta.json``) is unreadable or inconsistent.

    Library errors (pyarrow, json, struct) are wrapped in this class so that every message
    names the file and, where one applies, the line, row or key.

    Attributes:
        path: The file.
        where: ``row 17``, ``key 'num_classes'``… or None for the whole file.
        line: 1-based line of a text file (shown as ``path:line``), or None.
        reason: What is wrong, without the location.
    """

    def __init__(
        self,
        reason: str,
        path: str | os.PathLike[str],
        where: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path, self.where, self.line, self.reason = os.fspath(path), where, line, reason
        at = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{at}: {where}: {reason}" if where else f"{at}: {reason}")


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
        magic, lrec = HEAD_UNPACK(buf, offset)
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
        magic, lrec = HEAD_UNPACK(buf, offset)
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
        DataFileError: A line that is not two int64 integers, or a negative offset, naming
            the file and line.
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
    except pa.ArrowException as err:
        _diagnose_index(idx_path)
        raise DataFileError(f"not a 'key\\toffset' index: {err}", idx_path) from None
    if table.column("key").null_count or table.column("offset").null_count:
        _diagnose_index(idx_path)  # an empty field parses as null, not as an error
    keys = table.column("key").to_numpy()
    offsets = table.column("offset").to_numpy()
    if (offsets < 0).any():
        line = int(np.flatnonzero(offsets < 0)[0]) + 1
        raise DataFileError(f"negative offset {offsets[line - 1]}", idx_path, line=line)
    return keys.astype(np.int64, copy=False), offsets.astype(np.int64, copy=False)


def _diagnose_index(idx_path: str | os.PathLike[str]) -> None:
    """Raise a DataFileError naming the first malformed line of an index file."""
    with open(idx_path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            fields = line.rstrip(b"\r\n").split(b"\t")
            if len(fields) != 2 or not all(_is_int64(x) for x in fields):
                raise DataFileError(
                    f"expected 'key\\toffset' (two int64), got {line[:80]!r}",
                    idx_path,
                    line=line_no,
                )


def _is_int64(token: bytes) -> bool:
    try:
        value = int(token)
    except ValueError:
        return False
    return -(1 << 63) <= value < (1 << 63)


ITER_CHUNK = 1 << 16  # records whose headers are checked at once while iterating


def single_part_ends(buf: Any, offsets: np.ndarray) -> np.ndarray:
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
