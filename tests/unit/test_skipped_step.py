"""A step skipped for inf/NaN gradients leaves BatchNorm statistics, SGD momentum and the
class centers alone (one process, the real sharded head; two ranks and every skip reason:
``tests/dist/test_skipped_step.py``)."""

from __future__ import annotations

import torch
from torch import nn

from dist_face.config import OptimConfig
from dist_face.data.loading.labels import REFUSED_LABEL
from dist_face.heads import PartialFC
from dist_face.heads.auxiliary.aux_losses import WeightedSum
from dist_face.heads.auxiliary.center_loss import CenterLoss
from dist_face.heads.sharded.row_optim import build_row_optimizer
from dist_face.train.engine import DDPEngine
from dist_face.train.optim import build_optimizer, init_momentum
from dist_face.train.precision import LossScaler
from dist_face.train.step import TrainStep, optimizer_step


def _head(dim: int) -> tuple[PartialFC, torch.optim.Optimizer]:
    """The real sharded head (ArcFace, 4 classes, half of them sampled) and its row update."""
    head = PartialFC(dim, 4, "arcface", 0.5, seed=1)
    opt = build_row_optimizer(head, "sgd", 0.1, 5e-4, 0.9)
    head.hand_rows_to(opt.sink)
    return head, opt


def _step() -> tuple[TrainStep, nn.Module]:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(8))
    backbone(torch.zeros(2, 3, 6, 6))  # materialise the lazy layer
    opt = torch.optim.SGD(backbone.parameters(), lr=0.1)
    engine = DDPEngine(backbone, [opt], LossScaler("fp32", torch.device("cpu")), "fp32", 5.0)
    head, opt_h = _head(8)
    step = TrainStep(engine=engine, loss_fn=head, head_optimizers=[opt_h], schedulers=[])
    return step, backbone[1]


def test_a_skipped_step_leaves_batchnorm_statistics_as_they_were() -> None:
    step, bn = _step()
    labels = torch.zeros(4, dtype=torch.long)
    step([(torch.randn(4, 3, 6, 6), labels)])
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    centers = step.loss_fn.weight.detach().clone()
    images = torch.randn(4, 3, 6, 6)
    images[0, 0, 0, 0] = float("inf")  # overflowing activations: NaN loss, NaN gradients
    out = step([(images, labels)])
    assert out["skipped"].item() == 1.0 and not torch.isfinite(out["loss"])
    for key, value in bn.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert torch.equal(step.loss_fn.weight, centers)
    step([(torch.randn(4, 3, 6, 6), labels)])  # a clean step still updates them
    assert not torch.equal(step.loss_fn.weight, centers)
    assert not torch.equal(bn.running_mean, before["running_mean"])
    assert int(bn.num_batches_tracked) == int(before["num_batches_tracked"]) + 1


def test_a_skipped_first_step_leaves_sgd_momentum_at_zero() -> None:
    cfg = OptimConfig(weight_decay=0.0)
    p, q = nn.Parameter(torch.ones(64)), nn.Parameter(torch.ones(64))
    opt = build_optimizer([{"params": [p]}], cfg, 0.1, torch.device("cpu"))  # fused
    init_momentum(opt)
    p.grad = torch.full((64,), float("nan"))
    optimizer_step(opt, torch.ones(()))  # overflow: skipped
    assert torch.equal(p.detach(), torch.ones(64))
    reference = torch.optim.SGD([q], lr=0.1, momentum=cfg.momentum)  # never saw the overflow
    for _ in range(2):
        p.grad, q.grad = torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64)
        optimizer_step(opt, torch.zeros(()))
        reference.step()
    assert torch.equal(p.detach(), q.detach())
    assert torch.equal(opt.state[p]["momentum_buffer"], reference.state[q]["momentum_buffer"])


