"""Ranks started with different data or configs refuse to train, naming what differs."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from dist_face.config import load_config
from dist_face.dist import Topology
from dist_face.metrics import InMemorySink
from dist_face.train.agreement import PlanMismatchError
from dist_face.train.build import build_trainer
from tests.helpers.distributed import run_distributed


def _build(rank: int, world: int, per_rank: list[list[str]]) -> str:
    cfg = load_config("debug_cpu", per_rank[rank])
    try:
        build_trainer(cfg, Topology.from_env(), torch.device("cpu"), sink=InMemorySink())
    except PlanMismatchError as exc:
        return str(exc)
    return ""


def _args(out: Path, root: Path, *extra: str) -> list[str]:
    return [
        f"--data.root={root}",
        "--eval.targets=[]",
        f"--output_root={out}",
        "--data.num_workers=0",
        "--data.batch_size=8",
        "--train.max_steps=2",
        *extra,
    ]


def test_another_shard_set_on_one_rank_is_refused_on_every_rank(
    small_dataset: Path, color_shards: Path, tmp_path: Path
) -> None:
    same = _args(tmp_path, small_dataset / "shards")
    other = _args(tmp_path, color_shards)
    errors = run_distributed(_build, 3, [same, same, other], timeout=300)
    assert errors[0] == errors[1] == errors[2] != ""
    assert errors[0].startswith(
        "ranks disagree on the run: data.batches_per_epoch: 30 on ranks 0, 1; 2 on rank 2 | "
        "data.manifest_sha256: "
    ), errors[0]
    assert "data.num_classes: 60 on ranks 0, 1; 7 on rank 2 (and 2 more fields)" in errors[0]


def test_another_config_on_one_rank_is_refused(small_dataset: Path, tmp_path: Path) -> None:
    root = small_dataset / "shards"
    errors = run_distributed(
        _build, 2, [_args(tmp_path, root), _args(tmp_path, root, "--optim.lr=0.2")]
    )
    assert (
        errors
        == [
            "ranks disagree on the run: config.optim.lr: 0.1 on rank 0; 0.2 on rank 1; start "
            "every rank with the same config and the same shard set"
        ]
        * 2
    )


def test_the_same_shard_set_at_another_path_is_accepted(
    small_dataset: Path, tmp_path: Path
) -> None:
    local = tmp_path / "node-local"
    shutil.copytree(small_dataset / "shards", local)
    errors = run_distributed(
        _build,
        2,
        [_args(tmp_path, small_dataset / "shards", "--name=a"), _args(tmp_path, local, "--name=a")],
    )
    assert errors == ["", ""]
