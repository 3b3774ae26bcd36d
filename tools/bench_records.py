"""Record I/O throughput against plain file I/O of the same bytes, measured in one run.

1. Writes --images random 112x112 JPEGs (one folder per identity) to a temp dir.
2. Packing: dist_face's packer (folder -> shards) vs a plain copy of the same image files
   into one file. Target: the packer stays I/O-bound (ratio near 1).
3. Reading: RecordReader over every shard in file order, and in random key order, vs a raw
   sequential read of the same .rec files in 1 MiB chunks. Target: >= 80 % of raw bandwidth.

Files are read once before timing so every figure is from the page cache (the same for both
sides of each ratio). Example:  python tools/bench_records.py --images 4000 --repeat 3
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile

import numpy as np
from PIL import Image

from dist_face.data.format.recordio import RecordReader
from dist_face.data.format.shards import ShardSet
from dist_face.data.packing.pack import PackOptions, pack
from dist_face.data.packing.sources import FolderSource
from dist_face.metrics.perf import best_of


def make_images(root: str, count: int, size: int, classes: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(count):
        folder = os.path.join(root, f"id_{i % classes:05d}")
        os.makedirs(folder, exist_ok=True)
        grid = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        noise = rng.integers(0, 24, (size, size, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(grid).resize((size, size), Image.Resampling.BICUBIC))
        buf = io.BytesIO()
        Image.fromarray(image + noise).save(buf, format="JPEG", quality=95)
        with open(os.path.join(folder, f"{i:07d}.jpg"), "wb") as f:
            f.write(buf.getvalue())
        total += buf.tell()
    return total


def plain_copy(src: FolderSource, out_path: str) -> None:
    with open(out_path, "wb") as out:
        for i in range(len(src)):
            out.write(src.read(i))


def raw_read(paths: list[str]) -> int:
    total = 0
    chunk = bytearray(1 << 20)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(chunk):
                total += n
    return total


def reader_pass(readers: list[RecordReader], order: str) -> int:
    total = 0
    for reader in readers:
        if order == "file":
            for _, payload in reader:
                total += len(payload)
        else:
            for key in np.random.default_rng(0).permutation(reader.keys).tolist():
                total += len(reader.read(key))
    return total


def shard_set_pass(shards: ShardSet, order: np.ndarray) -> int:
    read = shards.read
    return sum(len(read(i)) for i in order.tolist())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=3000, help="number of images (default 3000)")
    p.add_argument("--size", type=int, default=112, help="image side in pixels (default 112)")
    p.add_argument("--classes", type=int, default=100, help="identities (default 100)")
    p.add_argument("--shards", type=int, default=4, help="output shards (default 4)")
    p.add_argument("--workers", type=int, default=1, help="packing processes (default 1)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions, best kept")
    p.add_argument("--passes", type=int, default=5, help="reads of all shards per timed run")
    p.add_argument("--dir", help="work directory (default: a temp dir, removed at the end)")
    args = p.parse_args(argv)

    work = args.dir or tempfile.mkdtemp(prefix="bench_records_")
    try:
        image_bytes = make_images(
            os.path.join(work, "img"), args.images, args.size, args.classes, 0
        )
        src = FolderSource(os.path.join(work, "img"))
        n, mb = len(src), image_bytes / 1e6
        copy_s = best_of(args.repeat, lambda: plain_copy(src, os.path.join(work, "copy.bin")))
        opts = PackOptions(num_shards=args.shards, workers=args.workers, overwrite=True)
        out = os.path.join(work, "shards")
        pack_s = best_of(args.repeat, lambda: pack(src, out, opts, progress=False))

        readers = [
            RecordReader(os.path.join(out, f))
            for f in sorted(os.listdir(out))
            if f.endswith(".rec")
        ]
        recs = [r.rec_path for r in readers]
        rec_mb = raw_read(recs) / 1e6  # also warms the page cache
        payload_mb = reader_pass(readers, "file") / 1e6
        shards = ShardSet.open(out)
        perm = np.random.default_rng(0).permutation(len(shards))
        k = args.passes
        raw_s = best_of(args.repeat, lambda: [raw_read(recs) for _ in range(k)]) / k
        file_s = best_of(args.repeat, lambda: [reader_pass(readers, "file") for _ in range(k)]) / k
        rand_s = (
            best_of(args.repeat, lambda: [reader_pass(readers, "random") for _ in range(k)]) / k
        )
        set_s = best_of(args.repeat, lambda: [shard_set_pass(shards, perm) for _ in range(k)]) / k
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"{n} images ({args.size}x{args.size} JPEG, {mb / n * 1e3:.1f} kB mean), "
        f"{args.shards} shards, {args.workers} packing worker(s), "
        f"best of {args.repeat} runs of {k} passes, page cache"
    )
    raw_bw = rec_mb / raw_s  # MB/s; the reader rows compare payload MB/s against it
    rows = [
        ("plain copy of the image files", n / copy_s, mb / copy_s, None),
        ("pack (folder -> shards)", n / pack_s, mb / pack_s, copy_s / pack_s),
        ("raw sequential read of the .rec", n / raw_s, raw_bw, None),
    ]
    for name, secs in [
        ("RecordReader, file order", file_s),
        ("RecordReader, random keys", rand_s),
        ("ShardSet.read, random order", set_s),
    ]:
        rows.append((name, n / secs, payload_mb / secs, payload_mb / secs / raw_bw))
    print(f"| {'what':34s} | {'records/s':>10s} | {'MB/s':>8s} | {'vs baseline':>11s} |")
    print(f"|{'-' * 36}|{'-' * 11}:|{'-' * 9}:|{'-' * 12}:|")
    for name, rps, mbps, ratio in rows:
        cell = "baseline" if ratio is None else f"{ratio:.2f}x"
        print(f"| {name:34s} | {rps:10,.0f} | {mbps:8,.1f} | {cell:>11s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
