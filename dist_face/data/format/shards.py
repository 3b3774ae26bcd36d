"""A sharded dataset: N headerless ``.rec/.idx`` pairs, a Parquet manifest and a JSON summary.

Layout of a shard set directory::

    shard-00000-of-00004.rec / .idx    image records only (DALI reads them as they are)
    manifest.parquet                   one row per record, in global order
    meta.json                          written last: its presence marks a complete set

Manifest columns: ``shard`` (int32), ``key`` (int64, the record's key in its ``.idx``),
``offset`` (int64, byte offset in the ``.rec``), ``length`` (int64, payload bytes), ``label``
(int64), ``source`` (string, where the image came from) and ``crc32`` (uint32 of the payload).
Labels are read from the manifest, so relabelling rewrites the manifest and never the images
(``meta.labels_in_records`` then turns False: record headers keep the old labels).
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from dist_face.data.format.recordio import (
    HEAD_UNPACK,
    MAGIC,
    CorruptRecordError,
    DataFileError,
    MappedFile,
    RecordWriter,
    read_frame,
    scalar_label,
    unpack_record,
)

META_NAME = "meta.json"
MANIFEST_NAME = "manifest.parquet"
FORMAT = "dist_face.shards"
_NUMERIC = ["shard", "key", "offset", "length", "label", "crc32"]
_DTYPES = {
    "shard": np.int32,
    "key": np.int64,
    "offset": np.int64,
    "length": np.int64,
    "label": np.int64,
    "crc32": np.uint32,
}


def shard_name(index: int, num_shards: int) -> str:
    """File stem of shard ``index`` of ``num_shards`` (``shard-00003-of-00008``)."""
    return f"shard-{index:05d}-of-{num_shards:05d}"


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard's summary in ``meta.json``."""

    name: str
    """File stem; the files are ``<name>.rec`` and ``<name>.idx``."""
    num_records: int
    """Records in the shard."""
    rec_bytes: int
    """Size of the ``.rec`` in bytes."""
    records_crc32: int
    """Checksum of the shard's content: zlib CRC-32 of its records' payload CRC-32s
    (little-endian uint32, in key order). Cheaper than a whole-file CRC while packing, and
    ``verify`` recomputes it from the payloads it reads."""


@dataclasses.dataclass(frozen=True)
class ShardMeta:
    """The contents of ``meta.json``."""

    num_classes: int
    """Number of identities; every label is in ``[0, num_classes)``."""
    num_images: int
    """Records over all shards (= manifest rows)."""
    image_shape: list[int] | None
    """``[height, width, channels]`` shared by all images checked, or None if mixed/unknown."""
    shards: list[ShardInfo]
    """Per-shard names, counts and checksums, in shard order."""
    labels_in_records: bool = True
    """Whether record headers still hold the manifest labels (False after a relabel)."""
    shuffled: bool = False
    """Whether records were globally shuffled when packed."""
    seed: int | None = None
    """Shuffle seed."""
    format: str = FORMAT
    """Format tag."""
    version: int = 1
    """Format version."""
    manifest_crc32: int | None = None
    """zlib CRC-32 of the ``manifest.parquet`` file's bytes; :meth:`ShardSet.open` checks it
    (None in sets packed before it was recorded: not checked)."""

    def to_json(self) -> str:
        """Serialize to indented JSON."""
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, path: str) -> ShardMeta:
        """Parse ``meta.json`` text, checking the type and range of every field.

        Raises:
            DataFileError: Not JSON, not a shard set summary, or a field of the wrong type or
                out of range; names ``path`` and the key.
        """
        try:
            raw = json.loads(text)
        except ValueError as err:
            raise DataFileError(f"not valid JSON: {err}", path) from None
        if isinstance(raw, dict) and raw.get("format", FORMAT) != FORMAT:
            raise DataFileError(
                f"is {raw['format']!r}, expected {FORMAT!r}"[:200], path, "key 'format'"
            )
        _check_fields(cls, raw, path, "")
        if not raw["shards"]:
            raise DataFileError("lists no shard", path, "key 'shards'")
        for k, shard in enumerate(raw["shards"]):
            _check_fields(ShardInfo, shard, path, f"shards[{k}].")
            name = shard["name"]
            if not name or os.path.basename(name) != name or name in (".", ".."):
                raise DataFileError(
                    f"{name!r} is not a plain file name", path, f"key 'shards[{k}].name'"
                )
        meta = cls(**{**raw, "shards": [ShardInfo(**s) for s in raw["shards"]]})
        for key, value, low, high in (
            ("num_classes", meta.num_classes, 1, None),
            ("num_images", meta.num_images, 0, None),
            ("manifest_crc32", meta.manifest_crc32, 0, 1 << 32),
            *(
                (f"shards[{k}].{f}", getattr(info, f), 0, 1 << 32 if f == "records_crc32" else None)
                for k, info in enumerate(meta.shards)
                for f in ("num_records", "rec_bytes", "records_crc32")
            ),
        ):
            if value is not None and (value < low or (high is not None and value >= high)):
                bound = f"[{low}, {high})" if high is not None else f">= {low}"
                raise DataFileError(f"{value} is not {bound}", path, f"key {key!r}")
        return meta


