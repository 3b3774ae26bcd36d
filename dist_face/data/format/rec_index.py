"""Train on an existing MXNet/InsightFace ``.rec``/``.idx`` pair as it is, without repacking.

``data.root`` may name a ``.rec`` file, or a folder holding ``train.rec``/``train.idx`` (the
layout of MS1MV3, Glint360K, WebFace releases). On first use the index is scanned: every
image record's offset, payload length and label are read from its headers (a few bytes per
record through the memory map; the images themselves are not read or copied). The result is
cached as a small Parquet manifest next to the data, or under the user's cache directory when
the data's folder is not writable, and reused while the ``.rec`` and ``.idx`` keep their size
and modification time.

The scanned dataset is a one-shard :class:`~dist_face.data.format.shards.ShardSet` whose only shard
is the ``.rec`` itself, so every loader (torch, DALI) and every rank read it exactly like a shard
set. The file keeps its own order; loaders shuffle per epoch (torch: globally by index; DALI:
within a window), see the README on when resharding is still preferable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from dist_face.cache_dir import default_cache_dir
from dist_face.data.format.rec_labels import record_labels
from dist_face.data.format.recordio import (
    IR_SIZE,
    MAGIC,
    MAX_LENGTH,
    CorruptRecordError,
    RecordReader,
    read_frame,
    unpack_record,
)
from dist_face.data.format.shards import ShardInfo, ShardMeta, ShardSet, find_rec

logger = logging.getLogger(__name__)

CACHE_SUFFIX = ".dist_face-manifest.parquet"
"""Name of the cached manifest next to the data: ``<stem>`` + this suffix."""
_KEY_FIELD = b"dist_face.rec_key"
_VERSION = 1  # bump when the cached columns change
_COLUMNS = ("key", "offset", "length", "label")


def open_dataset(root: str | os.PathLike[str], check_labels: bool = True) -> ShardSet:
    """Open ``root`` for training: a shard set, a ``.rec`` file, or a folder with ``train.rec``.

    Args:
        root: The configured ``data.root``.
        check_labels: Passed to :meth:`ShardSet.open` for shard sets (a scanned ``.rec`` is
            always in range: its class count is derived from its labels).

    Raises:
        FileNotFoundError: Nothing usable at ``root``.
        ValueError: A malformed shard set, index or record header.
    """
    rec = find_rec(root)
    if rec is None:
        return ShardSet.open(root, check_labels=check_labels)
    return open_rec(rec)


def open_rec(rec_path: str, cache_dir: str | os.PathLike[str] | None = None) -> ShardSet:
    """The one-shard set over ``rec_path``, from its cached manifest or a fresh index scan.

    Args:
        rec_path: The ``.rec`` file; its index is the ``.idx`` with the same stem.
        cache_dir: Where to cache the manifest when the data's folder is not writable
            (default :func:`default_cache_dir`).

    Raises:
        FileNotFoundError: The ``.rec`` or its ``.idx`` is missing.
        ValueError: The index or a record header is malformed (names file, key, offset).
    """
    rec_path = os.path.abspath(rec_path)
    idx_path = os.path.splitext(rec_path)[0] + ".idx"
    for path in (rec_path, idx_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"record file {path} does not exist")
    key = _file_key(rec_path, idx_path)
    places = cache_paths(rec_path, cache_dir)
    for place in places:
        loaded = _load(place, key)
        if loaded is not None:
            return _as_shard_set(rec_path, *loaded)
    for target in _writable(places):
        try:
            with _locked(target + ".lock"):  # one scan per machine; the others wait, then load
                loaded = _load(target, key)
                if loaded is None:
                    loaded = _scan_and_save(rec_path, target, key)
        except OSError as err:  # a folder that looked writable and is not: try the next one
            logger.warning("cannot cache the manifest of %s in %s: %s", rec_path, target, err)
            continue
        return _as_shard_set(rec_path, *loaded)
    logger.warning("no writable cache for the manifest of %s: scanning in memory", rec_path)
    return _as_shard_set(rec_path, *scan_rec(rec_path))


def _scan_and_save(
    rec_path: str, target: str, key: dict[str, int]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    start = time.perf_counter()
    columns, meta = scan_rec(rec_path)
    _save(target, key, columns, meta)
    logger.info(
        "indexed %s: %d images of %d classes in %.1f s; manifest cached in %s",
        rec_path,
        columns["key"].size,
        meta["num_classes"],
        time.perf_counter() - start,
        target,
    )
    return columns, meta


def cache_paths(rec_path: str, cache_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Where the manifest of ``rec_path`` is looked for, in order: beside it, then the cache."""
    rec_path = os.path.abspath(rec_path)
    stem = os.path.splitext(os.path.basename(rec_path))[0]
    beside = os.path.join(os.path.dirname(rec_path), stem + CACHE_SUFFIX)
    tag = hashlib.sha256(os.fsencode(rec_path)).hexdigest()[:16]
    folder = os.path.join(os.fspath(cache_dir or default_cache_dir()), "rec_manifests")
    return [beside, os.path.join(folder, f"{stem}-{tag}.parquet")]


