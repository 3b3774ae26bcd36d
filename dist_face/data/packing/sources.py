"""Where images to pack come from: an image folder, an MXNet ``.lst``, a ``.rec``, a shard set.

Each source is a picklable, lazily opened list of ``(image bytes, label)`` items, so packing
workers in other processes can read it. :func:`open_source` picks the kind from the path.
"""

from __future__ import annotations

import logging
import os
from typing import Protocol

import numpy as np

from dist_face.data.format.rec_labels import record_labels
from dist_face.data.format.recordio import (
    CorruptRecordError,
    RecordReader,
    unpack_record,
)
from dist_face.data.format.shards import META_NAME, ShardSet, find_rec
from dist_face.data.packing.image_files import image_extensions, is_image_file

logger = logging.getLogger(__name__)

OUTSIDE_FOLDERS = "outside the identity folders"
NOT_AN_IMAGE = "not an image Pillow recognises (by content)"


class Source(Protocol):
    """A dataset to pack: ``len`` items with integer labels in ``[0, num_classes)``."""

    labels: np.ndarray
    num_classes: int

    def __len__(self) -> int: ...

    def read(self, i: int) -> bytes:
        """Encoded image bytes of item ``i``."""
        ...

    def describe(self, i: int) -> str:
        """Where item ``i`` came from (stored in the manifest's ``source`` column)."""
        ...


