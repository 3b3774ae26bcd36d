"""A checkpoint that cannot be written (a real EFBIG inside torch.save) does not end the run.

The failing rank's file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored so the write
fails with EFBIG instead of killing the process) is lowered after the first checkpoint (step 3)
and lifted before the third (step 9): the second checkpoint fails on that rank only.
"""

from __future__ import annotations

import logging
import resource
import signal
from pathlib import Path

import pytest
import torch

from dist_face.checkpoint import list_checkpoints, load_state
from dist_face.config import load_config
from dist_face.dist import Topology
from dist_face.metrics import InMemorySink
from dist_face.train.build import build_trainer
from dist_face.train.loop import Hook, Trainer
from tests.helpers.distributed import run_distributed


class FillDisk(Hook):
    """On ``rank``, cap file sizes at ``limit`` bytes after step ``at``; lift it after ``until``."""

    def __init__(self, rank: int, limit: int, at: int, until: int, model: Path) -> None:
        self.rank, self.limit, self.at, self.until = rank, limit, at, until
        self.saved: dict[int, dict[str, torch.Tensor]] = {}
        self.model, self.model_before_lift = model, {}

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        step = trainer.state.step
        backbone = getattr(trainer.step_fn.backbone, "module", trainer.step_fn.backbone)
        self.saved[step] = {k: v.clone() for k, v in backbone.state_dict().items()}
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        if step == self.at and trainer.topology_rank == self.rank:
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, hard))
        if step == self.until:
            resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
            if trainer.topology_rank == 0:  # model.pt as the failed save left it
                self.model_before_lift = torch.load(self.model, weights_only=True)["state_dict"]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _train(rank: int, world: int, data: str, out: str, bad_rank: int, limit: int) -> dict:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
    cfg = load_config(
        "debug_cpu",
        [
            f"--data.root={data}/shards",
            "--eval.targets=[]",
            f"--output_root={out}",
            "--name=disk",
            "--data.num_workers=0",
            "--train.max_steps=9",
            "--train.log_every=3",
            "--checkpoint.every=3",
            "--checkpoint.keep=5",
        ],
    )
    errors = Records()
    logging.getLogger().addHandler(errors)
    trainer, _ = build_trainer(cfg, Topology.from_env(), torch.device("cpu"), sink=InMemorySink())
    trainer.topology_rank = rank
    fill = FillDisk(bad_rank, limit, at=4, until=7, model=Path(out) / "disk" / "model.pt")
    trainer.hooks.insert(0, fill)  # before the checkpoint hook: the limit is on at step 6's save
    trainer.fit()
    return {
        "step": trainer.state.step,
        "errors": errors.lines,
        "saved": fill.saved,
        "model_before_lift": fill.model_before_lift,
    }


@pytest.mark.parametrize(
    ("bad_rank", "limit"),
    [
        (1, 4_000),  # rank 1 cannot write its head slice
        (0, 200_000),  # rank 0 writes its head slice, then fails on state.pt (3.7 MB)
    ],
)
def test_a_full_disk_skips_the_checkpoint_and_training_goes_on(
    small_dataset: Path, tmp_path: Path, bad_rank: int, limit: int
) -> None:
    outs = run_distributed(
        _train, 2, str(small_dataset), str(tmp_path), bad_rank, limit, timeout=300
    )
    run_dir = tmp_path / "disk"
    assert [o["step"] for o in outs] == [9, 9]  # trained to the end
    # logged on the failing rank only, with the cause
    assert len(outs[bad_rank]["errors"]) == 1, outs[bad_rank]["errors"]
    assert f"step_00000006: rank {bad_rank} could not write" in outs[bad_rank]["errors"][0]
    assert (
        "File too large" in outs[bad_rank]["errors"][0]
        or "unexpected pos" in (outs[bad_rank]["errors"][0])
    )
    assert outs[1 - bad_rank]["errors"] == []
    # every rank agreed: step 6 is absent everywhere, 3 and 9 are complete
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000003", "step_00000009"]
    assert not (run_dir / "checkpoints" / "step_00000006").exists()
    assert [p for p in run_dir.rglob("*") if ".tmp" in p.name] == []
    # after the failed save of step 6, model.pt still held step 3's weights, as its checkpoint
    # (rank 0 used to write it for step 6 when only rank 1 failed)
    for key, value in outs[0]["saved"][3].items():
        assert torch.equal(outs[0]["model_before_lift"][key], value), key
    # the previous checkpoint is intact and model.pt holds the final weights
    for step in (3, 9):
        state = load_state(run_dir / "checkpoints" / f"step_{step:08d}")
        for key, value in outs[0]["saved"][step].items():
            assert torch.equal(state["backbone"][key], value), (step, key)
    model = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    for key, value in outs[0]["saved"][9].items():
        assert torch.equal(model[key], value), key
