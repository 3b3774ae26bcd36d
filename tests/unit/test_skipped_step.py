"""A step skipped for inf/NaN gradients leaves BatchNorm statistics as they were."""

from __future__ import annotations

import torch
from torch import nn

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
