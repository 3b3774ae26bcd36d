"""Under one documented set of flags a training step is arcface_torch's step, exactly.

The flags (docs/heads.md, "arcface_torch's step, exactly"):
``--head.margin_args.straight_through=true
--optim.decay_norm_and_bias=true --optim.schedule=arcface_poly`` (SGD momentum 0.9, one lr and
weight decay for backbone and centers, backbone gradient clipped at norm 5: the defaults).
The reference re-expresses arcface_torch's published step in float64, from its behaviour
(/work/shared/reference/arcface_torch.md §1, §2, §6.3), not its code:

* logits ``s·cos θ_j``; the target's ``s·cos(θ_y + m)`` computed under ``no_grad``, so the
  gradient is that of ``s·cos θ`` for every logit; mean cross-entropy over the batch;
* ``clip_grad_norm_(backbone, 5)``: gradients scaled by ``5 / (‖g‖ + 1e-6)`` when above;
* SGD on every parameter (BatchNorm, PReLU and the centers too): ``d = g + wd·p``,
  ``buf = 0.9·buf + d`` (``buf = d`` first), ``p −= lr_t·buf``;
* ``PolynomialLRWarmup``: ``lr_t = lr·t/w`` for ``t < w``, then ``lr·(1 − (t − w)/(T − w))^p``.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from dist_face.config import load_config
from dist_face.dist import Topology
from dist_face.metrics import InMemorySink
from dist_face.train.build import build_trainer

B, C, STEPS, LR, WD, S, M, POWER = 4, 20, 4, 0.1, 5e-4, 32.0, 0.5, 2.0
FLAGS = [
    "--head.margin_args.straight_through=true",
    "--optim.decay_norm_and_bias=true",
    "--optim.schedule=arcface_poly",
    f"--optim.poly_power={POWER}",
]


def _trainer(tmp_path):
    cfg = load_config(
        "debug_cpu",
        [
            "--data.root=synthetic",
            f"--data.num_classes={C}",
            f"--data.synthetic_samples={4 * B}",
            f"--data.batch_size={B}",
            "--eval.targets=[]",
            f"--output_root={tmp_path}",
            "--name=parity",
            "--checkpoint.every=0",
            "--train.epochs=2",
            "--train.precision=fp32",
            "--optim.warmup_epochs=0.5",
            f"--optim.lr={LR}",
            f"--optim.weight_decay={WD}",
            f"--head.margin_args.scale={S}",
            f"--head.margin_args.margin={M}",
            *FLAGS,
        ],
    )
    topology = Topology(rank=0, world_size=1, local_rank=0, local_world_size=1)
    return build_trainer(cfg, topology, torch.device("cpu"), InMemorySink())


def _lr(t: int, warmup: int, total: int) -> float:
    if t < warmup:
        return LR * t / warmup
    return LR * (1.0 - (t - warmup) / (total - warmup)) ** POWER


def _reference_loss(emb: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    cos = (F.normalize(emb, dim=1) @ F.normalize(w, dim=1).T).clamp(-1, 1)
    with torch.no_grad():  # the margin as a constant offset of the target logit
        target = cos.gather(1, y[:, None])
        shift = torch.cos(torch.acos(target) + M) - target
    logits = S * (cos + torch.zeros_like(cos).scatter(1, y[:, None], shift))
    return F.cross_entropy(logits, y)


def _close(mine: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """fp32 against float64 after a few steps: 1e-4 relative, or 1e-5 of the largest entry
    plus 1e-7 (a BatchNorm running mean that is 0 in float64 is fp32 rounding, ~1e-9)."""
    scale = float(theirs.abs().max())
    torch.testing.assert_close(
        mine.double(), theirs, rtol=1e-4, atol=1e-5 * scale + 1e-7, msg=lambda m: f"{what}: {m}"
    )


def test_a_step_under_the_flags_is_arcface_torchs(tmp_path) -> None:
    trainer, plan = _trainer(tmp_path)
    step = trainer.step_fn
    net, head = step.backbone, step.loss_fn
    ref = copy.deepcopy(net).double().train()
    w = head.weight.detach().double().clone().requires_grad_(True)
    params = list(ref.parameters())
    assert any(p.ndim < 2 for p in params)  # BatchNorm and PReLU: decayed here too
    bufs: list[torch.Tensor | None] = [None] * (len(params) + 1)
    gen = torch.Generator().manual_seed(0)
    for t in range(STEPS):
        images = torch.randn(B, 3, 112, 112, generator=gen)
        labels = torch.randint(0, C, (B,), generator=gen)
        got = step([(images, labels)])
        loss = _reference_loss(ref(images.double()), w, labels)
        grads = list(torch.autograd.grad(loss, [*params, w]))
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads[:-1]]))
        coef = min(1.0, 5.0 / (float(norm) + 1e-6))
        lr = _lr(t, plan.warmup_steps, plan.total_steps)
        with torch.no_grad():
            for i, (p, g) in enumerate(zip([*params, w], grads, strict=True)):
                d = (g * coef if i < len(params) else g) + WD * p
                bufs[i] = d if bufs[i] is None else 0.9 * bufs[i] + d
                p -= lr * bufs[i]
        torch.testing.assert_close(got["loss"].double(), loss.detach(), rtol=2e-6, atol=1e-6)
        for (name, mine), theirs in zip(net.state_dict().items(), ref.state_dict().values()):
            if mine.is_floating_point():
                _close(mine, theirs, f"step {t} {name}")
        _close(head.weight.detach(), w.detach(), f"step {t} centers")
    assert plan.warmup_steps == 2 and math.isclose(_lr(0, 2, 8), 0.0)
