"""Index scan of an InsightFace ``.rec`` (training without repacking) per million records.

1. Writes an InsightFace-layout ``train.rec``/``train.idx`` to a temp dir: --records image
   records of --payload random bytes in --classes identities, the identity records and the
   header record (see tests/helpers/insightface.py for the layout).
2. Times, best of --repeat, from the page cache (the files are read once first):
   * scan: ``scan_rec`` reading every record's headers through the index (what the first
     training run on the file does before caching the manifest);
   * cached: ``open_rec`` with the manifest already cached (every later run and every rank);
   * baseline: reading every payload once in file order with ``RecordReader`` (the least
     that packing or resharding the same file costs, before writing anything).
   Ratios are to the baseline measured in the same run.

Example:  python tools/bench_rec_index.py --records 1000000 --payload 512 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

import numpy as np

from dist_face.data.format.rec_index import open_rec, scan_rec
from dist_face.data.format.recordio import RecordReader, RecordWriter, pack_record
from dist_face.metrics.perf import best_of


def write_rec(folder: str, records: int, payload: int, classes: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    blob = rng.integers(0, 256, payload + 4096, dtype=np.uint8).tobytes()
    labels = np.sort(rng.integers(0, classes, records))
    labels[:classes] = np.arange(classes)  # every identity present
    labels.sort()
    rec = os.path.join(folder, "train.rec")
    with RecordWriter(rec, os.path.join(folder, "train.idx")) as w:
        for i, label in enumerate(labels.tolist()):
            start = i % 4096
            w.write(1 + i, pack_record(float(label), blob[start : start + payload]))
        bounds = np.searchsorted(labels, np.arange(classes + 1))
        for c in range(classes):
            w.write(records + 1 + c, pack_record([1 + bounds[c], 1 + bounds[c + 1]], b""))
        w.write(0, pack_record([records + 1, records + 1 + classes], b""))
    return rec


def read_all(rec: str) -> None:
    for _ in RecordReader(rec):
        pass


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--payload", type=int, default=512, help="bytes per image record")
    p.add_argument("--classes", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench_rec_index_")
    try:
        rec = write_rec(tmp, args.records, args.payload, args.classes, args.seed)
        size = os.path.getsize(rec)
        read_all(rec)  # warm the page cache for every measurement
        scan = best_of(args.repeat, lambda: scan_rec(rec))
        cache = os.path.join(tmp, "cache")
        open_rec(rec, cache_dir=cache)  # builds the cached manifest beside the data
        cached = best_of(args.repeat, lambda: open_rec(rec, cache_dir=cache))
        baseline = best_of(args.repeat, lambda: read_all(rec))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_m = 1e6 / args.records
    print(
        f"{args.records} records of {args.payload} B ({size / 2**20:.0f} MiB), {args.classes} ids"
    )
    print(f"{'':28s} {'s':>8s} {'s per 1M rec':>13s} {'ratio':>7s}")
    for name, t in (
        ("baseline: read all payloads", baseline),
        ("scan: index + headers", scan),
        ("cached manifest: open", cached),
    ):
        print(f"{name:28s} {t:8.3f} {t * per_m:13.3f} {t / baseline:7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
