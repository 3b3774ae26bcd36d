"""A synthetic IJB-B/C release in the official file layout, from the embedded face generator.

Held-out identities (disjoint from the training and ``val.bin`` identities) each get several
templates; a template holds several media, a media several frames. Each frame is a rendered
face placed into a larger loose crop with a random similarity (scale, rotation, shift), on a
random background. Its five landmarks are the ArcFace template points mapped by the same
similarity plus sub-pixel noise, so aligning them recovers the training geometry. Faceness
scores are drawn in [0.5, 1].

Files (``{t}`` = ``ijbc`` or ``ijbb``; see :mod:`dist_face.eval.ijb_meta`)::

    loose_crop/<k>.jpg, meta/{t}_face_tid_mid.txt, meta/{t}_name_5pts_score.txt,
    meta/{t}_template_pair_label.txt, meta/{t}_1N_gallery_{G1,G2 | S1,S2}.csv,
    meta/{t}_1N_probe_mixed.csv, synthetic_ijb.json

The 1:1 pairs are every pair of templates of one identity (genuine) and every, or a sample
of, pairs across identities (impostor). For 1:N, each identity's first template is its gallery
template, in the first gallery for even identities and the second for odd ones; the other
templates form the mixed probe set.
"""

from __future__ import annotations

import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dist_face.data.synthetic.faces import identity_params, render_sample
from dist_face.eval.align import ARCFACE_TEMPLATE, CROP_SIZE, warp_affine
from dist_face.eval.ijb_meta import GALLERIES, TARGETS

#: Identity numbers of the synthetic IJB subjects (training uses 0…, val.bin 1 000 000…).
IJB_ID_OFFSET = 2_000_000
#: Identity numbers of generated distractors.
DISTRACTOR_ID_OFFSET = 3_000_000


@dataclass(frozen=True)
class IJBSpec:
    """Sizes of the synthetic IJB set."""

    target: str = "IJBC"
    """``IJBC`` or ``IJBB`` (file prefixes and gallery names)."""
    identities: int = 40
    """Held-out subjects."""
    templates_per_identity: int = 4
    """Templates per subject (≥ 2: one gallery template, the rest probes)."""
    max_medias: int = 3
    """Media per template, drawn in [1, max_medias]."""
    max_frames: int = 3
    """Frames per media, drawn in [1, max_frames]."""
    impostor_pairs: int = 0
    """Impostor pairs to sample; 0 writes every cross-subject template pair."""
    crop_size: int = 160
    """Side of the loose crops in pixels."""
    seed: int = 0
    """Seed of everything."""

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.identities < 2 or self.templates_per_identity < 2:
            raise ValueError("needs at least 2 identities and 2 templates per identity")


