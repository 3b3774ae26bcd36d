"""Open-set identification on a folder of aligned faces, and a MegaFace-style distractor curve.

``--probes DIR`` holds one sub-folder of aligned 112×112 images per subject (other sizes are
fitted by ``--resize-mode``, with a warning), or of raw photos aligned on the fly with
``--landmarks FILE`` or ``--detect dlib|MODEL.onnx`` (a photo without a face is left out).
The first image of each of the first ``--enrolled-fraction`` of the subjects forms the gallery;
every other image is a probe, so the images of the other subjects are searches without a mate.
Reported:
DIR (TPIR) at FAR (FPIR) 0.01 and 0.1 and rank-1/5/10.

With ``--distractors`` (a count of generated subjects, a folder of aligned images, or a
``.npy`` of features), rank-1 identification of every same-subject pair of ``--probes`` is
measured against 10, 100, … distractors (the MegaFace curve).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dist_face.cli.backbone_source import add_backbone_args, load_from_args
from dist_face.cli.common import add_resize_mode, closed_pipe_is_quiet
from dist_face.data.loading.image_fit import DEFAULT_RESIZE_MODE, fit_image
from dist_face.data.packing.image_files import image_extensions
from dist_face.eval.bin_format import warn_sizes
from dist_face.eval.identification import RANKS, distractor_curve, open_set, search
from dist_face.eval.raw_photos import add_align_args, aligned_photos, wants_alignment
from dist_face.eval.verification import embed_images
from dist_face.extras import MissingExtraError
from dist_face.log import init_logging

logger = logging.getLogger("dist_face.identify")
_EXTS = image_extensions()  # every format Pillow reads


def _read_images(files: list[Path], mode: str = DEFAULT_RESIZE_MODE) -> np.ndarray:
    """``uint8 [N, 112, 112, 3]``; other sizes fitted under ``mode``, with one warning."""
    out, others = [], {}
    for f in files:
        try:
            with Image.open(f) as im:
                if im.size != (112, 112):
                    others[im.size] = others.get(im.size, 0) + 1
                out.append(np.asarray(fit_image(im, 112, mode)))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{f}: unreadable image ({str(exc).splitlines()[0]})") from None
    warn_sizes(others, len(files), 112, mode)
    return np.stack(out)


def identity_folder(root: Path) -> tuple[list[Path], np.ndarray]:
    """Images and subject index of ``root/<subject>/<image>``, sorted."""
    if not root.is_dir():
        raise ValueError(f"probe folder {root} does not exist")
    files, ids = [], []
    for k, sub in enumerate(sorted(d for d in root.iterdir() if d.is_dir())):
        for f in sorted(sub.iterdir()):
            if f.suffix.lower() in _EXTS:
                files.append(f)
                ids.append(k)
    if not files:
        raise ValueError(f"{root}: no <subject>/<image> files")
    return files, np.array(ids)


def open_set_split(ids: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(gallery rows, probe rows)``: first image of each enrolled subject vs the rest."""
    subjects = np.unique(ids)
    enrolled = subjects[: max(1, math.ceil(fraction * len(subjects)))]
    first = np.array([np.flatnonzero(ids == s)[0] for s in enrolled])
    probes = np.setdiff1d(np.arange(len(ids)), first)
    return first, probes


def _distractors(spec: str, model: torch.nn.Module, batch: int, mode: str) -> np.ndarray:
    if spec.isdigit():
        from dist_face.data.synthetic.ijb import distractor_faces

        return embed_images(model, distractor_faces(int(spec)), batch, torch.device("cpu"))
    path = Path(spec)
    if path.suffix == ".npy":
        feats = np.load(path).astype(np.float32)
        return feats / np.linalg.norm(feats, axis=1, keepdims=True)
    if not path.is_dir():
        raise ValueError(f"distractors {spec}: not a count, a folder or a .npy file")
    files = sorted(f for f in path.rglob("*") if f.suffix.lower() in _EXTS)
    return embed_images(model, _read_images(files, mode), batch, torch.device("cpu"))


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Run the protocols; returns the exit code (2 for bad input)."""
    p = argparse.ArgumentParser(prog="dist-face-identify", description=__doc__)
    add_backbone_args(p)
    p.add_argument("--probes", required=True, help="folder of <subject>/<aligned image>")
    p.add_argument("--enrolled-fraction", type=float, default=0.5)
    p.add_argument(
        "--distractors", help="N generated subjects, a folder of aligned images, or .npy"
    )
    p.add_argument("--out", required=True, help="output directory (report.json, megaface.png)")
    p.add_argument("--batch-size", type=int, default=64)
    add_resize_mode(p)
    add_align_args(p)
    args = p.parse_args(argv)
    init_logging()
    try:
        model, name, _ = load_from_args(args)
        files, ids = identity_folder(Path(args.probes))
        if wants_alignment(args):
            faces, _ = aligned_photos(files, Path(args.probes), args)
            kept = [k for k, f in enumerate(faces) if f is not None]
            if not kept:
                raise ValueError(f"{args.probes}: no photo could be aligned")
            pixels, ids = np.stack([faces[k] for k in kept]), ids[kept]
        else:
            pixels = _read_images(files, args.resize_mode)
        feats = embed_images(model, pixels, args.batch_size, torch.device("cpu"))
        distractors = (
            _distractors(args.distractors, model, args.batch_size, args.resize_mode)
            if args.distractors
            else None
        )
    except (FileNotFoundError, ValueError, MissingExtraError) as exc:
        logger.error("%s", exc)
        return 2
    gallery, probes = open_set_split(ids, args.enrolled_fraction)
    result = open_set(search(feats[probes], ids[probes], feats[gallery], ids[gallery]))
    report: dict[str, object] = {
        "backbone": name,
        "probes": str(args.probes),
        "open_set": result.as_dict(),
    }
    dirs = "  ".join(f"{k:g}: {100 * v:.2f}" for k, v in result.tpir_at_fpir.items())
    cmc = "  ".join(f"rank{k}: {100 * result.cmc[k]:.2f}" for k in RANKS)
    logger.info("open-set DIR%% @ FAR  %s  |  %s", dirs, cmc)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if distractors is not None:
        counts = [10**k for k in range(1, 8) if 10**k <= len(distractors)]
        if len(distractors) not in counts:
            counts.append(len(distractors))
        curve = distractor_curve(feats, ids, distractors, tuple(counts))
        report["megaface_rank1"] = {str(n): v for n, v in curve.items()}
        logger.info(
            "rank-1 vs distractors  %s", "  ".join(f"{n}: {100 * v:.2f}" for n, v in curve.items())
        )
        _plot_curve(curve, out / "megaface.png", name)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    logger.info("identification report: %s", out / "report.json")
    return 0


def _plot_curve(curve: dict[int, float], path: Path, name: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(list(curve), [100 * v for v in curve.values()], marker="o", label=name)
    ax.set(xscale="log", xlabel="distractors", ylabel="rank-1 identification (%)", ylim=(0, 101))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
