"""A steady-state step on CUDA allocates no host tensor (ready for CUDA graphs), head aside.

Collected everywhere, run only where CUDA is present (the conftest skips this tier otherwise).
The class-center head is left out on purpose: a plain loss stands in for it, so the count
covers the step, the engine, the loss scale, the skip decision and the optimizer.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dist_face.train.engine import DDPEngine
from dist_face.train.optim import init_momentum
from dist_face.train.precision import LossScaler
from dist_face.train.step import TrainStep

CUDA = torch.device("cuda", 0)


class HostOutputs(TorchDispatchMode):
    """Names of the operations whose output is a tensor in host memory."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if torch.is_tensor(t) and t.device.type == "cpu":
                self.ops.append(func.overloadpacket.__name__)
        return out


def test_a_steady_state_step_allocates_no_host_tensor() -> None:
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.PReLU(8), nn.Flatten(), nn.LazyLinear(16)
    ).to(CUDA)
    backbone(torch.zeros(2, 3, 16, 16, device=CUDA))
    opt = torch.optim.SGD(backbone.parameters(), lr=0.1, momentum=0.9, fused=True)
    init_momentum(opt)
    engine = DDPEngine(backbone, [opt], LossScaler("bf16", CUDA), "bf16", clip_grad_norm=5.0)
    step = TrainStep(
        engine=engine, loss_fn=lambda x, y: x.square().mean(), head_optimizers=[], schedulers=[]
    )
    images = torch.randn(4, 3, 16, 16, device=CUDA)
    labels = torch.zeros(4, dtype=torch.long, device=CUDA)
    step([(images, labels)])  # first step: lazy optimizer state
    probe = HostOutputs()
    with probe:
        step([(images, labels)])
    assert probe.ops == []
