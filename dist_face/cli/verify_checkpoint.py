"""``dist-face-verify`` on checkpoints: every file against its manifest, one line each.

PATH is a checkpoint directory (``step_<N>``), a run's ``checkpoints`` directory or a run
directory. Each checkpoint prints ``<name>: ok (...)`` or ``<name>: BAD <file>: <why>``;
the exit code is 1 when any is bad, 2 when PATH holds no checkpoint.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from dist_face.checkpoint.manager import MANIFEST, list_checkpoints
from dist_face.checkpoint.manifest import CheckpointCorrupt, read_manifest


def is_checkpoint_path(path: Path) -> bool:
    """Whether ``path`` is a checkpoint, a ``checkpoints`` directory or a run directory."""
    path = Path(path)
    return path.is_dir() and (
        (path / MANIFEST).exists() or (path / "state.pt").exists() or bool(_checkpoints(path))
    )


def _checkpoints(path: Path) -> list[Path]:
    if (path / MANIFEST).exists() or (path / "state.pt").exists():
        return [path]
    run = path.parent if path.name == "checkpoints" else path
    return list_checkpoints(run)


def verify_checkpoints(path: Path, prog: str = "dist-face-verify") -> int:
    """Check every checkpoint under ``path``; prints one line each, returns the exit code."""
    found = _checkpoints(Path(path))
    if not found:
        print(f"{prog}: error: {path}: no checkpoint found", file=sys.stderr)
        return 2
    bad = 0
    for ckpt in found:
        start = time.perf_counter()
        try:
            manifest = read_manifest(ckpt)
            manifest.verify()
        except CheckpointCorrupt as exc:
            bad += 1
            print(f"{ckpt}: BAD {exc.path.name}: {exc.reason}")
            continue
        seconds = time.perf_counter() - start
        mb = manifest.total_bytes() / 1e6
        print(
            f"{ckpt}: ok (step {manifest.step}, {len(manifest.files)} files, {mb:.1f} MB, "
            f"{mb / max(seconds, 1e-9):.0f} MB/s)"
        )
    print(f"{len(found)} checkpoints checked, {bad} bad")
    return 1 if bad else 0
