"""Benchmark the sharded class-center head against a plain GEMM of the same shape.

For each (B, D, C, W, r) point: forward + backward time of ``PartialFC`` (ArcFace) per step on
rank 0, its achieved GFLOP/s (3 GEMMs: ``6·N·K·D`` flops, N = W·B, K = classes on the rank),
the time of a bare ``[N, D] x [K, D]ᵀ`` GEMM forward + backward measured in the same process
(efficiency = GEMM time / head time), and the bytes a rank sends per step compared with the
naive design that all-gathers every rank's logits. W > 1 runs W gloo processes on CPU; with
CUDA and W = 1 the head runs on the GPU.

    python tools/bench_head.py                      # small grid, < 1 minute on 2 cores
    python tools/bench_head.py --batch 128 --dim 512 --classes 100000 --world 1 2 4 --rate 1 0.1
"""

from __future__ import annotations

import argparse
import itertools
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_face.heads import PartialFC


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn, device: torch.device, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(rank: int, world: int, b: int, d: int, c: int, r: float, iters: int) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and world == 1 else "cpu")
    head = PartialFC(d, c, "arcface", sample_rate=r, check_labels=False).to(device)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(b, d, generator=gen).to(device).requires_grad_(True)
    y = torch.randint(0, c, (b,), generator=gen).to(device)

    def step() -> None:
        head.weight.grad = None
        head(x, y).backward()

    t_head = _timeit(step, device, iters)
    n = b * world
    k = head.num_local if head.last_sampled is None else len(head.last_sampled)
    xs = torch.randn(n, d, device=device, requires_grad=True)
    ws = torch.randn(k, d, device=device, requires_grad=True)
    grad = torch.randn(n, k, device=device)

    def gemm() -> None:
        xs.grad = ws.grad = None
        (xs @ ws.T).backward(grad)

    t_gemm = _timeit(gemm, device, iters)
    return {"t_head": t_head, "t_gemm": t_gemm, "k": k, "device": device.type}


def _worker(rank: int, world: int, port: int, args: tuple, out: mp.Queue) -> None:
    torch.set_num_threads(1)  # one core per rank, as for the single-rank points
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    res = _measure(rank, world, *args)
    if rank == 0:
        out.put(res)
    dist.barrier()
    dist.destroy_process_group()


def _run_point(b: int, d: int, c: int, world: int, r: float, iters: int) -> dict:
    if world == 1:
        return _measure(0, 1, b, d, c, r, iters)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.start_processes(
        _worker, args=(world, port, (b, d, c, r, iters), out), nprocs=world, start_method="spawn"
    )
    return out.get()


def _bytes_per_rank(b: int, d: int, c: int, world: int, k: int) -> tuple[int, int]:
    """Payload bytes a rank contributes per step: this design vs gathering all logits."""
    if world == 1:
        return 0, 0
    n = b * world
    # forward: embeddings (fp32) + labels (int64) gathered, max + (denominator, target) reduced;
    # backward: embedding gradients reduced to their owners
    ours = b * d * 4 + b * 8 + n * 4 + 2 * n * 4 + n * d * 4
    # naive: every rank's N x K logits gathered to all, their gradients scattered back
    naive = n * k * 4 * 2
    return ours, naive


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[256], help="B per rank")
    p.add_argument("--dim", type=int, nargs="+", default=[256], help="embedding size D")
    p.add_argument("--classes", type=int, nargs="+", default=[16384], help="class count C")
    p.add_argument("--world", type=int, nargs="+", default=[1, 2], help="world sizes W")
    p.add_argument("--rate", type=float, nargs="+", default=[1.0, 0.1], help="sample rates r")
    p.add_argument("--iters", type=int, default=5, help="timed steps per point (median)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # per-core figures: the machine is shared, ranks get one core each
    print(
        "| B | D | C | W | r | dev | K/rank | head ms | GFLOP/s | GEMM ms | eff | "
        "KiB sent/rank | naive KiB | naive/ours |"
    )
    print("|---" * 14 + "|")
    grid = itertools.product(args.batch, args.dim, args.classes, args.world, args.rate)
    for b, d, c, w, r in grid:
        res = _run_point(b, d, c, w, r, args.iters)
        k, n = res["k"], b * w
        flops = 6 * n * k * d
        ours, naive = _bytes_per_rank(b, d, c, w, k)
        ratio = f"{naive / ours:.1f}" if ours else "-"
        print(
            f"| {b} | {d} | {c} | {w} | {r} | {res['device']} | {k} | "
            f"{res['t_head'] * 1e3:.1f} | {flops / res['t_head'] / 1e9:.1f} | "
            f"{res['t_gemm'] * 1e3:.1f} | {res['t_gemm'] / res['t_head']:.2f} | "
            f"{ours / 1024:.0f} | {naive / 1024:.0f} | {ratio} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
