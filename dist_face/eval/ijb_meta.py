"""Reading the IJB-B / IJB-C release in its official layout.

Layout under the dataset root (``{t}`` is ``ijbb`` or ``ijbc``)::

    meta/{t}_face_tid_mid.txt          image_name template_id media_id      (one row per image)
    meta/{t}_name_5pts_score.txt       image_name x1 y1 … x5 y5 faceness    (row-aligned)
    meta/{t}_template_pair_label.txt   template1 template2 label            (1 genuine, 0 impostor)
    meta/{t}_1N_gallery_{G1,G2}.csv    TEMPLATE_ID,SUBJECT_ID,…  (IJB-B: S1, S2; header row)
    meta/{t}_1N_probe_mixed.csv        TEMPLATE_ID,SUBJECT_ID,…
    loose_crop/<image_name>

Every error names the file and the line that is wrong.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TARGETS = ("IJBC", "IJBB")
#: Gallery names of the 1:N protocol per target.
GALLERIES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


class IJBFormatError(ValueError):
    """A meta file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class IJBMeta:
    """The 1:1 meta files of one IJB release, as arrays in file order.

    Attributes:
        root: the dataset root.
        target: ``IJBC`` or ``IJBB``.
        image_names: ``[N]`` names under ``loose_crop/``.
        templates: ``int64 [N]`` template id of each image.
        medias: ``int64 [N]`` media id of each image.
        landmarks: ``float32 [N, 5, 2]`` (x, y) of the five points, pixels of the loose crop.
        faceness: ``float32 [N]`` detector scores.
        pairs: ``int64 [P, 2]`` template ids of each pair.
        labels: ``int8 [P]`` 1 genuine, 0 impostor.
        pair_lines: ``int64 [P]`` 1-based line of each pair in the pair file (for messages).
        image_lines: ``int64 [N]`` 1-based line of each image in the 5-point file.
    """

    root: Path
    target: str
    image_names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    faceness: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray
    pair_lines: np.ndarray
    image_lines: np.ndarray

    def file(self, kind: str) -> Path:
        """Path of a meta file: ``kind`` is ``face_tid_mid``, ``name_5pts_score``, etc."""
        return meta_path(self.root, self.target, kind)

    def image_path(self, index: int) -> Path:
        """The loose-crop file of image row ``index``."""
        return self.root / "loose_crop" / self.image_names[index]


@dataclass(frozen=True)
class Gallery:
    """One side of the 1:N protocol: unique templates and their subjects."""

    name: str
    """``G1``/``G2``/``S1``/``S2`` or ``probe``."""
    templates: np.ndarray
    """``int64 [T]`` template ids, in first-appearance order."""
    subjects: np.ndarray
    """``int64 [T]`` subject id of each template."""


def meta_path(root: str | os.PathLike[str], target: str, kind: str) -> Path:
    """``root/meta/{t}_{kind}.txt`` (or ``.csv`` for the 1:N lists)."""
    prefix = _prefix(target)
    ext = "csv" if kind.startswith("1N_") else "txt"
    return Path(root) / "meta" / f"{prefix}_{kind}.{ext}"


def _prefix(target: str) -> str:
    if target not in TARGETS:
        raise IJBFormatError(f"unknown IJB target {target!r}; expected one of {TARGETS}")
    return target.lower()


def _rows(path: Path, fields: int, what: str) -> list[tuple[int, list[str]]]:
    """Non-empty whitespace-separated rows as ``(line_no, fields)``, each checked for width."""
    if not path.is_file():
        raise IJBFormatError(f"IJB meta file {path} does not exist")
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != fields:
                raise IJBFormatError(
                    f"{path}:{line_no}: expected {fields} fields ({what}), got {len(parts)}"
                )
            rows.append((line_no, parts))
    if not rows:
        raise IJBFormatError(f"{path}: no rows")
    return rows


