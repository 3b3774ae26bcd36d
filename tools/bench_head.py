"""Steps/s and peak memory of the class-center head, against baselines measured in the same run.

One training step of the head alone (forward, backward and the optimizer update; ArcFace,
SGD with momentum 0.9 and weight decay 5e-4) on one process, for each C and r:

* ``sparse``   — the fused head with the row-sparse update (``head.update=sparse``), its
  forward's projections kept for backward (``head.keep_projections_mb``, 512 MiB);
* ``recompute`` — ``sparse`` with ``keep_projections_mb=0``: backward recomputes them (one
  more GEMM per block, nothing ``[N, K]``-sized kept);
* ``dense``    — the fused head with a dense ``[C, D]`` gradient and torch's fused SGD
  (``head.update=dense``: every row moves every step);
* ``bf16``     — ``sparse`` with the centers and momentum stored in bf16 (``head.storage``);
* ``gemm``     — the three bare GEMMs of the step on the kept ``K`` rows, one call each, in
  the fastest layout measured here (``W·xᵀ``, not ``x·Wᵀ``; ``Gᵀ·x``; ``G·W``): the
  baseline of the ``× gemm rate`` column;
* ``gemm_xwt`` — ``gemm`` with the forward GEMM as ``x·Wᵀ``, the slower layout (not in the
  default set: ``--impls gemm gemm_xwt`` compares the two);
* ``--external FILE`` — any other head: FILE defines ``make_step(C, D, r, seed) ->
  step(x, y)`` (a full training step); e.g. arcface_torch's PartialFC_V2 with its SGD.

Every point runs in two fresh subprocesses:

* one times it, with the allocator as training runs it: the median process CPU time of
  ``--steps`` steps after one warm-up, on ``--threads`` threads (1 by default: CPU time then
  stays meaningful on a shared, busy machine, where wall time does not);
* one measures its peak resident memory (``ru_maxrss`` less the process's resident set before
  the head is built, over a warm-up and one step), with glibc told to unmap freed blocks
  (:func:`~dist_face.metrics.perf.rss_follows_live_memory`) so that the peak follows live
  memory. That setting turns every large allocation into fresh page faults and slowed the
  fused head's step by ~10 %, so it is kept out of the timed process
  (``--time-unmapped`` times under it too, as this tool did before be0dc27).

The table gives the peak as a multiple of the fp32 class-center bytes ``C·D·4``. Ratios are
against ``dense`` (and ``gemm``) of the same run.

    python tools/bench_head.py                                   # C = 200k, 1M; r = 1, 0.1
    python tools/bench_head.py --classes 20000 --rates 1 --impls sparse dense gemm
    python tools/bench_head.py --external /path/to/arcface_pfc_v2.py
    python tools/bench_head.py --chunks 1024 4096 16384 65536   # block size of the fused loss
    python tools/bench_head.py --classes 100000 --rates 1 --impls sparse --dim 8  # per block
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from dist_face.heads import PartialFC
from dist_face.heads.sharded.fused_loss import KEEP_PROJECTIONS_MB
from dist_face.heads.sharded.row_optim import build_row_optimizer
from dist_face.metrics.perf import memory_stats, rss_follows_live_memory

B, D = 64, 512
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4
Step = Callable[[torch.Tensor, torch.Tensor], object]


def _fused(c: int, r: float, update: str, storage: torch.dtype, chunk: int, keep_mb: float) -> Step:
    head = PartialFC(
        D,
        c,
        "arcface",
        r,
        check_labels=False,
        chunk_size=chunk,
        storage_dtype=storage,
        keep_projections_mb=keep_mb,
    )
    if update == "sparse":
        opt = build_row_optimizer(head, "sgd", LR, WD, MOMENTUM)
        head.hand_rows_to(opt.sink)
    else:
        opt = torch.optim.SGD([head.weight], lr=LR, momentum=MOMENTUM, weight_decay=WD, fused=True)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        head(x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _gemm(c: int, r: float, transposed: bool = True) -> Step:
    k = max(int(r * c), B)
    w = torch.randn(k, D) * 0.01
    grad = torch.randn(B, k)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        z = torch.mm(w, x.T) if transposed else x @ w.T  # forward (zᵀ or z)
        _ = grad.T @ x  # ∂L/∂W
        _ = grad @ w  # ∂L/∂x
        del z

    return step


def _external(path: str, c: int, r: float) -> Step:
    spec = importlib.util.spec_from_file_location("external_head", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.make_step(c, D, r, 0)


def _rss() -> float:
    return memory_stats(torch.device("cpu")).get("memory/rss_bytes", 0.0)


def measure(
    impl: str,
    c: int,
    r: float,
    steps: int,
    chunk: int,
    external: str | None,
    what: str,
    unmapped: bool = False,
) -> dict:
    """One point, in this process: ``what`` = ``"time"`` (seconds per step, median) or
    ``"peak"`` (peak memory over the resident set before the head is built, in bytes).
    ``unmapped``: time under the peak's allocator setting as well."""
    if what == "peak" or unmapped:
        rss_follows_live_memory()
    if what == "peak":
        steps = 1
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, D, generator=gen).requires_grad_(True)
    y = torch.randint(0, c, (B,), generator=gen)
    base = _rss()
    if impl in ("gemm", "gemm_xwt"):
        step = _gemm(c, r, transposed=impl == "gemm")
    elif impl == "external":
        step = _external(external, c, r)
    else:
        update = "dense" if impl == "dense" else "sparse"
        storage = torch.bfloat16 if impl == "bf16" else torch.float32
        keep_mb = 0 if impl == "recompute" else KEEP_PROJECTIONS_MB
        step = _fused(c, r, update, storage, chunk, keep_mb)
    times = []
    for i in range(steps + 1):
        x.grad = None
        start = time.process_time()
        step(x, y)
        if i:  # the first step allocates optimizer state and warms the allocator
            times.append(time.process_time() - start)
    if what == "time":
        return {"s_per_step": statistics.median(times)}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    return {"peak": max(peak - base, 0.0)}


