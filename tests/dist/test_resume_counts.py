"""A run resumed on more ranks and more epochs says what it will do, and does exactly that."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(ranks: int, args: list[str], cwd: Path) -> str:
    """Real torchrun, real trainer; returns rank 0's log."""
    done = subprocess.run(
        [
            str(TORCHRUN),
            f"--nproc_per_node={ranks}",
            f"--master_port={_free_port()}",
            "--local-ranks-filter=0",
            "-m",
            "dist_face.train",
            "--config",
            "debug_cpu",
            *args,
        ],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_a_resume_on_3_ranks_with_more_epochs_runs_the_steps_it_announces(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    common = [
        f"--data.root={tiny_dataset}/shards",
        "--eval.targets=[]",
        "--output_root=runs",  # relative: the directory torchrun was started in
        "--name=grow",
        f"--data.batch_size={BATCH}",
        "--data.num_workers=0",
        "--train.log_every=1",
        "--checkpoint.every=3",
    ]
    _train(2, [*common, "--train.epochs=1", "--train.max_steps=3"], tmp_path)
    log = _train(3, [*common, "--resume=auto", "--train.epochs=2"], tmp_path)

    # the expected schedule, from the dataset size alone: 2 ranks x 8 samples x 3 steps were
    # consumed of epoch 0; the rest of it, dealt over 3 ranks (padded to equal shares), gives
    # each rank ceil(rest / 3) // 8 batches; epoch 1 is ceil(N / 3) // 8 steps
    n = json.loads((tiny_dataset / "shards" / "meta.json").read_text())["num_images"]
    consumed = 2 * BATCH * 3
    first = -(-(n - consumed) // 3) // BATCH
    per_epoch = -(-n // 3) // BATCH
    left = first + per_epoch
    announced = re.search(r"resumed at step (\d+) in epoch (\d+) \((\d+) samples of it", log)
    assert announced is not None, log
    assert [int(g) for g in announced.groups()] == [3, 0, consumed]
    assert (
        f"{left} steps left ({first} to finish epoch 0, then 1 more epoch of {per_epoch}), "
        f"ending at step {3 + left}"
    ) in log, log

    # what it then did: every step from 4 to the announced end, the counters agreeing
    records = [
        json.loads(line)
        for line in (tmp_path / "runs" / "grow" / "metrics-rank0.jsonl").read_text().splitlines()
    ]
    steps = [r for r in records if "train/loss" in r]
    resumed = [r for r in steps if r["progress/total_steps"] == 3 + left]
    assert [r["step"] for r in resumed] == list(range(4, 4 + left))
    assert [r["progress/epoch"] for r in resumed] == [0] * first + [1] * per_epoch
    assert f"step {3 + left}/{3 + left} epoch 1 " in log
    # the last checkpoint sits at the end of epoch 1: the requested epochs are done
    last = sorted((tmp_path / "runs" / "grow" / "checkpoints").iterdir())[-1]
    state = torch.load(last / "state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["consumed"]) == (
        3 + left,
        1,
        per_epoch * 3 * BATCH,
    )
