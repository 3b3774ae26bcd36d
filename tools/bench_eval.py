"""Evaluation throughput against the backbone's forward-only rate, measured in one run.

1. Writes a synthetic IJB-C set (--identities held-out subjects) to a temp dir.
2. Forward-only: the backbone on a ready [--batch-size, 3, 112, 112] tensor, in images/s
   (one view per image). This is the ceiling of any evaluation with that backbone.
3. IJB pipeline: decode + 5-point alignment + original and mirror forwards (dist_face's
   embed_ijb), in images/s, and its ratio to the forward-only rate. Two forwards per image
   put the ratio at most 0.5; the rest of the gap is decoding and alignment on the CPU.
4. Scoring: template pooling, pair scores, TAR@FAR and the 1:N protocol from stored features,
   in seconds (no backbone involved).
5. ONNX: the exported file under onnxruntime, in images/s, against torch's forward-only rate
   (when onnxruntime is installed).

Example:  python tools/bench_eval.py --backbone tiny --identities 30 --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from dist_face.data.synthetic.ijb import IJBSpec, generate_ijb
from dist_face.eval.ijb_embed import AlignedIJB, embed_ijb
from dist_face.eval.ijb_meta import read_ijb
from dist_face.eval.ijb_pipeline import IJBOptions, score_features
from dist_face.metrics.perf import best_of
from dist_face.models import create


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="tiny", help="registered backbone name")
    p.add_argument("--embedding-size", type=int, default=128)
    p.add_argument("--identities", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="decoding processes of the pipeline")
    p.add_argument("--repeat", type=int, default=3, help="best of N timings")
    args = p.parse_args()
    torch.manual_seed(0)
    model = create(args.backbone, embedding_size=args.embedding_size).eval()
    with tempfile.TemporaryDirectory() as tmp:
        root = generate_ijb(Path(tmp) / "IJBC", IJBSpec(identities=args.identities))
        meta = read_ijb(root, "IJBC")
        n = len(meta.image_names)
        # real aligned faces: this CPU runs the same convolutions slower on uniform noise
        faces = AlignedIJB(meta, np.arange(min(args.batch_size, n)))
        pixels = torch.from_numpy(np.stack([faces[i][0] for i in range(len(faces))]))
        x = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1

        def forward() -> None:
            with torch.no_grad():
                for _ in range(max(1, n // args.batch_size)):
                    model(x)

        forward()  # warm-up
        feats = embed_ijb(model, meta, args.batch_size, args.workers, progress=False)
        # interleaved rounds, best of each: a busy machine slows both sides of the ratio alike
        t_fwd, t_pipe = float("inf"), float("inf")
        for _ in range(args.repeat):
            t_fwd = min(t_fwd, best_of(1, forward))
            t_pipe = min(
                t_pipe,
                best_of(
                    1, lambda: embed_ijb(model, meta, args.batch_size, args.workers, progress=False)
                ),
            )
        fwd_rate = max(1, n // args.batch_size) * len(x) / t_fwd
        pipe_rate = n / t_pipe
        t_score = best_of(args.repeat, lambda: score_features(meta, feats, IJBOptions()))
        print(
            f"backbone {args.backbone} (D={args.embedding_size}), {n} images, "
            f"{len(meta.pairs)} pairs, batch {args.batch_size}, {torch.get_num_threads()} threads"
        )
        print(f"forward only       {fwd_rate:9.1f} images/s   (1.00)")
        print(f"IJB embedding      {pipe_rate:9.1f} images/s   ({pipe_rate / fwd_rate:.2f})")
        print(f"IJB scoring        {t_score:9.3f} s for 1:1 + 1:N from features")
        try:
            import onnxruntime as ort

            from dist_face.export.onnx_export import export_onnx
        except ImportError:
            print("ONNX               skipped (onnxruntime not installed)")
            return 0
        path = export_onnx(model, Path(tmp) / "model.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        xn = x.numpy()

        def run_onnx() -> None:
            for _ in range(max(1, n // args.batch_size)):
                session.run(None, {"data": xn})

        run_onnx()
        onnx_rate = max(1, n // args.batch_size) * len(x) / best_of(args.repeat, run_onnx)
        print(f"onnxruntime        {onnx_rate:9.1f} images/s   ({onnx_rate / fwd_rate:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
