"""A diverging run stops with an error naming the step, and never saves inf/NaN values."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_face.checkpoint import list_checkpoints, load_state
from dist_face.config import load_config
from dist_face.dist import Topology
from dist_face.metrics import InMemorySink
from dist_face.train.build import build_trainer
from dist_face.train.guard import DivergenceError
from tests.helpers.distributed import run_distributed


def _train(rank: int, world: int, overrides: list[str]) -> dict:
    cfg = load_config("debug_cpu", overrides)
    sink = InMemorySink()
    trainer, _ = build_trainer(cfg, Topology.from_env(), torch.device("cpu"), sink=sink)
    try:
        trainer.fit()
        error = ""
    except DivergenceError as exc:
        error = str(exc)
    return {
        "error": error,
        "step": trainer.state.step,
        "skipped": sink.series("train/skipped_steps"),
    }


def _args(data: Path, out: Path, name: str, *extra: str) -> list[str]:
    return [
        f"--data.root={data}/shards",
        "--eval.targets=[]",
        f"--output_root={out}",
        f"--name={name}",
        "--data.num_workers=0",
        *extra,
    ]


def _all_finite(tree: object) -> bool:
    if torch.is_tensor(tree):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_all_finite(v) for v in tree.values())
    if isinstance(tree, list | tuple):
        return all(_all_finite(v) for v in tree)
    return True


def test_every_step_skipped_stops_the_run_with_an_error(small_dataset: Path, tmp_path) -> None:
    # a logit scale of 1e39 is inf in fp32: every loss is NaN and every step skipped
    args = _args(
        small_dataset,
        tmp_path,
        "nan",
        "--head.margin_args.scale=1e39",
        "--train.max_skipped_steps=4",
        "--train.log_every=3",
        "--train.max_steps=9",
    )
    outs = run_distributed(_train, 2, args, timeout=300)
    for out in outs:  # every rank stops at the same log step with the same message
        assert out["step"] == 6
        assert out["error"] == (
            "training diverged at step 6: 6 consecutive steps skipped for inf/NaN gradients "
            "(train.max_skipped_steps=4); loss scale 1, no finite loss since the start; "
            "lower optim.lr (now 0.1) or head.margin_args.scale (now 1e+39)"
        )
    assert not (tmp_path / "nan" / "model.pt").exists()


def test_a_huge_learning_rate_saves_no_inf(small_dataset: Path, tmp_path) -> None:
    # lr 1e6 blows the activations up; skipped steps used to leave inf BatchNorm variances in
    # the checkpoints and in model.pt
    args = _args(
        small_dataset,
        tmp_path,
        "lr",
        "--optim.lr=1e6",
        "--train.max_steps=8",
        "--train.log_every=2",
        "--checkpoint.every=2",
        "--checkpoint.keep=20",
    )
    outs = run_distributed(_train, 2, args, timeout=300)
    assert outs[0]["skipped"][-1][1] >= 3, outs[0]["skipped"]  # it did diverge
    run_dir = tmp_path / "lr"
    saved = list_checkpoints(run_dir)
    assert saved and (run_dir / "model.pt").exists()
    for path in saved:
        assert _all_finite(load_state(path)), path
        for head in path.glob("head-*.pt"):
            assert _all_finite(torch.load(head, weights_only=True)), head
    assert _all_finite(torch.load(run_dir / "model.pt", weights_only=True))
