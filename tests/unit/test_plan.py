"""The steps a run plans: from the start, or from a checkpoint's position on a new world size."""

from __future__ import annotations

from dist_face.config import apply_overrides, recipe
from dist_face.dist import Topology
from dist_face.train.plan import RunPlan, Start


def _plan(world: int, batches: int, *overrides: str, start=None, left=None) -> RunPlan:
    cfg = apply_overrides(recipe("debug_cpu"), list(overrides))
    return RunPlan.create(
        cfg, Topology(world_size=world), 10, batches, start=start, batches_left=left
    )


def test_a_fresh_run_plans_every_epoch() -> None:
    plan = _plan(2, 11, "--train.epochs=3")
    assert (plan.total_steps, plan.steps_left) == (33, 33)
    assert plan.describe("r").startswith(
        "run r: 2 ranks, global batch 64, 11 steps per epoch, train.epochs=3"
    )


def test_the_reported_resume_finishes_the_requested_epochs() -> None:
    """2 ranks ran 3 epochs of 6 steps (step 18); 3 ranks, 4 steps per epoch, 5 epochs."""
    start = Start(step=18, epoch=2, consumed=6 * 64, world_size=2)  # the end of epoch 2
    plan = _plan(3, 4, "--train.epochs=5", start=start, left=0)
    # before: 4 x 5 = 20 steps in all, so 2 steps and a stop in the middle of epoch 3
    assert (plan.steps_left, plan.total_steps) == (8, 26)
    assert (
        "resumed at step 18 in epoch 2 (384 samples of it consumed on 2 ranks): 8 steps left "
        "(0 to finish epoch 2, then 2 more epochs of 4), ending at step 26"
    ) in plan.describe("r")


def test_max_steps_caps_a_resumed_run_and_says_so() -> None:
    start = Start(step=5, epoch=0, consumed=160, world_size=1)
    plan = _plan(2, 7, "--train.epochs=2", "--train.max_steps=9", start=start, left=4)
    assert (plan.steps_left, plan.total_steps) == (4, 9)
    assert "then 1 more epoch of 7, cut by train.max_steps), ending at step 9" in plan.describe("r")


def test_a_resume_past_the_requested_epochs_has_nothing_left() -> None:
    start = Start(step=30, epoch=2, consumed=0, world_size=2)
    plan = _plan(2, 10, "--train.epochs=2", start=start, left=10)
    assert (plan.steps_left, plan.total_steps) == (0, 30)
    assert "nothing left to do, the run ends at step 30" in plan.describe("r")