def _check_fields(cls: type, raw: Any, path: str, prefix: str) -> None:
    """Raise DataFileError unless ``raw`` is a dict of ``cls``'s fields with their types."""
    if not isinstance(raw, dict):
        where = f"key {prefix[:-1]!r}" if prefix else None
        raise DataFileError(f"expected a JSON object, got {type(raw).__name__}", path, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for name in raw.keys() - fields.keys():
        raise DataFileError("unknown field", path, f"key '{prefix}{name}'")
    for name, f in fields.items():
        if name not in raw:
            if f.default is dataclasses.MISSING:
                raise DataFileError("missing", path, f"key '{prefix}{name}'")
            continue
        if not _has_type(raw[name], hints[name]):
            raise DataFileError(
                f"expected {_type_name(hints[name])}, got {raw[name]!r}"[:200],
                path,
                f"key '{prefix}{name}'",
            )


def _has_type(value: Any, hint: Any) -> bool:
    """Whether a JSON value matches a field annotation (int excludes bool)."""
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, dict)  # checked field by field by the caller
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("dist_face.data.format.shards.", "")


class ShardSet:
    """Read access to a shard set: global record ``i`` in manifest order via memory maps.

    Only the numeric manifest columns are held in memory (about 40 bytes per record); the
    source column is read on demand by :attr:`manifest`. Maps open lazily per process and are
    dropped on pickling, so DataLoader workers can share one instance.
    """

    def __init__(self, root: str, meta: ShardMeta, columns: dict[str, np.ndarray]) -> None:
        self.root = root
        self.meta = meta
        self.shard_ids = columns["shard"].astype(np.int32, copy=False)
        self.keys = columns["key"].astype(np.int64, copy=False)
        self.offsets = columns["offset"].astype(np.int64, copy=False)
        self.lengths = columns["length"].astype(np.int64, copy=False)
        self.labels = columns["label"].astype(np.int64, copy=False)
        self.crc32s = columns["crc32"].astype(np.uint32, copy=False)
        self._maps = [MappedFile(self.rec_path(s)) for s in range(len(meta.shards))]

    @classmethod
    def open(cls, root: str | os.PathLike[str], check_labels: bool = True) -> ShardSet:
        """Open the shard set in directory ``root``.

        Args:
            root: The shard set directory.
            check_labels: Refuse a manifest label outside ``[0, num_classes)`` (``verify``
                turns this off to report every such record instead).

        Raises:
            FileNotFoundError: No ``meta.json`` (not a shard set, or packing did not finish),
                or a shard file is missing.
            DataFileError: ``meta.json`` or the manifest is unreadable, malformed or
                inconsistent (a ValueError naming the file and the key or row).
        """
        root = os.fspath(root)
        meta_path = os.path.join(root, META_NAME)
        hint = not_a_shard_set_hint(root)
        if hint is not None:
            raise FileNotFoundError(hint)
        if not os.path.exists(root):
            raise FileNotFoundError(f"{os.path.abspath(root)} does not exist")
        if not os.path.isfile(meta_path):
            from dist_face.data.packing.image_files import is_image_folder

            if is_image_folder(root):
                raise FileNotFoundError(
                    f"{root} is an image folder; pack it first: dist-face-pack {root} OUT"
                )
            raise FileNotFoundError(
                f"{meta_path} does not exist: {root} is not a complete shard set "
                "(packing may not have finished)"
            )
        try:
            with open(meta_path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as err:
            raise DataFileError(f"not UTF-8 text: {err}", meta_path) from None
        meta = ShardMeta.from_json(text, meta_path)
        shard_set = cls(root, meta, read_manifest(root, meta))
        shard_set._check_consistent(check_labels)
        return shard_set

    def _check_consistent(self, check_labels: bool) -> None:
        where = os.path.join(self.root, MANIFEST_NAME)

        def first(bad: np.ndarray) -> str:
            return f"row {int(np.flatnonzero(bad)[0])}"

        if len(self) != self.meta.num_images:
            raise DataFileError(
                f"{len(self)} rows but meta.json says {self.meta.num_images}", where
            )
        bad_shard = (self.shard_ids < 0) | (self.shard_ids >= self.num_shards)
        if bad_shard.any():
            raise DataFileError(
                f"shard {self.shard_ids[bad_shard][0]} is not one of the {self.num_shards} "
                "shards of meta.json",
                where,
                first(bad_shard),
            )
        for name, column in (
            ("key", self.keys),
            ("offset", self.offsets),
            ("length", self.lengths),
        ):
            if (column < 0).any():
                raise DataFileError(
                    f"negative {name} {column[column < 0][0]}", where, first(column < 0)
                )
        if (
            check_labels
            and self.labels.size
            and (self.labels.min() < 0 or self.labels.max() >= self.num_classes)
        ):
            bad = int(np.flatnonzero((self.labels < 0) | (self.labels >= self.num_classes))[0])
            raise DataFileError(
                f"row {bad} (shard {self.shard_ids[bad]}, key {self.keys[bad]}) has label "
                f"{self.labels[bad]}, outside [0, {self.num_classes}) of meta.json",
                where,
            )
        counts = np.bincount(self.shard_ids, minlength=len(self.meta.shards))
        rec_bytes = np.array([info.rec_bytes for info in self.meta.shards], dtype=np.int64)
        room = rec_bytes[self.shard_ids] - 8  # compared one term at a time: no int64 overflow
        past_end = (self.offsets > room) | (self.lengths > room - np.minimum(self.offsets, room))
        if past_end.any():
            raise DataFileError(
                "record runs past the end of its .rec (offset + 8 + length > rec_bytes of "
                "meta.json)",
                where,
                first(past_end),
            )
        for s, info in enumerate(self.meta.shards):
            for path in (self.rec_path(s), self.idx_path(s)):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"shard file {path} listed in meta.json is missing")
            if counts[s] != info.num_records:
                raise DataFileError(
                    f"shard {info.name} has {counts[s]} rows, meta.json says {info.num_records}",
                    where,
                )
            if os.path.getsize(self.rec_path(s)) != info.rec_bytes:
                raise DataFileError(
                    f"{os.path.getsize(self.rec_path(s))} bytes, meta.json says "
                    f"{info.rec_bytes} (truncated or replaced?)",
                    self.rec_path(s),
                )

    def __len__(self) -> int:
        return int(self.labels.size)

    @property
    def num_classes(self) -> int:
        """Number of identities."""
        return self.meta.num_classes

    @property
    def num_shards(self) -> int:
        """Number of ``.rec/.idx`` pairs."""
        return len(self.meta.shards)

    def rec_path(self, shard: int) -> str:
        """Path of shard ``shard``'s ``.rec``."""
        return os.path.join(self.root, self.meta.shards[shard].name + ".rec")

    def idx_path(self, shard: int) -> str:
        """Path of shard ``shard``'s ``.idx``."""
        return os.path.join(self.root, self.meta.shards[shard].name + ".idx")

    @property
    def manifest(self) -> Any:
        """The whole manifest as a ``pyarrow.Table`` (read from disk on each access)."""
        import pyarrow.parquet as pq

        return pq.read_table(os.path.join(self.root, MANIFEST_NAME))

    def read(self, i: int, check_crc: bool = True) -> bytes:
        """Payload of global record ``i`` (IRHeader + image bytes).

        Args:
            i: Global record number (manifest row).
            check_crc: Compare the payload's CRC-32 with the manifest's (about 1 GB/s of
                zlib; a flipped bit in an image often still decodes, to other pixels).

        Raises:
            IndexError: ``i`` outside ``[0, len)``.
            CorruptRecordError: The record cannot be framed, or its length or CRC-32
                disagrees with the manifest (names the shard file, key and offset).
        """
        payload = self._read(i)
        if check_crc and zlib.crc32(payload) != self.crc32s.item(i):
            raise CorruptRecordError(
                f"payload CRC-32 {zlib.crc32(payload):08x} differs from the manifest's "
                f"{self.crc32s.item(i):08x}",
                self.rec_path(self.shard_ids.item(i)),
                self.keys.item(i),
                self.offsets.item(i),
            )
        return payload

    def _read(self, i: int) -> bytes:
        if not 0 <= i < self.labels.size:
            raise IndexError(f"record {i} is outside [0, {len(self)}) of {self.root}")
        shard, offset, length = self.shard_ids.item(i), self.offsets.item(i), self.lengths.item(i)
        buf = self._maps[shard].get()
        # Fast path: the header must be exactly (magic, length) of a single-part record.
        if offset + 8 + length <= len(buf) and HEAD_UNPACK(buf, offset) == (MAGIC, length):
            return buf[offset + 8 : offset + 8 + length]
        key, path = int(self.keys[i]), self.rec_path(shard)
        payload, _ = read_frame(buf, offset, path, key)
        if len(payload) != length:
            raise CorruptRecordError(
                f"payload has {len(payload)} bytes, the manifest says {self.lengths[i]}",
                path,
                key,
                offset,
            )
        return payload

    def read_image(self, i: int, check_crc: bool = True) -> tuple[bytes, int]:
        """``(encoded image bytes, label)`` of global record ``i``; the label is the manifest's.

        Args:
            i: Global record number (manifest row).
            check_crc: See :meth:`read`.

        Raises:
            CorruptRecordError: As :meth:`read`; also a payload shorter than its header, or a
                record header label that differs from the manifest's while
                ``meta.labels_in_records`` (a manifest row pointing at another record).
        """
        payload = self.read(i, check_crc)
        label = self.labels.item(i)
        try:
            header, image = unpack_record(payload)
            if self.meta.labels_in_records and scalar_label(header) != label:
                raise CorruptRecordError(
                    f"record header label {scalar_label(header):g} differs from the "
                    f"manifest label {label}"
                )
        except CorruptRecordError as err:
            shard = int(self.shard_ids[i])
            raise err.located(
                self.rec_path(shard), int(self.keys[i]), int(self.offsets[i])
            ) from None
        return image, label


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ShardResult:
    """What writing one shard produced: its summary and its manifest rows."""

    index: int
    info: ShardInfo
    columns: dict[str, Any]