def _run_point(
    args: argparse.Namespace, impl: str, c: int, r: float, chunk: int, peak: bool = True
) -> dict:
    """Time one point in a fresh process and, if ``peak``, measure its memory in another."""
    result = {"s_per_step": float("nan"), "peak": float("nan")}
    for what in ("time", "peak") if peak else ("time",):
        cmd = [sys.executable, __file__, "--one", impl, str(c), str(r), str(chunk), what]
        cmd += ["--steps", str(args.steps), "--threads", str(args.threads), "--dim", str(D)]
        if args.time_unmapped:
            cmd.append("--time-unmapped")
        if args.external:
            cmd += ["--external", args.external]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:  # e.g. killed for memory: report it, go on with the others
            reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
            print(f"{impl} C={c} r={r} ({what}): failed ({reason})", file=sys.stderr)
            continue
        result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return result


def main() -> None:
    global D  # --dim: every step builder reads it
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--rates", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument(
        "--impls",
        nargs="+",
        default=["dense", "sparse", "recompute", "bf16", "gemm"],
        help="what to time",
    )
    parser.add_argument("--external", help="a file defining make_step(C, D, r, seed)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per point")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per point")
    parser.add_argument("--chunk", type=int, default=0, help="classes per block (0 = default)")
    parser.add_argument("--chunks", type=int, nargs="*", help="time the sparse head per block size")
    parser.add_argument("--dim", type=int, default=D, help="embedding size D")
    parser.add_argument(
        "--time-unmapped",
        action="store_true",
        help="time with glibc unmapping freed blocks, as the peak is measured",
    )
    parser.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    D = args.dim
    torch.set_num_threads(args.threads)
    if args.one:
        impl, c, r, chunk, what = args.one
        point = measure(
            impl, int(c), float(r), args.steps, int(chunk), args.external, what, args.time_unmapped
        )
        print(json.dumps(point))
        return
    if args.chunks:
        _chunk_table(args)
        return
    impls = list(args.impls) + (["external"] if args.external else [])
    print(
        f"B={B} D={D} ArcFace, SGD momentum {MOMENTUM} wd {WD}, one process, {args.threads} "
        "thread(s); s/step = CPU time; peak = resident memory / (C·D·4 bytes)"
    )
    print("| C | r | impl | s/step | samples/s | × dense | × gemm rate | peak × C·D·4 |")
    print("|---|---|---|---|---|---|---|---|")
    for c in args.classes:
        for r in args.rates:
            res = {impl: _run_point(args, impl, c, r, args.chunk) for impl in impls}
            fp32 = c * D * 4
            for impl, m in res.items():
                t = m["s_per_step"]
                vs_dense = res["dense"]["s_per_step"] / t if "dense" in res else float("nan")
                vs_gemm = res["gemm"]["s_per_step"] / t if "gemm" in res else float("nan")
                print(
                    f"| {c:,} | {r:g} | {impl} | {t:.3f} | {B / t:.1f} | {vs_dense:.2f} | "
                    f"{vs_gemm:.2f} | {m['peak'] / fp32:.2f} |",
                    flush=True,
                )


def _chunk_table(args: argparse.Namespace) -> None:
    print("| C | r | chunk | s/step | × first |")
    print("|---|---|---|---|---|")
    for c in args.classes:
        for r in args.rates:
            first = None
            for chunk in args.chunks:
                t = _run_point(args, "sparse", c, r, chunk, peak=False)["s_per_step"]
                first = first or t
                print(f"| {c:,} | {r:g} | {chunk} | {t:.3f} | {first / t:.2f} |", flush=True)


if __name__ == "__main__":
    main()
