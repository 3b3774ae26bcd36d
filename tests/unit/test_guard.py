"""Skipped steps leave BatchNorm alone; the divergence guard counts on the device."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dist_face.train.guard import DivergenceError, DivergenceGuard
from dist_face.train.precision import LossScaler
from dist_face.train.step import TrainStep


def _step() -> tuple[TrainStep, nn.Module]:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(8))
    backbone(torch.zeros(2, 3, 6, 6))  # materialise the lazy layer
    opt = torch.optim.SGD(backbone.parameters(), lr=0.1)
    step = TrainStep(
        backbone=backbone,
        loss_fn=lambda x, y: x.square().mean(),
        optimizers=[opt],
        schedulers=[],
        scaler=LossScaler("fp32", torch.device("cpu")),
        precision="fp32",
        clip_params=list(backbone.parameters()),
        clip_grad_norm=5.0,
    )
    return step, backbone[1]


def test_a_skipped_step_leaves_batchnorm_statistics_as_they_were() -> None:
    step, bn = _step()
    labels = torch.zeros(4, dtype=torch.long)
    step([(torch.randn(4, 3, 6, 6), labels)])
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    images = torch.randn(4, 3, 6, 6)
    images[0, 0, 0, 0] = float("inf")  # overflowing activations: NaN loss, NaN gradients
    out = step([(images, labels)])
    assert out["skipped"].item() == 1.0 and not torch.isfinite(out["loss"])
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    step([(torch.randn(4, 3, 6, 6), labels)])  # a clean step still updates them
    assert not torch.equal(bn.running_mean, before["running_mean"])
    assert int(bn.num_batches_tracked) == int(before["num_batches_tracked"]) + 1


def _feed(guard: DivergenceGuard, losses: list[float], skipped: list[float]) -> int:
    trainer = SimpleNamespace(state=SimpleNamespace(step=0), total_steps=1000)
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
