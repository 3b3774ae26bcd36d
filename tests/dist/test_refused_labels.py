"""A label outside the class range in a record header: one line on every rank, no hang.

The records' header bytes are rewritten on disk (DALI reads labels from the headers, the
manifest stays right), then two ranks train under real torchrun with DALI's CPU pipeline.
Only rank 0's piece of the data holds the bad records; both ranks must stop with the same
line naming the value, the class count and the data set, without a traceback.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from dist_face.data.format.shards import ShardSet

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (extra 'dali')")
pytestmark = pytest.mark.dist

BAD = 9999.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _corrupt_header_labels(root: Path, rows: range) -> None:
    """Write ``BAD`` into the IRHeader label (frame 8 bytes, then flag u32, label f32)."""
    shards = ShardSet.open(root)
    for row in rows:
        path = shards.rec_path(int(shards.shard_ids[row]))
        with open(path, "r+b") as f:
            f.seek(int(shards.offsets[row]) + 8 + 4)
            f.write(struct.pack("<f", BAD))


def test_a_bad_header_label_stops_every_rank_with_one_line(
    color_shards: Path, tmp_path: Path
) -> None:
    root = tmp_path / "shards"
    shutil.copytree(color_shards, root)
    # DALI gives rank r piece r of the manifest order in epoch 0: rows 0-19 are rank 0's only
    _corrupt_header_labels(root, range(20))
    torchrun = Path(sys.executable).parent / "torchrun"
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node=2",
            f"--master_port={_free_port()}",
            "--redirects=0:0,1:0",
            "--monitor-interval=5",  # see test_entry_torchrun.py
            "-m",
            "dist_face.train",
            "--config",
            "debug_cpu",
            f"--data.root={root}",
            "--data.backend=dali",
            "--data.batch_size=4",
            "--data.image_size=112",
            "--train.max_steps=6",
            "--train.log_every=2",
            "--eval.targets=[]",
            "--checkpoint.every=0",
            f"--output_root={tmp_path}/runs",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.splitlines()
    expected = f"data: label {int(BAD)} is outside [0, 7) (the data's class count): a record "
    where = f"header of {root} (data.backend=dali, rank 0, epoch 0, batch "
    for rank in (0, 1):
        mine = [line for line in lines if line.startswith(f"[rank{rank}]") and "ERROR" in line]
        assert len(mine) == 1, proc.stderr
        assert expected in mine[0] and where in mine[0], mine[0]
    frames = [line for line in lines if line.strip().startswith('File "')]
    assert not any("dist_face" in line for line in frames), proc.stderr
    assert "exitcode  : 1" in proc.stderr
