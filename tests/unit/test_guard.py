"""The divergence guard counts on the device and reads its counters on log steps only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dist_face.train.guard import DivergenceError, DivergenceGuard


def _feed(
    guard: DivergenceGuard, losses: list[float], skipped: list[float], total: int = 1000
) -> int:
    trainer = SimpleNamespace(state=SimpleNamespace(step=0), total_steps=total)
    for loss, skip in zip(losses, skipped):
        trainer.state.step += 1
        metrics = {"loss": torch.tensor(loss), "skipped": torch.tensor(skip)}
        guard.after_step(trainer, metrics)  # type: ignore[arg-type]
    return trainer.state.step


def _guard(max_skipped: int, max_logs: int) -> DivergenceGuard:
    scale = torch.tensor(1024.0)
    return DivergenceGuard(4, max_skipped, max_logs, lambda: scale, "optim.lr (now 0.1)")


def test_consecutive_skipped_steps_stop_the_run_at_the_next_log_step() -> None:
    nan = float("nan")
    # 5 skipped in a row between log steps 4 and 8, then clean: caught at step 8
    with pytest.raises(DivergenceError) as err:
        _feed(_guard(5, 0), [2.0, 1.5, nan, nan, nan, nan, nan, 1.0], [0, 0, 1, 1, 1, 1, 1, 0])
    assert str(err.value) == (
        "training diverged at step 8: 5 consecutive steps skipped for inf/NaN gradients "
        "(train.max_skipped_steps=5); loss scale 1024, last finite loss 1 at step 8; "
        "lower optim.lr (now 0.1)"
    )
    # 4 in a row, then a clean step, then 4 again: never 5 consecutive
    pattern = [0, 1, 1, 1, 1, 0, 1, 1, 1, 1, 0, 0]
    assert _feed(_guard(5, 0), [1.0] * 12, pattern) == 12


def test_a_non_finite_last_loss_ends_even_a_short_run_with_the_divergence_error() -> None:
    nan = float("nan")
    # 3 steps: no threshold can be reached, the last loss decides
    with pytest.raises(DivergenceError) as err:
        _feed(_guard(50, 20), [2.0, nan, nan], [0, 0, 0], total=3)
    assert str(err.value).startswith(
        "training diverged at step 3: the loss of the last step was inf/NaN for 2 steps"
    )
    assert "last finite loss 2 at step 1" in str(err.value)
    assert _feed(_guard(50, 20), [2.0, nan, 1.0], [0, 0, 0], total=3) == 3  # finite at the end


def test_a_short_run_whose_steps_were_mostly_skipped_ends_with_the_divergence_error() -> None:
    # 2 of 3 steps skipped: far from max_skipped_steps=50, but the model barely trained
    with pytest.raises(DivergenceError) as err:
        _feed(_guard(50, 20), [2.0, 1.5, 1.0], [1, 1, 0], total=3)
    assert str(err.value).startswith(
        "training diverged at step 3: 2 of its 3 steps were skipped for inf/NaN values"
    )
    assert _feed(_guard(50, 20), [2.0, 1.5, 1.0], [1, 0, 0], total=3) == 3  # 1 of 3: trained


def test_non_finite_losses_on_consecutive_log_steps_stop_the_run() -> None:
    nan = float("nan")
    losses = [3.0, 2.5, 2.0, 1.9] + [nan] * 12  # log steps 4, 8, 12, 16
    with pytest.raises(DivergenceError) as err:
        _feed(_guard(0, 3), losses, [0.0] * 16)
    assert "at step 16: the loss was inf/NaN on 3 consecutive log steps" in str(err.value)
    assert "last finite loss 1.9 at step 4" in str(err.value)
    assert _feed(_guard(0, 3), [nan] * 11 + [1.0], [0.0] * 12) == 12  # only 2 bad log steps


@pytest.mark.gpu
def test_the_guard_does_not_synchronise_off_log_steps() -> None:
    guard = _guard(5, 3)
    trainer = SimpleNamespace(state=SimpleNamespace(step=0), total_steps=1000)
    metrics = {
        "loss": torch.tensor(1.0, device="cuda"),
        "skipped": torch.tensor(0.0, device="cuda"),
    }
    guard.after_step(trainer, metrics)  # type: ignore[arg-type]  # allocates the counters
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            trainer.state.step += 1
            guard.after_step(trainer, metrics)  # type: ignore[arg-type]
    finally:
        torch.cuda.set_sync_debug_mode("default")
