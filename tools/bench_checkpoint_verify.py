"""What checking a checkpoint against its manifest costs on the resume path, in MB/s.

1. Writes a real checkpoint with ``save_checkpoint`` (one rank) to a temp dir: a head of
   --classes x --dim fp32 class centers with their SGD momentum rows, and a replicated state
   (backbone and its momentum) of about --backbone-mb MB.
2. Times, best of --repeat, from the page cache (each file is read once first):
   * load (baseline): what resuming reads, ``torch.load`` of every file, tensors
     materialised (``state.pt``, the rank file, the head file);
   * verify: ``read_manifest`` and the SHA-256 of the same files (what a rank checks before
     it loads them);
   * resume: verify, then load (the resume path now).
   MB/s is the checkpoint's bytes over the time; ratios are to the baseline measured in the
   same run. From a cold cache, reading the disk adds the same time to every row.

Example:  python tools/bench_checkpoint_verify.py --classes 200000 --dim 512 --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from dist_face.checkpoint import save_checkpoint
from dist_face.checkpoint.manifest import read_manifest
from dist_face.checkpoint.resume import files_to_read
from dist_face.dist import Topology
from dist_face.metrics.perf import best_of


class _Head(nn.Module):
    def __init__(self, classes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim))


def write(folder: Path, classes: int, dim: int, backbone_mb: float) -> Path:
    head = _Head(classes, dim)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    head.weight.grad = torch.randn_like(head.weight)
    opt.step()  # momentum rows
    n = int(backbone_mb * 1e6 / 4 / 2)  # weights and momentum, fp32
    backbone = {"w": torch.randn(n)}
    replicated = {"step": 1, "backbone": backbone, "optim_backbone": {"m": torch.randn(n)}}
    topology = Topology(rank=0, world_size=1, local_rank=0, local_world_size=1)
    path = save_checkpoint(
        folder,
        1,
        topology,
        replicated=replicated,
        head=head,
        head_optimizer=opt,
        class_range=(0, classes),
        num_classes=classes,
        keep=1,
    )
    assert path is not None
    return path


def load(path: Path, names: list[str]) -> None:
    for name in names:
        obj = torch.load(path / name, map_location="cpu", weights_only=True)
        _touch(obj)


def _touch(obj: object) -> None:
    if torch.is_tensor(obj):
        obj.sum()  # materialised and read
    elif isinstance(obj, dict):
        for v in obj.values():
            _touch(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _touch(v)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--backbone-mb", type=float, default=200.0)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_ckpt_"))
    try:
        path = write(folder, args.classes, args.dim, args.backbone_mb)
        topology = Topology(rank=0, world_size=1, local_rank=0, local_world_size=1)
        names = files_to_read(path, topology, args.classes)
        manifest = read_manifest(path)
        mb = manifest.total_bytes(names) / 1e6
        load(path, names)  # into the page cache

        def verify() -> None:
            read_manifest(path).verify(names)

        def resume() -> None:
            verify()
            load(path, names)

        base = best_of(args.repeat, lambda: load(path, names))
        rows = [("load (baseline)", base), ("verify", best_of(args.repeat, verify))]
        rows.append(("resume (verify + load)", best_of(args.repeat, resume)))
        print(f"checkpoint: {len(names)} files, {mb:.0f} MB, page cache, best of {args.repeat}")
        print(f"{'':24s} {'s':>8s} {'MB/s':>8s} {'x baseline':>11s}")
        for label, seconds in rows:
            print(f"{label:24s} {seconds:8.3f} {mb / seconds:8.0f} {seconds / base:11.2f}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
