"""Aux losses on W gloo ranks == the same loss on one process over the concatenated batch.

One launch per world size runs every case. Checks, per rank: the loss value, the embedding
gradient (``W ×`` the reference rows with the DDP factor on, equal without it), the center
shards after the α update, and, through a real DDP-wrapped linear backbone, the parameter
gradient after DDP's average (equal to the single-device gradient).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from dist_face.heads.auxiliary.aux_losses import WeightedSum
from dist_face.heads.auxiliary.center_loss import CenterLoss
from dist_face.heads.auxiliary.pair_losses import PAIR_LOSSES
from dist_face.heads.sharded.shard_math import class_range
from tests.helpers.distributed import run_distributed

B, D, C = 5, 8, 7  # C = 7 is not divisible by 2, 3 or 4

LOSSES: dict[str, tuple[str, dict[str, Any]]] = {
    "contrastive": ("contrastive", {"margin": 1.2}),
    "triplet_bh": ("triplet", {}),
    "triplet_sh": ("triplet", {"mining": "semi_hard", "margin": 0.5}),
    "npair": ("npair", {}),
    "circle": ("circle", {}),
    "supcon": ("supcon", {}),
    "center": ("center", {"num_classes": C, "embedding_size": D, "alpha": 0.5}),
}
PATTERNS = ["random", "cross_rank", "all_equal", "all_distinct", "one_rank"]


def _labels(pattern: str, world_size: int) -> torch.Tensor:
    n = world_size * B
    gen = torch.Generator().manual_seed(3 + world_size)
    if pattern == "random":
        return torch.randint(0, C, (n,), generator=gen)
    if pattern == "cross_rank":  # every positive lives on another rank
        return torch.arange(n) % B
    if pattern == "all_equal":
        return torch.full((n,), 2)
    if pattern == "all_distinct":
        return torch.arange(n) % C if n <= C else torch.arange(n)
    start, end = class_range(C, world_size - 1, world_size)  # all owned by the last rank
    return start + torch.randint(0, end - start, (n,), generator=gen)


def _inputs(world_size: int) -> torch.Tensor:
    return torch.randn(world_size * B, D, generator=torch.Generator().manual_seed(world_size))


def _centers() -> torch.Tensor:
    return torch.randn(C, D, generator=torch.Generator().manual_seed(99))


def _make(key: str, **extra: Any) -> nn.Module:
    name, kwargs = LOSSES[key]
    loss = PAIR_LOSSES.get(name)(**kwargs, **extra)
    if isinstance(loss, CenterLoss):
        loss.centers.copy_(_centers()[loss.start : loss.end])
    return loss


def _run_case(loss: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    if isinstance(loss, CenterLoss):
        y = y % C  # center labels must be class ids in [0, C)
    x = x.clone().requires_grad_(True)
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value, x)
    out = {"loss": value.detach(), "grad": grad}
    if isinstance(loss, CenterLoss):
        out["centers"] = loss.centers.clone()
    return out


class _Head(nn.Module):
    """A stand-in margin head: a plain linear softmax classifier, replicated."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D, C)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.fc(emb), labels)


def _ddp_backbone_grad(rank: int, world_size: int, real_ddp: bool) -> torch.Tensor:
    """Backbone gradient averaged over ranks as DDP does, for aux losses only.

    ``real_ddp`` wraps the backbone in DDP itself; otherwise the gradient is all-reduced and
    divided by W by hand (DDP's documented semantics): constructing DDP imports torch._dynamo,
    several seconds per process, so only one world size pays for it.
    """
    torch.manual_seed(0)
    backbone = nn.Linear(D, D)
    ddp = nn.parallel.DistributedDataParallel(backbone) if real_ddp else backbone
    aux = {k: _make(k) for k in ("supcon", "triplet_bh", "center", "circle")}
    total = WeightedSum(lambda e, y: e.sum() * 0.0, aux, [1.0, 0.5, 0.003, 0.01])
    x = _inputs(world_size)[rank * B : (rank + 1) * B]
    y = _labels("random", world_size)[rank * B : (rank + 1) * B]
    loss, _ = total(ddp(x), y)
    loss.backward()
    grad = backbone.weight.grad.clone()
    if not real_ddp:
        torch.distributed.all_reduce(grad)
        grad /= world_size
    return grad


def _all_cases(rank: int, world_size: int, real_ddp: bool) -> dict[str, Any]:
    rows = slice(rank * B, (rank + 1) * B)
    x = _inputs(world_size)[rows]
    results: dict[str, Any] = {}
    for key in LOSSES:
        for pattern in PATTERNS:
            y = _labels(pattern, world_size)[rows]
            results[f"{key}/{pattern}"] = _run_case(_make(key), x, y)
        y = _labels("random", world_size)[rows]
        results[f"{key}/no_ddp_factor"] = _run_case(_make(key, ddp_average=False), x, y)
    results["ddp_backbone_grad"] = _ddp_backbone_grad(rank, world_size, real_ddp)
    return results


def _reference(key: str, pattern: str, world_size: int) -> dict[str, torch.Tensor]:
    return _run_case(_make(key), _inputs(world_size), _labels(pattern, world_size))


def _reference_backbone_grad(world_size: int) -> torch.Tensor:
    torch.manual_seed(0)
    backbone = nn.Linear(D, D)
    aux = {k: _make(k) for k in ("supcon", "triplet_bh", "center", "circle")}
    total = WeightedSum(lambda e, y: e.sum() * 0.0, aux, [1.0, 0.5, 0.003, 0.01])
    loss, _ = total(backbone(_inputs(world_size)), _labels("random", world_size))
    loss.backward()
    return backbone.weight.grad


def _close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    atol = 1e-6 * float(want.abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=atol, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_aux_losses_match_single_process(world_size: int) -> None:
    outs = run_distributed(_all_cases, world_size, world_size == 2)
    nonzero = 0
    for key in LOSSES:
        for pattern in [*PATTERNS, "no_ddp_factor"]:
            ref = _reference(key, "random" if pattern == "no_ddp_factor" else pattern, world_size)
            factor = 1.0 if pattern == "no_ddp_factor" else float(world_size)
            nonzero += int(ref["loss"].item() > 1e-3)
            for rank, out in enumerate(outs):
                got = out[f"{key}/{pattern}"]
                what = f"W={world_size} {key}/{pattern} rank {rank}"
                assert torch.equal(got["loss"], outs[0][f"{key}/{pattern}"]["loss"]), what
                _close(got["loss"], ref["loss"], what + " loss")
                rows = slice(rank * B, (rank + 1) * B)
                _close(got["grad"] / factor, ref["grad"][rows], what + " grad")
                if "centers" in got:
                    start, end = class_range(C, rank, world_size)
                    _close(got["centers"], ref["centers"][start:end], what + " centers")
    assert nonzero >= 30, "too many cases have a zero reference loss to test anything"
    want = _reference_backbone_grad(world_size)
    for rank, out in enumerate(outs):
        _close(out["ddp_backbone_grad"], want, f"W={world_size} DDP backbone grad rank {rank}")
