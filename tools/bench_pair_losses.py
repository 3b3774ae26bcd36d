"""Per-rank cost of the pair losses: own-anchor block (B × N) vs every rank computing N × N.

Simulates one rank of W on one process: the gathered batch of N = W·B embeddings is built
once; the measured step is forward + backward of a loss's share. Baseline (same run): the
replicated form, where every rank evaluates all N anchors. Prints ms per step and the speed-up.

    python tools/bench_pair_losses.py                       # B=64, W=8, D=512 (< 1 min)
    python tools/bench_pair_losses.py --batch 128 --world 32 --dim 512
"""

from __future__ import annotations

import argparse
import time

import torch

from dist_face.heads.auxiliary.pair_losses import PAIR_LOSSES, TripletLoss


def _step_ms(loss: torch.nn.Module, emb: torch.Tensor, labels: torch.Tensor, rows: int) -> float:
    """Median ms of forward + backward of the share of the first ``rows`` anchors."""
    times = []
    for _ in range(7):
        x = emb.detach().requires_grad_(True)
        start = time.perf_counter()
        part = loss.partial_loss(x, labels, 0, rows)
        part.backward()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch B")
    parser.add_argument("--world", type=int, default=8, help="simulated world size W")
    parser.add_argument("--dim", type=int, default=512, help="embedding size D")
    parser.add_argument("--ids", type=int, default=4, help="samples per identity in the batch")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.batch * args.world
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(n, args.dim, generator=gen)
    labels = torch.randperm(n, generator=gen) // args.ids
    losses = {name: PAIR_LOSSES.get(name)() for name in PAIR_LOSSES.names() if name != "center"}
    losses["triplet_semi_hard"] = TripletLoss(mining="semi_hard")
    print(f"B={args.batch} W={args.world} N={n} D={args.dim} threads={args.threads}")
    print(f"{'loss':<18} {'replicated N×N ms':>18} {'own block B×N ms':>17} {'speed-up':>9}")
    for name, loss in losses.items():
        full = _step_ms(loss, emb, labels, n)
        block = _step_ms(loss, emb, labels, args.batch)
        print(f"{name:<18} {full:>18.2f} {block:>17.2f} {full / block:>8.1f}x")


if __name__ == "__main__":
    main()
