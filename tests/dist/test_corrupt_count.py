"""The corrupt-record count in the log line is the sum over ranks (a real damaged record)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from dist_face.config import load_config
from dist_face.data.format.shards import ShardSet
from dist_face.data.loading.loader import build_loader
from dist_face.dist import Topology
from dist_face.metrics import InMemorySink
from dist_face.train.build import build_trainer
from tests.helpers.distributed import run_distributed


def _overrides(root: Path, runs: Path) -> list[str]:
    return [
        f"--data.root={root}",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--data.hflip=false",
        "--eval.targets=[]",
        f"--output_root={runs}",
        "--name=corrupt",
        "--train.log_every=1",
        "--checkpoint.every=0",
    ]


def _train(rank: int, world: int, overrides: list[str]) -> dict:
    cfg = load_config("debug_cpu", overrides)
    sink = InMemorySink()
    trainer, _ = build_trainer(cfg, Topology.from_env(), torch.device("cpu"), sink=sink)
    trainer.total_steps = 2
    trainer.fit()
    return {
        "sum": [v for _, v in sink.series("data/corrupt_records")],
        "own": [v for _, v in sink.series("data/rank_corrupt_records")],
    }


def _first_record(cfg, rank: int) -> int:
    """The record number of the first image ``rank`` of 2 reads in epoch 0."""
    topo = Topology(rank=rank, world_size=2, local_rank=rank, local_world_size=2)
    source = build_loader(cfg.data, topo, torch.device("cpu"), seed=cfg.train.seed)
    batches = source.epoch(0)
    images, _ = next(batches)
    batches.close()
    return int(((images[0, 0, 0, 0] + 1) * 127.5).round())  # red channel = record number


def test_every_rank_logs_the_corrupt_records_of_all_ranks(
    color_shards: Path, tmp_path: Path
) -> None:
    root = Path(shutil.copytree(color_shards, tmp_path / "shards"))
    overrides = _overrides(root, tmp_path / "runs")
    cfg = load_config("debug_cpu", overrides)
    shards = ShardSet.open(root)
    for record in {_first_record(cfg, 0), _first_record(cfg, 1)}:
        rec = Path(shards.rec_path(int(shards.shard_ids[record])))
        data = bytearray(rec.read_bytes())
        data[int(shards.offsets[record]) + 8 + 24 + 40] ^= 0x01  # one bit of the PNG
        rec.write_bytes(bytes(data))

    out = run_distributed(_train, 2, overrides)
    assert [o["own"] for o in out] == [[1, 1], [1, 1]]  # one damaged record on each rank
    assert [o["sum"] for o in out] == [[2, 2], [2, 2]]  # both counted in every rank's log
