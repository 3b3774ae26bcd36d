"""``dist-face-inspect``: counts, classes, images per class and sizes of a dataset."""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

import numpy as np

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.data.packing.sources import RecSource, ShardSetSource, open_source

_BUCKETS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]


def summarize(path: str) -> dict[str, Any]:
    """Summary of a shard set, ``.rec``, ``.lst`` or image folder as a JSON-ready dict."""
    source = open_source(path)
    labels = np.asarray(source.labels)
    per_class = np.bincount(labels, minlength=source.num_classes)
    edges = [*_BUCKETS, max(int(per_class.max()) + 1, _BUCKETS[-1] + 1)]
    hist = np.histogram(per_class, bins=[0, *edges])[0]
    names = ["0"] + [
        f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(edges)
    ]
    out: dict[str, Any] = {
        "path": path,
        "kind": type(source).__name__.removesuffix("Source").lower(),
        "num_images": int(labels.size),
        "num_classes": int(source.num_classes),
        "images_per_class": {
            "min": int(per_class.min()),
            "median": float(np.median(per_class)),
            "mean": float(per_class.mean()),
            "max": int(per_class.max()),
            "histogram": {n: int(c) for n, c in zip(names, hist) if c},
        },
    }
    sizes = _record_sizes(source)
    if sizes is not None:
        out["record_bytes"] = {
            "total": int(sizes.sum()),
            "mean": float(sizes.mean()),
            "min": int(sizes.min()),
            "max": int(sizes.max()),
        }
    if isinstance(source, ShardSetSource):
        meta = source.shard_set.meta
        out["num_shards"] = len(meta.shards)
        out["records_per_shard"] = [s.num_records for s in meta.shards]
        out["image_shape"] = meta.image_shape
        out["shuffled"] = meta.shuffled
        out["labels_in_records"] = meta.labels_in_records
    if isinstance(source, RecSource):
        out["insightface_header"] = source.identity_ranges is not None
    return out


def _record_sizes(source: Any) -> np.ndarray | None:
    if isinstance(source, ShardSetSource):
        return source.shard_set.lengths
    if isinstance(source, RecSource):  # on-disk extent of every indexed record
        offsets = np.sort(source.reader.offsets)
        return np.diff(np.append(offsets, source.reader.file_size))
    return None


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``dist-face-inspect``."""
    p = argparse.ArgumentParser(
        prog="dist-face-inspect",
        description="Summarize a shard set, .rec, .lst or image folder: image and class counts, "
        "images-per-class histogram, record sizes, shards.",
    )
    p.add_argument("path", help="shard set directory, .rec, .lst or image folder")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Print the summary; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        summary = summarize(args.path)
    except (OSError, ValueError) as err:
        print(f"dist-face-inspect: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for key, value in summary.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
