"""Class labels of MXNet image records, read straight from a mapped ``.rec`` file."""

from __future__ import annotations

import numpy as np

from dist_face.data.format.recordio import (
    IR_SIZE,
    CorruptRecordError,
    RecordReader,
    read_frame,
    scalar_label,
    unpack_record,
)


def record_labels(reader: RecordReader, keys: np.ndarray) -> np.ndarray:
    """Class labels (int64) of the records with ``keys``, read straight from the map.

    Single-part records are read with vectorised gathers of the IRHeader fields; split
    records fall back to a full read.

    Raises:
        CorruptRecordError: A label that is negative or not an integer, naming the record.
    """
    buf = reader.buffer()
    offsets = reader.offsets[reader.positions(keys)]
    labels = np.empty(keys.size, dtype=np.float64)
    view = np.frombuffer(buf, dtype=np.uint8) if len(buf) else np.zeros(0, np.uint8)
    simple = np.zeros(keys.size, dtype=bool)
    for start in range(0, keys.size, _LABEL_CHUNK):  # bounded temporaries for huge files
        part = slice(start, start + _LABEL_CHUNK)
        simple[part] = _gather_labels(view, offsets[part], labels[part])
    for i in np.flatnonzero(~simple).tolist():
        key = int(keys[i])
        payload = read_frame(buf, int(offsets[i]), reader.rec_path, key)[0]
        try:
            labels[i] = scalar_label(unpack_record(payload)[0])
        except CorruptRecordError as err:
            raise err.located(reader.rec_path, key, int(offsets[i])) from None
    bad = np.flatnonzero((labels < 0) | (labels != np.round(labels)))
    if bad.size:
        i = int(bad[0])
        raise CorruptRecordError(
            f"label {labels[i]} is not a non-negative integer class id",
            reader.rec_path,
            int(keys[i]),
            int(offsets[i]),
        )
    return labels.astype(np.int64)


_LABEL_CHUNK = 1 << 20


def _gather_labels(view: np.ndarray, offsets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fill ``labels`` for single-part image records at ``offsets``; True where it could."""
    simple = np.zeros(offsets.size, dtype=bool)
    fits = offsets + 8 + IR_SIZE + 4 <= view.size
    if not fits.any():
        return simple
    o = offsets[fits]
    lrec = _gather_u32(view, o + 4)
    flag = _gather_u32(view, o + 8)
    simple[fits] = (
        (_gather_u32(view, o) == 0xCED7230A)
        & (lrec >> 29 == 0)
        & ((lrec & ((1 << 29) - 1)) >= IR_SIZE + 4 * np.minimum(flag, 1))
    )
    where = np.where(flag == 0, o + 12, o + 8 + IR_SIZE)
    labels[fits] = _gather_u32(view, where).view(np.float32)
    return simple


def _gather_u32(view: np.ndarray, at: np.ndarray) -> np.ndarray:
    """Little-endian uint32 at byte positions ``at`` (any alignment)."""
    b = [view[at + j].astype(np.uint32) for j in range(4)]
    return b[0] | (b[1] << 8) | (b[2] << 16) | (b[3] << 24)
