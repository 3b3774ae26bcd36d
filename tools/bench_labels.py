"""Host time per step of the head's label path on W gloo ranks: inline against one step ahead.

The label path of a step (:mod:`dist_face.heads.sharded.label_path`): all-gather the ``N = W·B``
host labels over gloo, check their range, draw Partial FC's sample over the rank's
``C_local`` classes. Two ways, measured in the same run on the same ranks:

* ``inline`` — the path as the forward ran it before the prefetch: gathered, checked and
  sampled on the main thread when the step needs them (the baseline);
* ``ahead`` — :class:`~dist_face.heads.sharded.label_path.LabelPrefetch`: the trainer submits step
  ``t + 1``'s labels before it runs step ``t``, a worker thread prepares them, step ``t + 1``
  takes them.

The figure is the main thread's wall time per step spent in the label path (inline: the
call; ahead: ``submit`` + ``take``), the median over ``--steps`` steps after ``--warmup``,
the largest over ranks. The device's share of a step is stood in by sleeping ``--step-ms``
on the main thread (on a GPU the host waits for the device there; the CPU is then free for
the worker, as it is here). Every rank uses one intra-op thread (the machine is shared).

    python tools/bench_labels.py                          # W = 4, B = 128, r = 0.1
    python tools/bench_labels.py --local-classes 32768 257000 --step-ms 60
"""

from __future__ import annotations

import argparse
import datetime
import json
import socket
import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dist_face.dist import comm
from dist_face.heads.sharded.label_path import LabelPrefetch, host_label_path
from dist_face.heads.sharded.sampling import ClassSampler


@dataclass
class SlicedHead:
    """The part of a sharded head the label path reads: its class slice and its sampler."""

    num_classes: int
    class_start: int
    num_local: int
    sampler: ClassSampler
    check_labels: bool = True
    label_prefetch: LabelPrefetch | None = field(default=None)


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=rank == 0)
    dist.init_process_group(
        "gloo", store=store, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300)
    )
    labels_group = comm.label_group(None)
    results = {}
    for c_local in args.local_classes:
        num_classes = c_local * world
        gen = torch.Generator().manual_seed(rank)
        steps = args.warmup + args.steps
        labels = [torch.randint(0, num_classes, (args.batch,), generator=gen) for _ in range(steps)]
        head = SlicedHead(
            num_classes, rank * c_local, c_local, ClassSampler(c_local, args.rate, 0, rank)
        )
        inline = []
        for y in labels:
            start = time.perf_counter()
            host_label_path(head, y, None)  # the default group: gloo here, as before
            inline.append(time.perf_counter() - start)
            time.sleep(args.step_ms / 1e3)
        head.sampler = ClassSampler(c_local, args.rate, 0, rank)
        prefetch = LabelPrefetch(head, labels_group).attach()
        ahead = []
        prefetch.submit(labels[0])
        for t, y in enumerate(labels):
            start = time.perf_counter()
            if t + 1 < steps:
                prefetch.submit(labels[t + 1])
            spent = time.perf_counter() - start
            time.sleep(args.step_ms / 1e3)  # step t on the device
            start = time.perf_counter()
            prefetch.take(y)
            ahead.append(spent + time.perf_counter() - start)
        prefetch.close()
        results[c_local] = {
            "inline_ms": statistics.median(inline[args.warmup :]) * 1e3,
            "ahead_ms": statistics.median(ahead[args.warmup :]) * 1e3,
        }
    dist.barrier()
    out.put((rank, results))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    """Command line (module doc)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world-size", type=int, default=4)
    ap.add_argument("--batch", type=int, default=128, help="B per rank")
    ap.add_argument("--rate", type=float, default=0.1, help="Partial FC sample rate r")
    ap.add_argument("--local-classes", type=int, nargs="+", default=[32768, 257000])
    ap.add_argument("--step-ms", type=float, default=60.0, help="the step's device time")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, args.world_size, port, args, queue))
        for r in range(args.world_size)
    ]
    for p in procs:
        p.start()
    per_rank = dict(queue.get() for _ in procs)
    for p in procs:
        p.join()
    rows = []
    print(
        f"label path, host ms per step on the main thread (W = {args.world_size} gloo ranks, "
        f"B = {args.batch}, r = {args.rate}, step {args.step_ms:g} ms; worst rank)"
    )
    print("| C_local | inline (before) | ahead (after) | after / before |")
    print("|---|---|---|---|")
    for c_local in args.local_classes:
        inline = max(per_rank[r][c_local]["inline_ms"] for r in per_rank)
        ahead = max(per_rank[r][c_local]["ahead_ms"] for r in per_rank)
        rows.append({"local_classes": c_local, "inline_ms": inline, "ahead_ms": ahead})
        print(f"| {c_local} | {inline:.2f} | {ahead:.3f} | {ahead / inline:.3f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
