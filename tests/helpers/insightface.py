"""InsightFace-layout ``train.rec``/``train.idx`` written with the project's own RecordWriter.

The layout of the MS1MV3 / Glint360K releases (``face2rec``): image records with keys
``1..N`` grouped by identity, one identity record per class (label ``[first key, end key)``)
with keys ``N+1..N+K``, and the header record, key 0, whose label ``[N+1, N+1+K]`` points at
the identity records. The header is written last, as ``face2rec`` does, so key 0 is not at
offset 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dist_face.data.format.recordio import RecordWriter, pack_record


def write_insightface_rec(
    folder: Path, items: Sequence[tuple[bytes, int]], header: bool = True, stem: str = "train"
) -> Path:
    """Write ``items`` (image bytes, label; sorted by label) as ``folder/<stem>.rec``/``.idx``.

    Returns:
        The ``.rec`` path.
    """
    folder.mkdir(parents=True, exist_ok=True)
    labels = [label for _, label in items]
    assert labels == sorted(labels), "InsightFace files group images by identity"
    rec = folder / f"{stem}.rec"
    n = len(items)
    first_key = 1 if header else 0
    with RecordWriter(rec, folder / f"{stem}.idx") as writer:
        for i, (image, label) in enumerate(items):
            writer.write(first_key + i, pack_record(float(label), image, id=first_key + i))
        if header:
            classes = max(labels) + 1
            starts = {}
            for i, label in enumerate(labels):
                starts.setdefault(label, [1 + i, 1 + i])[1] = 2 + i
            for c in range(classes):
                lo, hi = starts[c]
                writer.write(n + 1 + c, pack_record([lo, hi], b"", id=n + 1 + c))
            writer.write(0, pack_record([n + 1, n + 1 + classes], b"", id=0))
    return rec


def folder_items(train: Path) -> list[tuple[bytes, int]]:
    """``(bytes, label)`` of an identity folder (labels follow the sorted subfolders)."""
    items = []
    for label, sub in enumerate(sorted(p for p in train.iterdir() if p.is_dir())):
        items += [(f.read_bytes(), label) for f in sorted(sub.iterdir())]
    return items
