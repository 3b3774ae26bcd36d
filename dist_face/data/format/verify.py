"""Full scan of record files: framing, index, manifest, image decoding and labels.

Every problem becomes a :class:`BadRecord` naming the file, key and byte offset; nothing
raises on bad data, so one run reports everything it can reach.
"""

from __future__ import annotations

import dataclasses
import io
import os
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from dist_face.data.format.recordio import (
    CorruptRecordError,
    MappedFile,
    read_index,
    scalar_label,
    scan,
    unpack_record,
)
from dist_face.data.format.shards import records_checksum


@dataclasses.dataclass(frozen=True)
class BadRecord:
    """One problem found by a scan."""

    file: str
    """The ``.rec`` file (or the shard set's meta/manifest)."""
    key: int | None
    """The record's key from the ``.idx`` (None if not indexed)."""
    offset: int | None
    """Byte offset of the record in ``file`` (None for file-level problems)."""
    reason: str
    """What is wrong."""

    def __str__(self) -> str:
        return f"BAD {self.file} key={self.key} offset={self.offset}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Expected:
    """What a shard set's manifest and meta say about one ``.rec`` (all arrays by row)."""

    rows: np.ndarray
    """Global manifest row of each entry."""
    keys: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    labels: np.ndarray
    crc32s: np.ndarray
    labels_in_records: bool
    rec_bytes: int
    records_crc32: int


def verify_rec(
    rec_path: str,
    idx_path: str,
    num_classes: int | None,
    expected: Expected | None = None,
    decode: bool = True,
    skip_keys: frozenset[int] = frozenset(),
    progress: Callable[[int], object] | None = None,
) -> tuple[int, list[BadRecord]]:
    """Scan one ``.rec``/``.idx`` pair.

    Args:
        rec_path: The ``.rec`` file.
        idx_path: Its ``.idx``.
        num_classes: Labels must lie in ``[0, num_classes)``; None skips the range check.
        expected: Manifest rows and meta summary of this shard, if it belongs to a set.
        decode: Decode every image with Pillow.
        skip_keys: Keys of non-image records (InsightFace header and identity records),
            checked for framing only.
        progress: Called with the bytes of the ``.rec`` scanned since the last call.

    Returns:
        ``(records scanned, problems)``.
    """
    bad: list[BadRecord] = []
    try:
        keys, offsets = read_index(idx_path)
    except (OSError, ValueError) as err:
        return 0, [BadRecord(idx_path, None, None, str(err))]
    bad += _duplicates(idx_path, keys, offsets, np.arange(1, keys.size + 1), "line")
    key_at = dict(zip(offsets.tolist(), keys.tolist()))
    rows = {} if expected is None else {int(o): i for i, o in enumerate(expected.offsets)}
    buf = MappedFile(rec_path).get()
    if expected is not None:
        bad += _check_file(rec_path, buf, expected)
        bad += _duplicates(rec_path, expected.keys, expected.offsets, expected.rows, "row")
        for offset, row in rows.items():
            if offset in key_at and key_at[offset] != expected.keys[row]:
                bad.append(
                    BadRecord(
                        rec_path,
                        key_at[offset],
                        offset,
                        f"the .idx gives this record key {key_at[offset]}, the manifest key "
                        f"{expected.keys[row]} (swapped or edited .idx line)",
                    )
                )
    seen: set[int] = set()
    crcs: list[int] = []
    reported = 0  # bytes handed to progress so far
    for offset, payload in scan(buf, rec_path):
        if progress is not None and offset - reported >= _PROGRESS_BYTES:
            progress(offset - reported)
            reported = offset
        key = key_at.get(offset)
        if isinstance(payload, CorruptRecordError):
            bad.append(BadRecord(rec_path, key, offset, payload.reason))
            break
        seen.add(offset)
        crcs.append(zlib.crc32(payload))
        if key is None:
            bad.append(BadRecord(rec_path, None, offset, "record is not in the .idx"))
        if key in skip_keys:
            continue
        row = rows.get(offset)
        for reason in _check_payload(payload, crcs[-1], num_classes, expected, row, decode):
            bad.append(BadRecord(rec_path, key, offset, reason))
    for offset, key in key_at.items():
        if offset not in seen:
            bad.append(
                BadRecord(rec_path, key, offset, ".idx entry does not point at a record start")
            )
    for offset in rows.keys() - seen:
        bad.append(
            BadRecord(rec_path, key_at.get(offset), offset, "manifest row points at no record")
        )
    if expected is not None and records_checksum(crcs) != expected.records_crc32:
        bad.append(BadRecord(rec_path, None, None, "shard checksum differs from meta.json"))
    if progress is not None:
        progress(len(buf) - reported)
    return len(seen), bad


_PROGRESS_BYTES = 1 << 22  # progress callbacks every 4 MiB scanned


def _duplicates(
    file: str, keys: np.ndarray, offsets: np.ndarray, places: np.ndarray, unit: str
) -> list[BadRecord]:
    """A problem for every key or offset listed more than once.

    A duplicated entry makes a reader return one record for two keys, or a loader read a
    record twice per epoch.

    Args:
        file: The file to name in the report.
        keys: The entries' keys, int64 ``[n]``.
        offsets: The entries' byte offsets, int64 ``[n]``.
        places: Where each entry is listed (``.idx`` line or manifest row), ``[n]``.
        unit: ``line`` or ``row``.
    """
    bad = []
    for name, values in (("key", keys), ("offset", offsets)):
        uniq, first, counts = np.unique(values, return_index=True, return_counts=True)
        for value, at in zip(uniq[counts > 1], first[counts > 1]):
            where = ", ".join(str(int(p)) for p in places[values == value])
            source = "the .idx" if unit == "line" else "the manifest"
            bad.append(
                BadRecord(
                    file,
                    int(keys[at]),
                    int(offsets[at]),
                    f"{name} {value} is listed more than once by {source} ({unit}s {where})",
                )
            )
    return bad