class ShardWriter:
    """Write one shard under a temporary name; :func:`commit_shard_set` renames it.

    Args:
        out_dir: The shard set directory.
        index: Shard number.
        num_shards: Total shards in the set.
    """

    def __init__(self, out_dir: str, index: int, num_shards: int) -> None:
        self.index = index
        self.name = shard_name(index, num_shards)
        self._writer = RecordWriter(*temp_paths(out_dir, self.name))
        self._cols: dict[str, list[Any]] = {c: [] for c in (*_NUMERIC, "source")}

    def add(self, payload: bytes, label: int, source: str) -> None:
        """Append one record; its key is its position in the shard."""
        key = len(self._cols["key"])
        offset = self._writer.write(key, payload)
        for name, value in (
            ("shard", self.index),
            ("key", key),
            ("offset", offset),
            ("length", len(payload)),
            ("label", int(label)),
            ("crc32", zlib.crc32(payload)),
            ("source", source),
        ):
            self._cols[name].append(value)

    def finish(self) -> ShardResult:
        """Close the temporary files and return the shard's summary and rows."""
        self._writer.close()
        crcs = self._cols["crc32"]
        info = ShardInfo(self.name, len(crcs), self._writer.tell, records_checksum(crcs))
        # numpy columns pickle compactly when a packing process hands them back
        columns: dict[str, Any] = {
            name: np.asarray(self._cols[name], dtype=dtype) for name, dtype in _DTYPES.items()
        }
        columns["source"] = self._cols["source"]
        return ShardResult(self.index, info, columns)

    def abort(self) -> None:
        """Close and delete the temporary files."""
        self._writer.close()
        for path in (self._writer.rec_path, self._writer.idx_path):
            if path and os.path.exists(path):
                os.remove(path)