class FolderSource:
    """One subfolder per identity; labels follow the sorted folder names (im2rec's rule).

    Every file Pillow recognises as an image (by extension or by content: JPEG, PNG, PGM/PPM,
    TIFF, GIF, BMP, WebP...) is an image of its folder's identity. Identity folders without an
    image are skipped with a warning and get no label, so labels stay contiguous. Other files
    are left out and counted by extension and reason in :attr:`skipped_files`.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        folders = [e.name for e in entries if e.is_dir()]
        if not folders:
            raise ValueError(f"image folder {root} has no identity subfolders")
        self.skipped_files: dict[tuple[str, str], int] = {}
        for e in entries:
            if not e.is_dir():
                self._skip(e.name, OUTSIDE_FOLDERS)
        extensions = image_extensions()
        paths, labels, self.empty_classes = [], [], []
        for name in folders:
            images = []
            for file in sorted(os.listdir(os.path.join(self.root, name))):
                if is_image_file(os.path.join(self.root, name, file), extensions):
                    images.append(f"{name}/{file}")
                else:
                    self._skip(file, NOT_AN_IMAGE)
            if not images:
                self.empty_classes.append(name)
                continue
            label = labels[-1] + 1 if labels else 0  # contiguous: empty folders take none
            labels += [label] * len(images)
            paths += images
        if self.empty_classes:
            logger.warning(
                "%s: skipped %d identity folder(s) without images (no class for them): %s",
                root,
                len(self.empty_classes),
                ", ".join(self.empty_classes[:10])
                + (" ..." if len(self.empty_classes) > 10 else ""),
            )
        if not paths:
            raise ValueError(f"image folder {root} holds no file Pillow recognises as an image")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(folders) - len(self.empty_classes)

    def _skip(self, name: str, why: str) -> None:
        ext = os.path.splitext(name)[1].lower() or "(none)"
        self.skipped_files[ext, why] = self.skipped_files.get((ext, why), 0) + 1

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> bytes:
        """Encoded image bytes of item ``i``."""
        with open(os.path.join(self.root, self.paths[i]), "rb") as f:
            return f.read()

    def describe(self, i: int) -> str:
        """The image path relative to the folder."""
        return self.paths[i]


class ListSource(FolderSource):
    """An MXNet ``.lst``: ``index<TAB>label[<TAB>more labels]<TAB>path`` per line.

    Paths are relative to ``root`` (default: the ``.lst``'s directory); the label is the
    first label column and must be a non-negative integer.
    """

    def __init__(self, lst_path: str, root: str | None = None) -> None:
        self.root = os.path.abspath(root or os.path.dirname(lst_path))
        paths, labels = [], []
        with open(lst_path) as f:
            for line_no, line in enumerate(f, 1):
                fields = line.rstrip("\n").split("\t")
                if not line.strip():
                    continue
                label = _parse_label(fields, lst_path, line_no)
                paths.append(fields[-1])
                labels.append(label)
        if not paths:
            raise ValueError(f"{lst_path} lists no images")
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = int(self.labels.max()) + 1


def _parse_label(fields: list[str], path: str, line_no: int) -> int:
    if len(fields) < 3:
        raise ValueError(f"{path}:{line_no}: expected 'index<TAB>label<TAB>path', got {fields}")
    try:
        value = float(fields[1])
    except ValueError:
        raise ValueError(f"{path}:{line_no}: label {fields[1]!r} is not a number") from None
    if value < 0 or not value.is_integer():
        raise ValueError(f"{path}:{line_no}: label {fields[1]} is not a non-negative integer")
    return int(value)


class RecSource:
    """An existing ``.rec``: InsightFace style (header + identity records) or headerless.

    InsightFace files are recognised by record 0: ``flag > 0`` and no image bytes; its label
    ``[N+1, N+1+K]`` gives the image keys ``1..N`` and the identity records ``N+1..N+K``.
    Otherwise every indexed record is an image. The label of a record is its scalar label,
    or the first entry of its label array (MXNet's rule).
    """

    def __init__(self, rec_path: str, idx_path: str | None = None) -> None:
        self.reader = RecordReader(rec_path, idx_path)
        self.identity_ranges: np.ndarray | None = None
        self.image_keys = self._layout()
        self.labels = record_labels(self.reader, self.image_keys)
        if self.labels.size == 0:
            raise ValueError(f"{rec_path} holds no image records")
        self.num_classes = int(self.labels.max()) + 1
        if self.identity_ranges is not None:
            self.num_classes = max(self.num_classes, len(self.identity_ranges))

    def _layout(self) -> np.ndarray:
        in_file_order = self.reader.keys[np.argsort(self.reader.offsets, kind="stable")]
        try:
            header, image = unpack_record(self.reader.read(0))
        except (KeyError, CorruptRecordError):
            return in_file_order  # no readable record 0: not an InsightFace header
        if header.flag < 2 or image:
            return in_file_order
        first_id, end_id = (int(x) for x in header.label[:2])  # type: ignore[index]
        self.identity_ranges = (
            np.stack([_identity_range(self.reader, k) for k in range(first_id, end_id)])
            if end_id > first_id
            else np.zeros((0, 2), np.int64)
        )
        image_keys = np.arange(1, first_id, dtype=np.int64)
        missing = np.setdiff1d(image_keys, self.reader.keys)
        if missing.size:
            raise ValueError(
                f"{self.reader.idx_path}: header record says images are keys 1..{first_id - 1}, "
                f"but key {missing[0]} is not indexed"
            )
        return image_keys

    def __len__(self) -> int:
        return int(self.image_keys.size)

    def read(self, i: int) -> bytes:
        """Image bytes of the ``i``-th image record."""
        key = int(self.image_keys[i])
        try:
            return unpack_record(self.reader.read(key))[1]
        except CorruptRecordError as err:
            raise err.located(self.reader.rec_path, key, self.reader.offset_of(key)) from None

    def describe(self, i: int) -> str:
        """``<rec file name>:<key>``."""
        return f"{os.path.basename(self.reader.rec_path)}:{int(self.image_keys[i])}"


def _identity_range(reader: RecordReader, key: int) -> np.ndarray:
    header, _ = unpack_record(reader.read(key))
    if header.flag < 2:
        raise CorruptRecordError(
            f"identity record has flag {header.flag}; expected a [first, end) label pair",
            reader.rec_path,
            key,
            reader.offset_of(key),
        )
    return np.asarray(header.label[:2], dtype=np.int64)  # type: ignore[index]


class ShardSetSource:
    """A shard set (for resharding and unpacking); labels come from its manifest."""

    def __init__(self, root: str) -> None:
        self.shard_set = ShardSet.open(root)
        self.labels = self.shard_set.labels
        self.num_classes = self.shard_set.num_classes
        self._sources: list[str] | None = None

    def __len__(self) -> int:
        return len(self.shard_set)

    def read(self, i: int) -> bytes:
        """Image bytes of global record ``i``."""
        return self.shard_set.read_image(i)[0]

    def describe(self, i: int) -> str:
        """The record's original source, from the manifest."""
        if self._sources is None:
            self._sources = self.shard_set.manifest.column("source").to_pylist()
        return self._sources[i]

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_sources": None}


def open_source(path: str, root: str | None = None) -> Source:
    """The source at ``path``: a shard set, an image folder, a ``.lst``, a ``.rec`` or its folder.

    Args:
        path: The dataset to read.
        root: Image root for a ``.lst`` (default: the ``.lst``'s directory).
    """
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, META_NAME)):
            return ShardSetSource(path)
        rec = find_rec(path)  # an InsightFace release folder: train.rec / train.idx
        return RecSource(rec) if rec is not None else FolderSource(path)
    if path.endswith(".lst"):
        return ListSource(path, root)
    if path.endswith(".rec"):
        return RecSource(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset source {path} does not exist")
    raise ValueError(f"{path}: expected an image folder, a shard set, a .lst or a .rec file")