def _check_file(rec_path: str, buf: Any, expected: Expected) -> list[BadRecord]:
    if len(buf) != expected.rec_bytes:
        return [
            BadRecord(
                rec_path, None, None, f"{len(buf)} bytes, meta.json says {expected.rec_bytes}"
            )
        ]
    return []


def _check_payload(
    payload: bytes,
    crc: int,
    num_classes: int | None,
    expected: Expected | None,
    row: int | None,
    decode: bool,
) -> list[str]:
    reasons = []
    try:
        header, image = unpack_record(payload)
        label = scalar_label(header)
    except CorruptRecordError as err:
        return [err.reason]
    if expected is not None:
        if row is None:
            return ["record has no manifest row"]
        if len(payload) != expected.lengths[row]:
            reasons.append(
                f"payload has {len(payload)} bytes, manifest says {expected.lengths[row]}"
            )
        if crc != expected.crc32s[row]:
            reasons.append("payload CRC-32 differs from the manifest")
        if expected.labels_in_records and label != expected.labels[row]:
            reasons.append(
                f"record label {label:g} differs from manifest label {expected.labels[row]}"
            )
        label = float(expected.labels[row])
    if not label.is_integer() or (num_classes is not None and not 0 <= label < num_classes):
        reasons.append(f"label {label:g} out of range [0, {num_classes})")
    if decode:
        problem = decode_problem(image)
        if problem:
            reasons.append(problem)
    return reasons


def decode_problem(image: bytes) -> str | None:
    """Why Pillow cannot decode ``image`` fully, or None when it can."""
    from PIL import Image, UnidentifiedImageError

    if not image:
        return "empty image (0 bytes)"
    try:
        with Image.open(io.BytesIO(image)) as im:
            im.load()
    except UnidentifiedImageError:
        return f"not a recognised image (Pillow cannot identify it; starts with {image[:8].hex()})"
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
        return f"undecodable image: {type(err).__name__}: {err}"
    return None


def verify_shard_set(
    root: str,
    decode: bool = True,
    workers: int = 1,
    progress: Callable[[int], object] | None = None,
) -> tuple[int, list[BadRecord]]:
    """Scan every shard of a shard set against its manifest and ``meta.json``.

    ``progress`` is called with bytes scanned (per shard when ``workers > 1``).

    Returns:
        ``(records scanned, problems)``.
    """
    from dist_face.data.format.shards import ShardSet

    try:
        shards = ShardSet.open(root, check_labels=False)
    except (OSError, ValueError) as err:
        return 0, [BadRecord(root, None, None, str(err))]
    jobs = []
    for s, info in enumerate(shards.meta.shards):
        rows = shards.shard_ids == s
        exp = Expected(
            np.flatnonzero(rows),
            shards.keys[rows],
            shards.offsets[rows],
            shards.lengths[rows],
            shards.labels[rows],
            shards.crc32s[rows],
            shards.meta.labels_in_records,
            info.rec_bytes,
            info.records_crc32,
        )
        jobs.append((shards.rec_path(s), shards.idx_path(s), shards.num_classes, exp, decode))
    return _run_jobs(jobs, workers, progress)


def _run_jobs(
    jobs: list[Any], workers: int, progress: Callable[[int], object] | None = None
) -> tuple[int, list[BadRecord]]:
    if workers > 1 and len(jobs) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            results = []
            for job, result in zip(jobs, pool.imap(_verify_job, jobs)):  # in job order
                results.append(result)
                if progress is not None:
                    progress(os.path.getsize(job[0]))
    else:
        results = [verify_rec(*job, progress=progress) for job in jobs]
    return sum(n for n, _ in results), [b for _, bad in results for b in bad]


def _verify_job(job: tuple[Any, ...]) -> tuple[int, list[BadRecord]]:
    return verify_rec(*job)


def verify_path(
    path: str,
    num_classes: int | None = None,
    decode: bool = True,
    workers: int = 1,
    progress: Callable[[int], object] | None = None,
) -> tuple[int, list[BadRecord]]:
    """Verify a shard set directory or a single ``.rec`` (with its ``.idx`` beside it).

    ``progress`` is called with the bytes of ``.rec`` scanned since its last call.
    """
    if os.path.isdir(path):
        return verify_shard_set(path, decode, workers, progress)
    idx = os.path.splitext(path)[0] + ".idx"
    keys = _insightface_keys(path, idx)
    return verify_rec(path, idx, num_classes, None, decode, keys, progress=progress)


def rec_bytes(path: str) -> int:
    """Bytes :func:`verify_path` will scan: every ``.rec`` of a shard set, or the ``.rec``."""
    if os.path.isdir(path):
        return sum(e.stat().st_size for e in os.scandir(path) if e.name.endswith(".rec"))
    return os.path.getsize(path) if os.path.isfile(path) else 0


def _insightface_keys(rec_path: str, idx_path: str) -> frozenset[int]:
    """Keys of the header and identity records of an InsightFace-style file (else empty)."""
    from dist_face.data.format.recordio import RecordReader

    try:
        header, image = unpack_record(RecordReader(rec_path, idx_path).read(0))
    except (KeyError, OSError, ValueError):
        return frozenset()
    if header.flag < 2 or image:
        return frozenset()
    first, end = (int(x) for x in header.label[:2])  # type: ignore[index]
    return frozenset([0, *range(first, end)])
