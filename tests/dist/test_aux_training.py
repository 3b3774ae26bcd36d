"""Auxiliary losses train with the head: logged per part, centers checkpointed and re-split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_face.config import load_config
from dist_face.dist import Topology, all_gather
from dist_face.metrics import InMemorySink
from dist_face.train.build import build_trainer
from dist_face.train.loop import Hook, Trainer
from tests.helpers.distributed import run_distributed


class Stop(Exception):
    pass


class StopAt(Hook):
    def __init__(self, step: int) -> None:
        self.step = step

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        if trainer.state.step == self.step:
            raise Stop


def _train(rank: int, world: int, overrides: list[str], stop_at: int = 0) -> dict:
    cfg = load_config("debug_cpu", overrides)
    sink = InMemorySink()
    trainer, _ = build_trainer(cfg, Topology.from_env(), torch.device("cpu"), sink=sink)
    losses = trainer.step_fn.loss_fn.losses
    resumed = all_gather(losses["center"].centers.clone())
    if stop_at:
        trainer.hooks.append(StopAt(stop_at))
    try:
        trainer.fit()
    except Stop:
        pass
    keys = ("train/loss", "train/loss/head", "train/loss/supcon", "train/loss/center")
    return {
        "series": {k: [v for _, v in sink.series(k)] for k in keys},
        "resumed": resumed,
        "centers": all_gather(losses["center"].centers.clone()),
    }


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        f"--data.root={data}/shards",
        "--eval.targets=[]",
        f"--output_root={out}",
        "--name=aux",
        "--data.num_workers=0",
        "--data.batch_size=24",
        "--train.max_steps=6",
        "--train.log_every=1",
        "--checkpoint.every=3",
        "--aux.losses=[supcon,center]",
        "--aux.weights=[0.1,0.003]",
        *extra,
    ]


@pytest.mark.timeout(600)
def test_aux_losses_are_logged_checkpointed_and_resplit(small_dataset: Path, tmp_path) -> None:
    first = run_distributed(_train, 2, _args(small_dataset, tmp_path), 3, timeout=300)[0]
    series = first["series"]
    assert all(len(v) == 3 for v in series.values()), series
    for i in range(3):  # the total is the weighted sum of the logged parts
        total = (
            series["train/loss/head"][i]
            + 0.1 * series["train/loss/supcon"][i]
            + 0.003 * series["train/loss/center"][i]
        )
        assert series["train/loss"][i] == pytest.approx(total, rel=1e-5)
    assert series["train/loss/center"][0] > 0 and series["train/loss/supcon"][0] > 0
    assert first["centers"].abs().sum() > 0  # the centers moved (they start at zero)
    # resume the step-3 checkpoint on 3 ranks: every center row is where it belongs
    rest = run_distributed(
        _train,
        3,
        _args(small_dataset, tmp_path, "--data.batch_size=16", "--checkpoint.resume=auto"),
        timeout=300,
    )[0]
    assert torch.equal(rest["resumed"], first["centers"])
    assert len(rest["series"]["train/loss/center"]) == 3