def scan_rec(rec_path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Scan the index of ``rec_path``: image records' keys, offsets, lengths and labels.

    InsightFace's header record (key 0, a ``[first identity key, end)`` label pair and no
    image) and its identity-range records are recognised and left out; without them every
    indexed record is an image. Records are listed in file order (DALI needs ascending
    offsets).

    Returns:
        ``(columns, meta)``: int64 arrays ``key``, ``offset``, ``length`` (payload bytes),
        ``label``, each of shape ``(num_images,)``; ``meta`` holds ``num_classes`` and
        ``labels_in_records`` (False when some record stores a label array, which DALI's
        reader would return whole).
    """
    reader = RecordReader(rec_path)
    keys, num_identities = _image_keys(reader)
    offsets = reader.offsets[reader.positions(keys)]
    order = np.argsort(offsets, kind="stable")
    keys, offsets = keys[order], offsets[order]
    labels = record_labels(reader, keys)
    buf = reader.buffer()
    lengths, flags = _headers(np.frombuffer(buf, dtype=np.uint8), offsets)
    for i in np.flatnonzero(lengths < 0).tolist():  # split records: reassemble to measure
        payload = read_frame(buf, int(offsets[i]), reader.rec_path, int(keys[i]))[0]
        lengths[i] = len(payload)
        flags[i] = int.from_bytes(payload[:4], "little")
    columns = {"key": keys, "offset": offsets, "length": lengths, "label": labels}
    num_classes = max(int(labels.max()) + 1 if labels.size else 0, num_identities)
    meta = {"num_classes": num_classes, "labels_in_records": bool((flags == 0).all())}
    return columns, meta


def _image_keys(reader: RecordReader) -> tuple[np.ndarray, int]:
    """Keys of the image records and the number of identity records (0 without a header).

    InsightFace's header record is key 0 with a label pair ``[N + 1, N + 1 + K]`` and no
    image: images are keys ``1..N``, identity records ``N + 1..N + K``. Anything else is a
    headerless file whose every indexed record is an image.
    """
    try:
        header, image = unpack_record(reader.read(0))
    except (KeyError, CorruptRecordError):
        header, image = None, b""
    if header is None or header.flag < 2 or image:
        return reader.keys.copy(), 0
    first, end = (int(x) for x in header.label[:2])  # type: ignore[index]
    keys = np.arange(1, first, dtype=np.int64)
    try:
        reader.positions(keys)
    except KeyError as err:
        raise ValueError(
            f"{reader.idx_path}: the header record says images are keys 1..{first - 1}, but "
            f"{err.args[0]}"
        ) from None
    return keys, max(end - first, 0)


_CHUNK = 1 << 20


def _headers(view: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Payload length and IRHeader flag of each single-part record; -1 where it is split."""
    lengths = np.full(offsets.size, -1, dtype=np.int64)
    flags = np.zeros(offsets.size, dtype=np.int64)
    for start in range(0, offsets.size, _CHUNK):  # bounded temporaries for huge files
        at = offsets[start : start + _CHUNK]
        fits = at + 8 + IR_SIZE <= view.size  # record_labels already refused shorter ones
        o = at[fits]
        lrec = _u32(view, o + 4)
        single = (_u32(view, o) == MAGIC) & (lrec <= MAX_LENGTH)
        part = np.flatnonzero(fits)[single]
        lengths[start + part] = lrec[single]
        flags[start + part] = _u32(view, o[single] + 8)
    return lengths, flags


