"""Two ranks train straight from an InsightFace ``train.rec``/``train.idx``, no repacking."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_face.config import load_config
from dist_face.dist import Topology
from dist_face.metrics import InMemorySink
from dist_face.train.build import build_trainer
from tests.helpers.distributed import run_distributed
from tests.helpers.insightface import folder_items, write_insightface_rec


def _train(rank: int, world: int, overrides: list[str]) -> dict:
    cfg = load_config("debug_cpu", overrides)
    sink = InMemorySink()
    trainer, plan = build_trainer(cfg, Topology.from_env(), torch.device("cpu"), sink=sink)
    trainer.fit()
    return {
        "loss": [v for _, v in sink.series("train/loss")],
        "steps_per_epoch": plan.steps_per_epoch,
        "step": trainer.state.step,
    }


def test_two_ranks_train_on_an_insightface_rec(small_dataset: Path, tmp_path: Path) -> None:
    data = tmp_path / "ms1m"
    write_insightface_rec(data, folder_items(small_dataset / "train"))  # header + identities
    overrides = [
        f"--data.root={data}",  # a folder holding train.rec / train.idx
        f"--output_root={tmp_path}",
        "--name=rec",
        "--train.epochs=1",
        "--train.log_every=1",
        "--data.num_workers=1",
        "--eval.targets=[]",
    ]
    outs = run_distributed(_train, 2, overrides, timeout=300)
    # 60 identities x 12 images = 720 records; 2 ranks x 32 per batch -> 11 steps per epoch
    assert outs[0]["steps_per_epoch"] == 720 // 2 // 32
    assert outs[0]["step"] == outs[1]["step"] == outs[0]["steps_per_epoch"]
    assert outs[0]["loss"] == outs[1]["loss"]
    losses = outs[0]["loss"]
    assert sum(losses[-4:]) < sum(losses[:4]), losses  # it learns from these labels
    assert (data / "train.dist_face-manifest.parquet").is_file()  # built once, beside the data
