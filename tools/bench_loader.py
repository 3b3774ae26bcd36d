"""Loader throughput against its parts, measured in the same run.

For a shard set (default: generated on the fly), reports images/s of
  * read-only: ``ShardSet.read_image`` over the records (memory-mapped reads, no decode);
  * decode-only: Pillow decoding the same bytes in a tight loop on one core;
  * the torch backend with K = 0 (in-process), 1, 2, … workers, normalised batches delivered;
  * the DALI backend on the CPU with K threads (when nvidia-dali is installed);
  * the synthetic backend (no I/O, the ceiling of the loop itself);
and the efficiency of the torch backend, rate / (K × single-core decode rate); the target is
≥ 0.8 with K workers (K ≤ cores).

``--startup`` instead measures what starting an epoch costs: the time from opening the epoch
to its first batch, with the workers forked by the thread opening the epoch (what the loader
does) against the forkserver and spawn start methods, and against no workers at all.

``--crc`` measures what the per-record CRC-32 check against the manifest costs: the CPU time
per image of the checked and the unchecked path (``data.check_crc=false``), for the raw reads
and for the in-process torch backend (read, check, decode, normalise), in back-to-back pairs
(median of ``--repeat``). CPU time of the one process doing all the work is what the check
adds, and unlike wall time it does not depend on what else runs on the machine.

    python tools/bench_loader.py                       # 2,000 generated 112x112 JPEGs
    python tools/bench_loader.py --shards data/quickstart/shards --workers 1 2
    python tools/bench_loader.py --crc                   # cost of the CRC-32 check
    python tools/bench_loader.py --startup --workers 1 2  # cost of starting an epoch
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dist_face.cli.pack import main as pack_main
from dist_face.config import DataConfig
from dist_face.data.format.shards import ShardSet
from dist_face.data.loading.dali_loader import dali_available
from dist_face.data.loading.loader import ShardBatches, build_loader
from dist_face.data.synthetic.faces import sample_jpeg
from dist_face.dist import Topology


def _generate(root: Path, images: int) -> Path:
    for i in range(images):
        folder = root / "train" / f"{i % 100:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(sample_jpeg(0, i % 100, i))
    pack_main([str(root / "train"), str(root / "shards"), "--shards", "4", "--shuffle"])
    return root / "shards"


def _rate(count: int, seconds: float) -> float:
    return count / max(seconds, 1e-9)


def _read_only(shards: ShardSet, n: int) -> float:
    start = time.perf_counter()
    total = sum(len(shards.read_image(i)[0]) for i in range(n))
    assert total > 0
    return _rate(n, time.perf_counter() - start)


def _decode_only(shards: ShardSet, n: int) -> float:
    blobs = [shards.read_image(i)[0] for i in range(n)]
    start = time.perf_counter()
    for data in blobs:
        with Image.open(io.BytesIO(data)) as img:
            np.asarray(img.convert("RGB"))
    return _rate(n, time.perf_counter() - start)


def _loader(
    root: str, backend: str, workers: int, batch: int, classes: int, check_crc: bool = True
) -> float:
    cfg = DataConfig(
        root=root,
        backend=backend,
        batch_size=batch,
        num_workers=workers,
        num_classes=classes if backend == "synthetic" else 0,
        check_crc=check_crc,
    )
    source = build_loader(cfg, Topology(), torch.device("cpu"), seed=0)
    batches = iter(source.epoch(0))
    next(batches)  # worker start-up is not throughput
    start = time.perf_counter()
    count = sum(images.shape[0] for images, _ in batches)
    return _rate(count, time.perf_counter() - start)


def _first_batch_ms(root: str, workers: int, method: str | None, batch: int, epochs: int) -> float:
    """Median milliseconds from opening an epoch to its first batch, over ``epochs`` epochs."""
    cfg = DataConfig(root=root, backend="torch", batch_size=batch, num_workers=workers)
    source = build_loader(cfg, Topology(), torch.device("cpu"), seed=0)
    times = []
    for epoch in range(epochs):
        start = time.perf_counter()
        if method is None:  # the loader itself: fork by the caller's (main) thread
            batches = source.epoch(epoch)
            next(batches)
            times.append(time.perf_counter() - start)
            batches.close()
            continue
        dataset = ShardBatches(cfg, Topology(), 0, epoch, 0, source.num_samples)
        it = iter(
            torch.utils.data.DataLoader(
                dataset, batch_size=None, num_workers=workers, multiprocessing_context=method
            )
        )
        next(it)
        times.append(time.perf_counter() - start)
        del it
    return 1000 * float(np.median(times))


def _startup(root: str, workers: list[int], batch: int) -> None:
    base = _first_batch_ms(root, 0, None, batch, 3)
    print(f"# first batch of an epoch (batch {batch}), median of 3 epochs")
    print("| workers | start method | ms to first batch | vs in-process |\n|---|---|---:|---:|")
    print(f"| 0 | (in-process) | {base:,.0f} | 1.00 |")
    for k in [k for k in workers if k > 0]:
        for method in (None, "forkserver", "spawn"):
            ms = _first_batch_ms(root, k, method, batch, 3)
            print(f"| {k} | {method or 'fork from main thread'} | {ms:,.0f} | {ms / base:.2f} |")


def _cpu_us(fn: Callable[[bool], int], check: bool) -> float:
    """CPU time of this process (all its threads) per item of ``fn(check)``, in µs."""
    start = time.process_time()
    count = fn(check)
    return (time.process_time() - start) / count * 1e6


def _crc_cost(shards: ShardSet, root: str, n: int, batch: int, repeat: int) -> list[tuple]:
    """Rows of µs per image, checked vs unchecked, for raw reads and the in-process loader."""

    def reads(check: bool) -> int:
        for i in range(n):
            shards.read_image(i, check)
        return n

    def loader(check: bool) -> int:
        cfg = DataConfig(
            root=root, backend="torch", batch_size=batch, num_workers=0, check_crc=check
        )
        source = build_loader(cfg, Topology(), torch.device("cpu"), seed=0)
        return sum(images.shape[0] for images, _ in source.epoch(0))

    rows = []
    for name, fn in (
        ("raw reads (ShardSet.read_image)", reads),
        ("torch backend, 0 workers", loader),
    ):
        pairs = [(_cpu_us(fn, True), _cpu_us(fn, False)) for _ in range(repeat)]
        checked, unchecked = (float(np.median(v)) for v in zip(*pairs))
        ratio = float(np.median([u / c for c, u in pairs]))  # throughput checked / unchecked
        rows.append((name, checked, unchecked, checked - unchecked, ratio))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", help="shard set to read (default: generate --images JPEGs)")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--crc", action="store_true", help="only measure the CRC-32 check's cost")
    p.add_argument("--repeat", type=int, default=7, help="checked/unchecked pairs (--crc)")
    p.add_argument("--startup", action="store_true", help="measure epoch start-up instead")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.shards) if args.shards else _generate(Path(tmp), args.images)
        if args.startup:
            _startup(str(root), args.workers, args.batch_size)
            return 0
        shards = ShardSet.open(root)
        n = min(len(shards), 2000)
        if args.crc:
            cost = _crc_cost(shards, str(root), n, args.batch_size, args.repeat)
            size = float(np.mean(shards.lengths[:n]))
            print(
                f"# {n} records of {size / 1e3:.1f} kB mean, CPU µs per image, {args.repeat} pairs"
            )
            print("| path | checked | unchecked | CRC-32 | throughput checked / unchecked |")
            print("|---|---:|---:|---:|---:|")
            for name, checked, unchecked, extra, ratio in cost:
                print(f"| {name} | {checked:.1f} | {unchecked:.1f} | {extra:.1f} | {ratio:.3f} |")
            # the loader's own difference is within its run-to-run noise; the raw reads
            # isolate the check, so its share of the loader's time is the clearer figure
            share = cost[0][3] / cost[1][1]
            print(f"CRC-32 check: {share:.2%} of the in-process loader's CPU time per image")
            return 0
        read = _read_only(shards, n)
        decode = _decode_only(shards, n)
        rows = [
            ("read-only (mmap, no decode)", read, ""),
            ("decode-only (Pillow, 1 core)", decode, ""),
        ]
        for k in args.workers:
            rate = _loader(str(root), "torch", k, args.batch_size, 0)
            eff = rate / (max(k, 1) * decode)
            rows.append((f"torch backend, {k} worker(s)", rate, f"{eff:.2f}"))
        if dali_available():
            for k in sorted({max(k, 1) for k in args.workers}):
                rate = _loader(str(root), "dali", k, args.batch_size, 0)
                eff = rate / (k * decode)
                rows.append((f"dali backend (CPU decoder), {k} thread(s)", rate, f"{eff:.2f}"))
        rows.append(
            (
                "synthetic backend",
                _loader("synthetic", "synthetic", 0, args.batch_size, shards.num_classes),
                "",
            )
        )
    print(f"# {len(shards)} records, batch {args.batch_size}, images/s")
    print("| source | images/s | rate / (K x decode-only) |\n|---|---:|---:|")
    for name, rate, eff in rows:
        print(f"| {name} | {rate:,.0f} | {eff} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