def _number(path: Path, line_no: int, text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise IJBFormatError(f"{path}:{line_no}: {text!r} is not {name}") from None


def read_ijb(root: str | os.PathLike[str], target: str = "IJBC") -> IJBMeta:
    """Read and cross-check the three 1:1 meta files.

    Raises:
        IJBFormatError: a file is missing, a row is malformed, the 5-point file's rows do not
            match the tid_mid rows (count or image name), or a pair names a template without
            images.
    """
    root = Path(root)
    tid_path = meta_path(root, target, "face_tid_mid")
    pts_path = meta_path(root, target, "name_5pts_score")
    pair_path = meta_path(root, target, "template_pair_label")
    tid_rows = _rows(tid_path, 3, "image_name template_id media_id")
    pts_rows = _rows(pts_path, 12, "image_name x1 y1 … x5 y5 faceness")
    if len(pts_rows) != len(tid_rows):
        shorter = min(len(pts_rows), len(tid_rows))
        where = (pts_path, pts_rows) if len(pts_rows) > shorter else (tid_path, tid_rows)
        extra_line = where[1][shorter][0]
        raise IJBFormatError(
            f"{where[0]}:{extra_line}: row-count mismatch: {pts_path.name} has {len(pts_rows)} "
            f"rows but {tid_path.name} has {len(tid_rows)}; the files are matched row by row"
        )
    names = []
    for (tl, t), (pl, p) in zip(tid_rows, pts_rows):
        if t[0] != p[0]:
            raise IJBFormatError(
                f"{pts_path}:{pl}: image {p[0]!r} but {tid_path}:{tl} has {t[0]!r}; "
                "the files are matched row by row"
            )
        names.append(t[0])
    templates = np.array([_number(tid_path, ln, r[1], int) for ln, r in tid_rows], np.int64)
    medias = np.array([_number(tid_path, ln, r[2], int) for ln, r in tid_rows], np.int64)
    values = np.array(
        [[_number(pts_path, ln, v, float) for v in r[1:]] for ln, r in pts_rows], np.float32
    )
    pair_rows = _rows(pair_path, 3, "template1 template2 label")
    pairs = np.array(
        [
            [_number(pair_path, ln, r[0], int), _number(pair_path, ln, r[1], int)]
            for ln, r in pair_rows
        ],
        np.int64,
    )
    labels = np.array([_number(pair_path, ln, r[2], int) for ln, r in pair_rows], np.int64)
    lines = np.array([ln for ln, _ in pair_rows], np.int64)
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise IJBFormatError(f"{pair_path}:{lines[bad[0]]}: label must be 0 or 1")
    known = np.isin(pairs, np.unique(templates))
    if not known.all():
        row, col = np.argwhere(~known)[0]
        raise IJBFormatError(
            f"{pair_path}:{lines[row]}: template {pairs[row, col]} has no images in {tid_path}"
        )
    return IJBMeta(
        root=root,
        target=target,
        image_names=names,
        templates=templates,
        medias=medias,
        landmarks=values[:, :10].reshape(-1, 5, 2),
        faceness=values[:, 10],
        pairs=pairs,
        labels=labels.astype(np.int8),
        pair_lines=lines,
        image_lines=np.array([ln for ln, _ in pts_rows], np.int64),
    )


def read_list_1n(path: Path, name: str, known_templates: set[int]) -> Gallery:
    """Read one 1:N CSV (header row; column 0 TEMPLATE_ID, column 1 SUBJECT_ID; a row per image).

    Raises:
        IJBFormatError: the file is missing or empty, a row is malformed, a template has two
            subjects, or a template has no images in the tid_mid file.
    """
    if not path.is_file():
        raise IJBFormatError(f"IJB meta file {path} does not exist")
    subject_of: dict[int, int] = {}
    with open(path, newline="") as f:
        for line_no, row in enumerate(csv.reader(f), 1):
            if line_no == 1 or not row:
                continue  # header
            if len(row) < 2:
                raise IJBFormatError(f"{path}:{line_no}: expected TEMPLATE_ID,SUBJECT_ID,…")
            tid = int(_number(path, line_no, row[0].strip(), int))
            sid = int(_number(path, line_no, row[1].strip(), int))
            if subject_of.setdefault(tid, sid) != sid:
                raise IJBFormatError(
                    f"{path}:{line_no}: template {tid} has subjects {subject_of[tid]} and {sid}"
                )
            if tid not in known_templates:
                raise IJBFormatError(f"{path}:{line_no}: template {tid} has no images")
    if not subject_of:
        raise IJBFormatError(f"{path}: no rows after the header")
    return Gallery(
        name=name,
        templates=np.fromiter(subject_of.keys(), np.int64),
        subjects=np.fromiter(subject_of.values(), np.int64),
    )


def read_1n(meta: IJBMeta) -> tuple[list[Gallery], Gallery] | None:
    """The two galleries and the mixed probe set, or ``None`` when no 1:N file is present.

    Raises:
        IJBFormatError: some but not all of the three files are present, or one is malformed.
    """
    names = [*GALLERIES[meta.target]]
    files = [meta_path(meta.root, meta.target, f"1N_gallery_{g}") for g in names]
    files.append(meta_path(meta.root, meta.target, "1N_probe_mixed"))
    present = [f.is_file() for f in files]
    if not any(present):
        return None
    if not all(present):
        missing = files[present.index(False)]
        raise IJBFormatError(f"IJB meta file {missing} does not exist (the other 1:N files do)")
    known = set(np.unique(meta.templates).tolist())
    galleries = [read_list_1n(f, g, known) for f, g in zip(files, names)]
    return galleries, read_list_1n(files[-1], "probe", known)
