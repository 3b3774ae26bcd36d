"""``dist-face-subcenter-clean``: sub-center ArcFace's noisy-data recipe, as a tool.

After training with ``head.margin=subcenter_arcface`` (K sub-centers per class), clean samples
gather around one *dominant* sub-center per class and noisy ones (wrong identity, bad crop)
around the others (Deng et al., ECCV 2020, Sec. 3.2). This tool embeds every training sample
with the run's backbone, finds each class's dominant sub-center (the one most of its samples
are closest to), lists the samples whose angle to it exceeds ``--threshold-deg`` (75° in the
paper and in pytorch-metric-learning's ``get_outliers``), and writes a cleaned shard set
without them (image bytes unchanged, labels kept) plus ``dropped.json`` and the dominant
centers ``[C, D]`` (``dominant_centers.pt``), with which the paper re-trains at K = 1.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dist_face.checkpoint import latest_checkpoint
from dist_face.checkpoint.sharded import load_rows, total_classes
from dist_face.cli.backbone_source import load_from_args
from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.data.packing.pack import PackOptions, pack
from dist_face.data.packing.sources import ShardSetSource
from dist_face.eval.verification import embed_images


def dominant_subcenters(
    embeddings: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's dominant sub-center and each sample's cosine to its class's.

    Args:
        embeddings: ``[n, D]`` sample embeddings (any norm).
        labels: ``[n]`` int64 class of each sample.
        centers: ``[C, K, D]`` the head's sub-centers.

    Returns:
        ``dominant`` ``[C]`` int64 index in ``[0, K)`` of the sub-center most of the class's
        samples are closest to (ties: the lowest index; 0 for a class without samples), and
        ``cos`` ``[n]`` cosine of each sample to its class's dominant sub-center.
    """
    c, k, _ = centers.shape
    x = torch.nn.functional.normalize(embeddings.double(), dim=1)
    w = torch.nn.functional.normalize(centers.double(), dim=2)
    cos = torch.einsum("nd,nkd->nk", x, w[labels])  # [n, K] to the own class's sub-centers
    nearest = cos.argmax(dim=1)
    counts = torch.bincount(labels * k + nearest, minlength=c * k).view(c, k)
    dominant = counts.argmax(dim=1)
    return dominant, cos.gather(1, dominant[labels][:, None])[:, 0]


class KeptSource:
    """The records of a shard set whose indices are ``keep`` (a packing source)."""

    def __init__(self, source: ShardSetSource, keep: np.ndarray) -> None:
        self.source, self.keep = source, keep
        self.labels = source.labels[keep]
        self.num_classes = source.num_classes

    def __len__(self) -> int:
        return len(self.keep)

    def read(self, i: int) -> bytes:
        """Image bytes of kept record ``i``."""
        return self.source.read(int(self.keep[i]))

    def describe(self, i: int) -> str:
        """The kept record's original source."""
        return self.source.describe(int(self.keep[i]))


def embed_shard_set(model: torch.nn.Module, source: ShardSetSource, batch: int) -> torch.Tensor:
    """``[n, D]`` float32 flip-summed unit embeddings of every record, in global order."""
    out = []
    for start in range(0, len(source), batch):
        images = [
            np.asarray(Image.open(io.BytesIO(source.read(i))).convert("RGB"))
            for i in range(start, min(start + batch, len(source)))
        ]
        out.append(torch.from_numpy(embed_images(model, np.stack(images), batch_size=batch)))
    return torch.cat(out)


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``dist-face-subcenter-clean``."""
    p = argparse.ArgumentParser(
        prog="dist-face-subcenter-clean",
        description="Drop the samples far from their class's dominant sub-center (a run "
        "trained with head.margin=subcenter_arcface) and write the cleaned shard set.",
    )
    p.add_argument("--run", required=True, help="run directory (model.pt and checkpoints/)")
    p.add_argument("--data", required=True, help="the shard set the run trained on")
    p.add_argument("--out", required=True, help="output directory of the cleaned shard set")
    p.add_argument(
        "--threshold-deg", type=float, default=75.0, help="largest angle kept (default 75)"
    )
    p.add_argument("--shards", type=int, default=1, help="shards of the cleaned set (default 1)")
    p.add_argument("--batch", type=int, default=64, help="images per forward (default 64)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing shard set")
    p.add_argument("--name", help=argparse.SUPPRESS)
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Clean a shard set with a sub-center run; returns the process exit code."""
    args = build_parser().parse_args(argv)
    args.backbone = None
    try:
        ckpt = latest_checkpoint(Path(args.run))
        if ckpt is None:
            raise ValueError(f"{args.run} has no complete checkpoint (checkpoints/step_*)")
        centers = load_rows(ckpt, "weight", 0, total_classes(ckpt)).float()
        if centers.dim() != 3:
            raise ValueError(
                f"{ckpt}: the head has one center per class ({list(centers.shape)}); "
                "train with head.margin=subcenter_arcface"
            )
        source = ShardSetSource(args.data)
        if source.num_classes != centers.shape[0]:
            raise ValueError(
                f"{args.data} has {source.num_classes} classes, the run's head {centers.shape[0]}"
            )
        model, _, _ = load_from_args(args)
        emb = embed_shard_set(model, source, args.batch)
        labels = torch.from_numpy(np.array(source.labels, dtype=np.int64))
        dominant, cos = dominant_subcenters(emb, labels, centers)
        keep = cos >= math.cos(math.radians(args.threshold_deg))
        kept = np.flatnonzero(keep.numpy())
        options = PackOptions(num_shards=args.shards, shuffle=False, overwrite=args.overwrite)
        meta = pack(KeptSource(source, kept), args.out, options, progress=False)
    except (OSError, ValueError) as err:
        print(f"dist-face-subcenter-clean: error: {err}", file=sys.stderr)
        return 2
    dropped = np.flatnonzero(~keep.numpy())
    out = Path(args.out)
    report = {
        "threshold_deg": args.threshold_deg,
        "kept": len(kept),
        "dropped": [
            {"index": int(i), "label": int(labels[i]), "angle_deg": _deg(float(cos[i]))}
            for i in dropped
        ],
    }
    (out / "dropped.json").write_text(json.dumps(report, indent=1) + "\n")
    w = centers[torch.arange(centers.shape[0]), dominant]
    torch.save(w.contiguous(), out / "dominant_centers.pt")
    print(f"kept {meta.num_images} of {len(source)} records, dropped {len(dropped)}: {args.out}")
    return 0


def _deg(c: float) -> float:
    return round(math.degrees(math.acos(max(-1.0, min(1.0, c)))), 2)


if __name__ == "__main__":
    sys.exit(main())
