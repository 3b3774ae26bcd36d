"""Learning-rate schedule, weight-decay groups, loss scaler and the skip-on-overflow step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dist_face.config import OptimConfig
from dist_face.train.optim import build_optimizer, lr_factor, param_groups
from dist_face.train.precision import LossScaler, autocast
from dist_face.train.step import optimizer_step


def test_warmup_then_linear_decay() -> None:
    f = [lr_factor(s, 4, 14, "poly", 1.0) for s in range(14)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == 1.0 and f[9] == pytest.approx(0.5) and f[13] == pytest.approx(0.1)
    assert lr_factor(9, 4, 14, "cosine", 1.0) == pytest.approx(0.5)
    assert lr_factor(0, 0, 10, "poly", 2.0) == 1.0


def test_no_weight_decay_on_biases_norms_and_listed_params() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.bn = nn.BatchNorm1d(4)
            self.bias2d = nn.Parameter(torch.zeros(2, 2))

        def no_weight_decay(self) -> list[str]:
            return ["bias2d"]

    m = M()
    groups = param_groups(m, 5e-4)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and decayed == {id(m.fc.weight)}
    assert groups[1]["weight_decay"] == 0.0 and len(groups[1]["params"]) == 4


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_overflowed_step_changes_nothing(name: str) -> None:
    p = nn.Parameter(torch.ones(3))
    opt = build_optimizer(
        [{"params": [p], "weight_decay": 0.1}], OptimConfig(name=name), 0.1, torch.device("cpu")
    )
    p.grad = torch.ones(3)
    optimizer_step(opt, torch.zeros(()))
    after_one = p.detach().clone()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    p.grad = torch.ones(3)
    optimizer_step(opt, torch.ones(()))
    assert torch.equal(p.detach(), after_one)
    for k, v in opt.state[p].items():
        assert torch.equal(v, state[k]), k


def _unscale(scaler: LossScaler, p: nn.Parameter) -> torch.Tensor:
    """One rank's overflow flag, as the step's decision computes it."""
    found = torch.zeros(())
    scaler.unscale([p.grad], found)
    return found


def test_loss_scaler_unscales_detects_and_backs_off() -> None:
    scaler = LossScaler("fp16", torch.device("cpu"), init_scale=1024.0, growth_interval=2)
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1024.0, 2048.0])
    found = _unscale(scaler, p)
    assert found.item() == 0.0 and p.grad.tolist() == [1.0, 2.0]
    scaler.update(found)
    p.grad = torch.tensor([float("nan"), 1.0])
    found = _unscale(scaler, p)
    scaler.skipped += found.to(torch.int64)  # as the step counts it
    scaler.update(found)
    assert found.item() == 1.0 and scaler.scale.item() == 512.0 and scaler.skipped.item() == 1
    for _ in range(2):
        p.grad = torch.ones(2)
        scaler.update(_unscale(scaler, p))
    assert scaler.scale.item() == 1024.0


def test_bf16_checks_without_scaling_and_fp16_needs_cuda() -> None:
    scaler = LossScaler("bf16", torch.device("cpu"))
    loss = torch.tensor(3.0)
    assert scaler.scale_loss(loss) is loss
    p = nn.Parameter(torch.ones(1))
    p.grad = torch.tensor([float("inf")])
    assert _unscale(scaler, p).item() == 1.0
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        autocast("fp16", torch.device("cpu"))