def _bn_step() -> tuple[TrainStep, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.BatchNorm2d(1), nn.Flatten(), nn.Linear(1, 4))
    opt = torch.optim.SGD(backbone.parameters(), lr=0.1)
    engine = DDPEngine(backbone, [opt], LossScaler("fp32", torch.device("cpu")), "fp32")
    head, opt_h = _head(4)
    step = TrainStep(engine=engine, loss_fn=head, head_optimizers=[opt_h], schedulers=[])
    return step, backbone, opt


def test_a_step_whose_batchnorm_statistics_overflow_is_skipped() -> None:
    step, backbone, _ = _bn_step()
    labels = torch.zeros(2, dtype=torch.long)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    centers = step.loss_fn.weight.detach().clone()
    # ±1.5e19: the batch variance 2.25e38 normalises to ±1 (finite loss and gradients), but
    # the unbiased variance that enters running_var, 4.5e38, is inf in fp32
    images = torch.tensor([1.5e19, -1.5e19]).view(2, 1, 1, 1)
    out = step([(images, labels)])
    assert torch.isfinite(out["loss"]) and out["skipped"].item() == 1.0
    for key, value in backbone.state_dict().items():  # weights and statistics untouched
        assert torch.equal(value, before[key]), key
    assert torch.equal(step.loss_fn.weight, centers)
    out = step([(torch.randn(2, 1, 1, 1), labels)])
    assert out["skipped"].item() == 0.0 and torch.isfinite(backbone[0].running_var).all()


def test_a_refused_label_skips_the_step_and_never_reaches_the_loss() -> None:
    step, backbone, _ = _bn_step()
    seen: list[torch.Tensor] = []
    head = step.loss_fn
    step.loss_fn = lambda x, y: seen.append(y) or head(x, y)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    centers, sampler = head.weight.detach().clone(), head.sampler.state()
    out = step([(torch.randn(2, 1, 1, 1), torch.tensor([3, REFUSED_LABEL]))])
    assert out["skipped"].item() == 1.0 and out["skipped_labels"].item() == 1.0
    assert seen[0].tolist() == [3, 0]  # the head gets a valid class
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    # no center moved, not class 0's for the refused sample either; the sampler rewound
    assert torch.equal(head.weight, centers) and torch.equal(head.sampler.state(), sampler)
    out = step([(torch.randn(2, 1, 1, 1), torch.tensor([3, 1]))])
    assert out["skipped"].item() == 0.0 and out["skipped_labels"].item() == 0.0


def test_a_skipped_step_leaves_the_center_loss_centers_and_the_draws_alone() -> None:
    """Buffers the forward moves (the center loss's α rule, ElasticFace's draw counter) and
    the host streams (sampler, draw seed) are put back; a clean step then moves them."""
    step, _, _ = _bn_step()
    head = PartialFC(4, 4, "elasticface_arc", 0.5, seed=1)
    opt_h = build_row_optimizer(head, "sgd", 0.1, 5e-4, 0.9)
    head.hand_rows_to(opt_h.sink)
    loss = WeightedSum(head, {"center": CenterLoss(4, 4)}, [0.01])
    step = TrainStep(engine=step.engine, loss_fn=loss, head_optimizers=[opt_h], schedulers=[])
    step([(torch.randn(2, 1, 1, 1), torch.tensor([3, 1]))])  # the centers are not zero now

    def state() -> list[torch.Tensor]:
        return [
            *(t.clone() for t in loss.state_dict().values() if torch.is_tensor(t)),
            head.sampler.state(),
            torch.tensor(head.margin._step),
        ]

    before = state()
    out = step([(torch.randn(2, 1, 1, 1), torch.tensor([2, REFUSED_LABEL]))])
    assert out["skipped"].item() == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, state(), strict=True))
    out = step([(torch.randn(2, 1, 1, 1), torch.tensor([2, 0]))])
    assert out["skipped"].item() == 0.0
    moved = [not torch.equal(a, b) for a, b in zip(before, state(), strict=True)]
    assert all(moved[-3:]) and any(moved[:-3])  # center loss, stream, draw; the head's