def records_checksum(crcs: Sequence[int] | np.ndarray) -> int:
    """A shard's checksum from its records' payload CRC-32s (in key order)."""
    return zlib.crc32(np.asarray(crcs, dtype="<u4").tobytes())


def temp_paths(out_dir: str, name: str) -> tuple[str, str]:
    """Temporary ``.rec``/``.idx`` paths of a shard being written."""
    return (os.path.join(out_dir, f".{name}.rec.tmp"), os.path.join(out_dir, f".{name}.idx.tmp"))


def prepare_output(out_dir: str, overwrite: bool) -> None:
    """Create ``out_dir``; refuse a non-empty one unless ``overwrite`` (then empty it first)."""
    os.makedirs(out_dir, exist_ok=True)
    existing = os.listdir(out_dir)
    if existing and not overwrite:
        raise FileExistsError(f"output directory {out_dir} is not empty (pass --overwrite)")
    if META_NAME in existing:  # drop the completeness marker first: a crash now reads incomplete
        os.remove(os.path.join(out_dir, META_NAME))
    for name in existing:
        path = os.path.join(out_dir, name)
        if os.path.isfile(path) and (
            name.startswith(("shard-", ".shard-")) or name == MANIFEST_NAME
        ):
            os.remove(path)


def commit_shard_set(
    out_dir: str,
    results: Sequence[ShardResult],
    *,
    num_classes: int,
    image_shape: list[int] | None,
    shuffled: bool,
    seed: int | None,
    labels_in_records: bool = True,
) -> ShardMeta:
    """Rename the finished shards, write the manifest, then ``meta.json`` last.

    Until ``meta.json`` exists the directory is not a shard set, so a crash at any point
    leaves nothing that :meth:`ShardSet.open` accepts.
    """
    import pyarrow as pa

    results = sorted(results, key=lambda r: r.index)
    for r in results:
        tmp_rec, tmp_idx = temp_paths(out_dir, r.info.name)
        os.replace(tmp_rec, os.path.join(out_dir, r.info.name + ".rec"))
        os.replace(tmp_idx, os.path.join(out_dir, r.info.name + ".idx"))
    arrays = {
        name: pa.array(np.concatenate([r.columns[name] for r in results]).astype(dtype))
        for name, dtype in _DTYPES.items()
    }
    arrays["source"] = pa.array([v for r in results for v in r.columns["source"]], pa.string())
    arrays = {
        name: arrays[name]
        for name in ("shard", "key", "offset", "length", "label", "source", "crc32")
    }
    labels = np.asarray(arrays["label"])
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes})"
        )
    manifest_crc32 = write_manifest(out_dir, pa.table(arrays))
    meta = ShardMeta(
        num_classes=num_classes,
        num_images=int(labels.size),
        image_shape=image_shape,
        shards=[r.info for r in results],
        labels_in_records=labels_in_records,
        shuffled=shuffled,
        seed=seed,
        manifest_crc32=manifest_crc32,
    )
    write_meta(out_dir, meta)
    return meta