def place_face(
    face: np.ndarray, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Put an aligned 112² face into a ``size``² loose crop with a random similarity.

    Returns:
        ``(uint8 [size, size, 3] crop, float32 [5, 2] landmarks)``.
    """
    scale = rng.uniform(0.9, 1.3)
    angle = math.radians(rng.normal(0, 10))
    shift = rng.uniform(-0.08, 0.08, size=2) * size
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    half = CROP_SIZE / 2
    # aligned (u, v) -> crop (x, y): rotate and scale about the face centre, then move it
    tx = size / 2 + shift[0] - (c * half - s * half)
    ty = size / 2 + shift[1] - (s * half + c * half)
    forward = np.array([[c, -s, tx], [s, c, ty]])
    warped = warp_affine(face, forward, size).astype(np.float32)
    mask = warp_affine(np.full((CROP_SIZE, CROP_SIZE, 1), 255, np.uint8), forward, size) / 255.0
    lo, hi = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    ramp = np.linspace(0, 1, size, dtype=np.float32)[None, :, None]
    background = lo * (1 - ramp) + hi * ramp
    crop = warped * mask + background * (1 - mask)
    points = ARCFACE_TEMPLATE @ forward[:, :2].T + forward[:, 2]
    points += rng.normal(0, 0.5, size=points.shape)
    return np.clip(crop, 0, 255).astype(np.uint8), points.astype(np.float32)


def _render_identity(args: tuple[IJBSpec, int, Path]) -> list[tuple[int, int, int, str]]:
    """Write every frame of one subject; returns ``(template, media, frame, landmarks line)``."""
    spec, subject, crops = args
    rng = np.random.default_rng([spec.seed, subject, 0x1B])
    params = identity_params(spec.seed, IJB_ID_OFFSET + subject)
    rows = []
    for t in range(spec.templates_per_identity):
        for m in range(int(rng.integers(1, spec.max_medias + 1))):
            for f in range(int(rng.integers(1, spec.max_frames + 1))):
                frame_rng = np.random.default_rng([spec.seed, subject, t, m, f, 0x1C])
                face = np.asarray(render_sample(params, frame_rng))
                crop, points = place_face(face, frame_rng, spec.crop_size)
                faceness = frame_rng.uniform(0.5, 1.0)
                name = f"{subject}_{t}_{m}_{f}.jpg"
                buf = io.BytesIO()
                Image.fromarray(crop).save(buf, format="JPEG", quality=92)
                (crops / name).write_bytes(buf.getvalue())
                coords = " ".join(f"{v:.3f}" for v in points.reshape(-1))
                rows.append((t, m, f, f"{name} {coords} {faceness:.6f}"))
    return rows


def generate_ijb(out_dir: str | os.PathLike[str], spec: IJBSpec, workers: int = 0) -> Path:
    """Write the synthetic set under ``out_dir`` and return its root.

    Args:
        out_dir: dataset root (created); point ``dist-face-ijb --image-path`` at it.
        spec: sizes and seed.
        workers: rendering processes; 0 uses every core.
    """
    root = Path(out_dir)
    meta, crops = root / "meta", root / "loose_crop"
    meta.mkdir(parents=True, exist_ok=True)
    crops.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([spec.seed, 0x1D])
    n_templates = spec.identities * spec.templates_per_identity
    # sparse, shuffled template ids: nothing may assume they are dense or sorted
    template_ids = rng.choice(np.arange(1, 20 * n_templates), size=n_templates, replace=False)
    subject_ids = 1000 + 3 * np.arange(spec.identities)
    jobs = [(spec, s, crops) for s in range(spec.identities)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        per_subject = list(pool.map(_render_identity, jobs))
    tid_lines, pts_lines = [], []
    images_of: dict[int, list[str]] = {}
    media = 0
    for s, rows in enumerate(per_subject):
        last = None
        for t, m, _, line in rows:
            if (t, m) != last:
                media, last = media + 1, (t, m)
            tid = int(template_ids[s * spec.templates_per_identity + t])
            name = line.split(" ", 1)[0]
            tid_lines.append(f"{name} {tid} {media}")
            pts_lines.append(line)
            images_of.setdefault(tid, []).append(name)
    (meta / _name(spec, "face_tid_mid.txt")).write_text("\n".join(tid_lines) + "\n")
    (meta / _name(spec, "name_5pts_score.txt")).write_text("\n".join(pts_lines) + "\n")
    tids = template_ids.reshape(spec.identities, spec.templates_per_identity)
    pairs = _pairs(spec, tids, rng)
    (meta / _name(spec, "template_pair_label.txt")).write_text(
        "".join(f"{a} {b} {y}\n" for a, b, y in pairs)
    )
    g1, g2 = GALLERIES[spec.target]
    for name, which in ((g1, 0), (g2, 1)):
        entries = [(tids[s, 0], subject_ids[s]) for s in range(which, spec.identities, 2)]
        _write_1n(meta / _name(spec, f"1N_gallery_{name}.csv"), entries, images_of)
    probes = [
        (tids[s, t], subject_ids[s])
        for s in range(spec.identities)
        for t in range(1, tids.shape[1])
    ]
    _write_1n(meta / _name(spec, "1N_probe_mixed.csv"), probes, images_of)
    info = {**asdict(spec), "images": len(tid_lines), "templates": n_templates, "pairs": len(pairs)}
    (root / "synthetic_ijb.json").write_text(json.dumps(info, indent=2) + "\n")
    return root


def _name(spec: IJBSpec, rest: str) -> str:
    return f"{spec.target.lower()}_{rest}"


def _pairs(spec: IJBSpec, tids: np.ndarray, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    genuine = [
        (int(row[i]), int(row[j]), 1)
        for row in tids
        for i in range(len(row))
        for j in range(i + 1, len(row))
    ]
    flat = tids.reshape(-1)
    subject = np.repeat(np.arange(len(tids)), tids.shape[1])
    a, b = np.triu_indices(len(flat), k=1)
    cross = subject[a] != subject[b]
    a, b = a[cross], b[cross]
    if spec.impostor_pairs and spec.impostor_pairs < len(a):
        keep = rng.choice(len(a), size=spec.impostor_pairs, replace=False)
        a, b = a[keep], b[keep]
    impostor = [(int(flat[i]), int(flat[j]), 0) for i, j in zip(a, b)]
    pairs = genuine + impostor
    return [pairs[i] for i in rng.permutation(len(pairs))]


def _write_1n(path: Path, entries: list[tuple[int, int]], images_of: dict[int, list[str]]) -> None:
    lines = ["TEMPLATE_ID,SUBJECT_ID,FILENAME"]
    for tid, sid in entries:
        lines += [f"{tid},{sid},loose_crop/{name}" for name in images_of[int(tid)]]
    path.write_text("\n".join(lines) + "\n")


def distractor_faces(count: int, seed: int = 0) -> np.ndarray:
    """Aligned faces of ``count`` generated subjects, one each: ``uint8 [count, 112, 112, 3]``."""
    out = np.empty((count, CROP_SIZE, CROP_SIZE, 3), np.uint8)
    for i in range(count):
        rng = np.random.default_rng([seed, DISTRACTOR_ID_OFFSET + i, 0x1E])
        out[i] = np.asarray(render_sample(identity_params(seed, DISTRACTOR_ID_OFFSET + i), rng))
    return out
