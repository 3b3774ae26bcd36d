"""Optimizers and the per-iteration learning-rate schedule.

The replicated backbone and the sharded class centers get separate optimizers: their states
have different lifetimes on disk (the head's is re-split by class range when the world size
changes), and the head may use its own learning rate and weight decay. Biases, normalisation
parameters (every parameter with fewer than two dimensions) and any parameter a module lists in
``no_weight_decay()`` get no weight decay, unless ``optim.decay_norm_and_bias`` asks to decay
every parameter as arcface_torch does.

arcface_torch's step, exactly: ``--head.margin=arcface --head.margin_args.straight_through=true
--optim.decay_norm_and_bias=true --optim.schedule=arcface_poly`` (with its SGD momentum 0.9,
backbone clipping at norm 5 and one lr and weight decay for both optimizers, which are the
defaults here); ``tests/unit/test_arcface_torch_step.py`` checks it against a float64
re-expression of that step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from dist_face.config import OptimConfig, RunConfig
from dist_face.heads.sharded.row_optim import build_row_optimizer


def param_groups(module: nn.Module, weight_decay: float, decay_all: bool = False) -> list[dict]:
    """Split ``module``'s trainable parameters into a decayed and a non-decayed group.

    ``decay_all``: one decayed group of every parameter (arcface_torch's choice).
    """
    skip_names = set(getattr(module, "no_weight_decay", lambda: ())())
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if not decay_all and (p.ndim < 2 or name in skip_names):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizer(
    groups: Iterable[dict], cfg: OptimConfig, lr: float, device: torch.device
) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over ``groups``, fused where the device supports it.

    Fused kernels read the ``found_inf`` flag set by :class:`~dist_face.train.precision.
    LossScaler` and skip the whole update on device, so skipping an overflowed step needs no
    host synchronisation.
    """
    groups = list(groups)
    fused = device.type in ("cpu", "cuda")
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, fused=fused)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


def build_head_optimizer(
    head: nn.Module, cfg: RunConfig, lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """The class centers' optimizer, as ``head.update`` says.

    ``sparse``: a :class:`~dist_face.heads.sharded.row_optim.RowSparseOptimizer` whose sink receives
    the head's kept-row gradients in backward; the step applies them after its skip decision.
    ``dense``: torch's SGD/AdamW over every head parameter (:func:`build_optimizer`).
    """
    if cfg.head_update == "sparse":
        opt = build_row_optimizer(head, cfg.optim.name, lr, weight_decay, cfg.optim.momentum)
        head.hand_rows_to(opt.sink)
        return opt
    groups = param_groups(head, weight_decay, cfg.optim.decay_norm_and_bias)
    return build_optimizer(groups, cfg.optim, lr, device)


def init_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Create SGD's momentum buffers as zeros before the first step.

    torch's SGD allocates them on its first step, the fused kernel with ``torch.empty_like``
    and whatever ``found_inf`` says: when the first step is skipped (an overflow), the buffers
    stay uninitialised memory (NaN, in practice) and every later update reads them. Zeros give
    the same first update (``0·momentum + g == g`` exactly, without dampening) and a skipped
    first step leaves them zero.
    """
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"] == 0 or group["dampening"] != 0:
            continue
        for p in group["params"]:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


def lr_factor(step: int, warmup_steps: int, total_steps: int, schedule: str, power: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based).

    Linear warm-up from ``1/warmup`` to 1 over ``warmup_steps``, then ``(1 - t)^power``
    (``poly``) or ``(1 + cos(πt))/2`` (``cosine``), where ``t`` goes from 0 to 1 over the rest.
    ``arcface_poly`` is arcface_torch's ``PolynomialLRWarmup``: the warm-up starts from 0
    (``step/warmup``, so its first step does not move the weights), then ``(1 - t)^power``.
    """
    if schedule == "arcface_poly" and step < warmup_steps:
        return step / warmup_steps
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / span, 1.0)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return (1.0 - t) ** power


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler stepped once per optimizer step (not per micro-batch)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, warmup_steps, total_steps, cfg.schedule, cfg.poly_power),
    )