def read_manifest(root: str, meta: ShardMeta) -> dict[str, np.ndarray]:
    """The numeric manifest columns of the shard set in ``root``, checked against ``meta``.

    Returns:
        Column name -> array of ``meta.num_images`` rows, in the dtypes of the format.

    Raises:
        FileNotFoundError: No manifest.
        DataFileError: The file's CRC-32 differs from ``meta.manifest_crc32``, Parquet cannot
            read it, or a column is missing, null or of the wrong type (names the column
            and row).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(root, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"manifest {path} listed by meta.json is missing")
    if meta.manifest_crc32 is not None and file_crc32(path) != meta.manifest_crc32:
        raise DataFileError(
            f"file CRC-32 {file_crc32(path):08x} differs from meta.json's manifest_crc32 "
            f"{meta.manifest_crc32:08x} (edited or damaged)",
            path,
        )
    try:
        missing = [c for c in _NUMERIC if c not in pq.read_schema(path).names]
        if missing:
            raise DataFileError(f"has no column {', '.join(map(repr, missing))}", path)
        table = pq.read_table(path, columns=_NUMERIC)
    except (pa.ArrowException, OSError) as err:  # a damaged page is an OSError in pyarrow
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataFileError(f"Parquet cannot read it: {first_line}", path) from None
    columns = {}
    for name, dtype in _DTYPES.items():
        column = table.column(name)
        if not (pa.types.is_integer(column.type)):
            raise DataFileError(
                f"has type {column.type}, expected an integer", path, f"column {name!r}"
            )
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataFileError("is null", path, f"column {name!r}, row {row}")
        values = column.to_numpy()
        info = np.iinfo(dtype)
        outside = (values < info.min) | (values > info.max)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise DataFileError(
                f"{values[row]} does not fit {np.dtype(dtype).name}",
                path,
                f"column {name!r}, row {row}",
            )
        columns[name] = values.astype(dtype, copy=False)
    return columns


def file_crc32(path: str) -> int:
    """The zlib CRC-32 of a whole file, read in 1 MiB blocks."""
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            crc = zlib.crc32(block, crc)
    return crc


def write_manifest(out_dir: str, table: Any) -> int:
    """Atomically (write + rename) store the manifest table; returns the file's CRC-32."""
    import pyarrow.parquet as pq

    tmp = os.path.join(out_dir, f".{MANIFEST_NAME}.tmp")
    pq.write_table(table, tmp)
    crc = file_crc32(tmp)
    os.replace(tmp, os.path.join(out_dir, MANIFEST_NAME))
    return crc