def _u32(view: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Little-endian uint32 at byte positions ``at`` (any alignment), as int64."""
    b = [view[at + j].astype(np.int64) for j in range(4)]
    return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)


def _file_key(rec_path: str, idx_path: str) -> dict[str, int]:
    """What the cache is keyed by: size and modification time of both files."""
    key = {"version": _VERSION}
    for name, path in (("rec", rec_path), ("idx", idx_path)):
        st = os.stat(path)
        key[f"{name}_bytes"] = st.st_size
        key[f"{name}_mtime_ns"] = st.st_mtime_ns
    return key


def _load(path: str, key: dict[str, int]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The cached columns and meta at ``path`` if present and keyed by ``key``, else None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        return None
    try:
        table = pq.read_table(path)
        stored = json.loads((table.schema.metadata or {})[_KEY_FIELD])
    except (OSError, KeyError, ValueError, pa.ArrowException):
        return None  # unreadable or foreign: scan again and replace it
    if stored.get("key") != key:
        return None
    columns = {name: table.column(name).to_numpy().astype(np.int64) for name in _COLUMNS}
    return columns, stored["meta"]


def _save(path: str, key: dict[str, int], columns: dict[str, np.ndarray], meta: dict) -> None:
    """Write the manifest atomically (write + rename), the key in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({name: pa.array(columns[name]) for name in _COLUMNS})
    table = table.replace_schema_metadata({_KEY_FIELD: json.dumps({"key": key, "meta": meta})})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _writable(places: list[str]) -> Iterator[str]:
    """The cache paths whose folder exists (or can be made) and is writable, in order.

    Lazy, so the user cache folder is only created when the data's folder is not writable.
    """
    for place in places:
        folder = os.path.dirname(place)
        with contextlib.suppress(OSError):
            os.makedirs(folder, exist_ok=True)
        if os.path.isdir(folder) and os.access(folder, os.W_OK):
            yield place


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block."""
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class RecFileSet(ShardSet):
    """A one-shard set whose shard is an existing ``.rec``: it has no stored checksums.

    Packed shard sets carry every payload's CRC-32 in their manifest; a scanned ``.rec`` does
    not (computing them would read every image), so reads skip that comparison. Framing,
    lengths and the header label are still checked against the scan.
    """

    def read(self, i: int, check_crc: bool = True) -> bytes:
        """Payload of record ``i``; ``check_crc`` is ignored (no checksums to compare)."""
        return super().read(i, check_crc=False)


def _as_shard_set(rec_path: str, columns: dict[str, np.ndarray], meta: dict) -> ShardSet:
    """A one-shard :class:`ShardSet` whose shard is ``rec_path`` itself."""
    n = int(columns["key"].size)
    if n == 0:
        raise ValueError(f"{rec_path} holds no image records")
    info = ShardInfo(
        name=os.path.splitext(os.path.basename(rec_path))[0],
        num_records=n,
        rec_bytes=os.path.getsize(rec_path),
        records_crc32=0,  # not computed: that would read every image (see RecFileSet)
    )
    shard_meta = ShardMeta(
        num_classes=int(meta["num_classes"]),
        num_images=n,
        image_shape=None,
        shards=[info],
        labels_in_records=bool(meta["labels_in_records"]),
    )
    full = {
        "shard": np.zeros(n, np.int32),
        "crc32": np.zeros(n, np.uint32),
        **columns,
    }
    return RecFileSet(os.path.dirname(rec_path), shard_meta, full)