def write_meta(out_dir: str, meta: ShardMeta) -> None:
    """Atomically (write + rename) store ``meta.json``."""
    tmp = os.path.join(out_dir, f".{META_NAME}.tmp")
    with open(tmp, "w") as f:
        f.write(meta.to_json())
    os.replace(tmp, os.path.join(out_dir, META_NAME))


def relabel(root: str, labels: np.ndarray, num_classes: int) -> ShardMeta:
    """Replace every label of a shard set by rewriting its manifest (images are untouched).

    Args:
        root: The shard set directory.
        labels: int array, shape ``(num_images,)``, in manifest order.
        num_classes: New number of identities; every label must be in ``[0, num_classes)``.

    Returns:
        The new summary, with ``labels_in_records`` False: readers that take labels from the
        record headers (DALI) must be re-packed with ``reshard`` to see the new labels.
    """
    import pyarrow as pa

    shard_set = ShardSet.open(root)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(shard_set),):
        raise ValueError(f"need {len(shard_set)} labels, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes})"
        )
    table = shard_set.manifest
    table = table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels))
    os.remove(os.path.join(root, META_NAME))  # incomplete while the manifest changes
    manifest_crc32 = write_manifest(root, table)
    meta = dataclasses.replace(
        shard_set.meta,
        num_classes=num_classes,
        labels_in_records=False,
        manifest_crc32=manifest_crc32,
    )
    write_meta(root, meta)
    return meta


DEFAULT_STEM = "train"
"""A folder given as ``data.root`` is searched for ``<DEFAULT_STEM>.rec``/``.idx``."""


def find_rec(root: str | os.PathLike[str]) -> str | None:
    """The ``.rec`` that ``root`` names, or None when ``root`` is not a RecordIO dataset.

    Args:
        root: A ``.rec`` file, or a folder without ``meta.json`` holding ``train.rec``.

    Returns:
        The ``.rec`` path, or None (a shard set, a missing path, anything else).
    """
    root = os.fspath(root)
    if os.path.isfile(root) and root.endswith(".rec"):
        return root
    candidate = os.path.join(root, DEFAULT_STEM + ".rec")
    if (
        os.path.isdir(root)
        and not os.path.isfile(os.path.join(root, META_NAME))
        and os.path.isfile(candidate)
    ):
        return candidate
    return None


def not_a_shard_set_hint(root: str | os.PathLike[str]) -> str | None:
    """What to do when a RecordIO dataset is given where a shard set is expected, else None."""
    rec = find_rec(root)
    if rec is None:
        return None
    return (
        f"{os.fspath(root)} is an MXNet RecordIO dataset ({rec}), not a shard set: train on it "
        f"as it is with --data.root={os.fspath(root)}, or pack it into shards with "
        f"'dist-face-pack {rec} OUT_DIR --shards N'"
    )
