"""The sharded head on W gloo ranks against the single-device full-softmax reference.

One launch per world size runs every case (margins × label layouts × sample rates); the
float64 reference is computed here, in the test process, from the same initial centers.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from dist_face.audit import StepAudit
from dist_face.dist import all_gather_object
from dist_face.heads import MARGINS, MarginHead, PartialFC
from dist_face.heads.margins.common import ArcFace, CombinedMargin, CosFace
from dist_face.heads.margins.multiplicative import LSoftmax, SphereFace
from dist_face.heads.margins.uniface import UniFace
from dist_face.heads.sharded.sampling import init_class_centers
from dist_face.heads.sharded.shard_math import class_range, class_ranges
from tests.helpers.distributed import run_distributed

C, D, B = 13, 8, 3
# their multi-rank parity: tests/dist/test_adaptive_margins.py
ADAPTIVE = (
    "adaface",
    "magface",
    "elasticface_arc",
    "elasticface_arc_plus",
    "elasticface_cos",
    "elasticface_cos_plus",
    "subcenter_arcface",
)  # C divisible by none of 2, 3, 4
SEED = 5


def _margin(name: str) -> torch.nn.Module:
    special = {
        "cosface": lambda: CosFace(16.0, 0.35),
        "arcface": lambda: ArcFace(16.0, 0.5),
        "combined": lambda: CombinedMargin(16.0, 1.2, 0.3, 0.1),
        "lsoftmax": lambda: LSoftmax(3, lambda_base=2.0, lambda_min=1.0),
        "sphereface": lambda: SphereFace(2, lambda_base=2.0, lambda_min=1.0),
        "uniface": lambda: UniFace(16.0, 0.4, 0.7, 3.0),
    }
    return special.get(name, MARGINS.get(name))()


def _cases(world_size: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(world_size)
    n = B * world_size
    last = class_range(C, world_size - 1, world_size)
    layouts = {
        "random": torch.randint(0, C, (n,), generator=gen),
        "one_rank": torch.randint(last[0], last[1], (n,), generator=gen),
        "duplicates": torch.tensor([4, 4, 11] * world_size)[:n],
    }
    # every margin: three layouts at three sample rates ("duplicates" at 0.5 leaves a rank
    # with fewer positives than its budget); the margins with their own communication (class
    # bias, target all-reduce, UCE) also get the other combinations
    plan = [("random", 1.0), ("one_rank", 0.5), ("duplicates", 0.5), ("duplicates", 0.0)]
    extra = [("one_rank", 1.0), ("random", 0.5), ("duplicates", 1.0)]
    cases = []
    # AdaFace, MagFace, ElasticFace and sub-center ArcFace: tests/dist/test_adaptive_margins.py
    for name in (n for n in MARGINS.names() if n not in ADAPTIVE):
        full = name in ("softmax", "arcface", "curricularface", "uniface")
        for layout, rate in plan + (extra if full else []):
            x = torch.randn(n, D, generator=gen, dtype=torch.float64)
            cases.append(
                {"margin": name, "layout": layout, "rate": rate, "x": x, "y": layouts[layout]}
            )
    return cases


def _run_case(
    rank: int, world_size: int, case: dict[str, Any], gemm: torch.dtype | None = None
) -> dict[str, Any]:
    # blocks of 2 classes: every rank's slice spans several blocks, the last one partial
    margin = _margin(case["margin"])
    head = PartialFC(D, C, margin, case["rate"], seed=SEED, chunk_size=2, gemm_dtype=gemm)
    if head.bias is not None:
        with torch.no_grad():
            head.bias.copy_(torch.linspace(-0.5, 0.5, C)[head.class_start : head.class_end])
    rows = slice(rank * B, (rank + 1) * B)
    x = case["x"][rows].float().requires_grad_(True)
    loss = head(x, case["y"][rows])
    loss.backward()
    return {
        "loss": loss.detach(),
        "x_grad": x.grad,
        "w_grad": head.weight.grad,
        "b_grad": None if head.bias is None else head.bias.grad,
        "sampled": head.last_sampled,
        "margin_grads": {n: p.grad for n, p in head.margin.named_parameters()},
        "margin_state": head.margin.state_dict(),
    }


def _memory_probe(rank: int, world_size: int) -> dict[str, Any]:
    """Shapes of every block the margin saw, and the head's own sizes (blocks of 5 classes)."""
    big_c, small_d, batch = 64, 4, 4
    # a margin that changes non-target logits too: backward runs it on every block again
    head = PartialFC(small_d, big_c, "curricularface", chunk_size=5)
    shapes: list[tuple[int, ...]] = []
    logits = head.margin.logits

    def recording(inp):
        out = logits(inp)
        shapes.append(tuple(out.shape))
        return out

    head.margin.logits = recording
    x = torch.randn(batch, small_d, requires_grad=True)
    y = torch.randint(0, big_c, (batch,), generator=torch.Generator().manual_seed(rank))
    head(x, y).backward()
    return {
        "blocks": shapes,
        "num_local": head.num_local,
        "params": sum(p.numel() for p in head.parameters()),
        "grads": sum(p.grad.numel() for p in head.parameters()),
    }


def _reshard_probe(rank: int, world_size: int, shards: list[dict[str, Any]]) -> torch.Tensor:
    head = PartialFC(D, C, "softmax")
    head.load_shards(shards)
    exported = all_gather_object(head.export_shard())
    return torch.cat([s["weight"] for s in exported]) if rank == 0 else torch.empty(0)


def _all_cases(rank: int, world_size: int, cases: list[dict[str, Any]], shards) -> dict:
    return {
        "cases": [_run_case(rank, world_size, c) for c in cases],
        "low": [
            [_run_case(rank, world_size, cases[i], dt) for i in _low_cases(cases)] for dt in LOW
        ],
        "memory": _memory_probe(rank, world_size),
        "reshard": _reshard_probe(rank, world_size, shards),
        "no_scale": _run_unscaled(rank, world_size, cases[0]),
        "bf16": _bf16_probe(rank, world_size),
    }


def _bf16_probe(rank: int, world_size: int) -> dict[str, Any]:
    """A bf16 run's head on real ranks: GEMM FLOPs by dtype, rows kept at r = 0.05."""
    head = PartialFC(64, 4000, "arcface", 0.05, seed=SEED, gemm_dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(128, 64, generator=gen, requires_grad=True)
    y = torch.randint(0, 4000, (128,), generator=gen)
    audit = StepAudit(device_type="cpu")
    with audit, audit.in_phase("head"):
        head(x, y).backward()
    y_all = torch.cat(all_gather_object(y))
    positives = len({int(v) for v in y_all if head.class_start <= v < head.class_end})
    return {
        "flops": dict(audit.flops["head"]),
        "kept": len(head.last_sampled),
        "bound": max(0.05 * head.num_local, positives),
        "fraction": head.sampled_fraction * head.num_local,
    }


def _run_unscaled(rank: int, world_size: int, case: dict[str, Any]) -> torch.Tensor:
    head = PartialFC(D, C, _margin(case["margin"]), 1.0, seed=SEED, grad_scale_for_dp_average=False)
    x = case["x"][rank * B : (rank + 1) * B].float().requires_grad_(True)
    head(x, case["y"][rank * B : (rank + 1) * B]).backward()
    return x.grad


def _reference(case: dict[str, Any], sampled: torch.Tensor | None) -> dict[str, Any]:
    """Float64 full softmax over all classes, or over the classes the ranks sampled."""
    keep = torch.arange(C) if sampled is None else sampled
    head = MarginHead(D, len(keep), _margin(case["margin"])).double()
    with torch.no_grad():
        head.weight.copy_(init_class_centers(0, C, D, SEED).double()[keep])
        if head.bias is not None:
            head.bias.copy_(torch.linspace(-0.5, 0.5, C).double()[keep])
    x = case["x"].clone().requires_grad_(True)
    y = torch.searchsorted(keep, case["y"])
    loss = head(x, y)
    loss.backward()
    w_grad = torch.zeros(C, D, dtype=torch.float64)
    w_grad[keep] = head.weight.grad
    b_grad = None
    if head.bias is not None:
        b_grad = torch.zeros(C, dtype=torch.float64)
        b_grad[keep] = head.bias.grad
    return {
        "loss": loss.detach(),
        "x_grad": x.grad,
        "w_grad": w_grad,
        "b_grad": b_grad,
        "margin_grads": {n: p.grad for n, p in head.margin.named_parameters()},
        "margin_state": head.margin.state_dict(),
    }


# GEMM input dtype -> (loss, gradients) tolerance relative to the tensor's largest entry, about
# 1.5x the worst error measured on W = 1-4 (bf16: loss 4.6e-3, gradients 4.1e-2; fp16: 8.1e-4
# and 3.7e-3 at W = 1); CPU products are rounded to the input dtype, a GPU's are not
LOW = {torch.bfloat16: (1e-2, 6e-2), torch.float16: (2e-3, 8e-3)}


def _low_cases(cases: list[dict[str, Any]]) -> list[int]:
    """The cases also run with low-precision GEMMs: the margins with their own communication."""
    full = ("arcface", "curricularface", "uniface")
    return [i for i, c in enumerate(cases) if c["margin"] in full and c["layout"] != "duplicates"]


def _check_low(world_size: int, case: dict[str, Any], outs, dtype: torch.dtype) -> None:
    """bf16/fp16 GEMMs (float32 accumulation and softmax) against the float64 reference."""
    tag = f"W={world_size} {case['margin']} {case['layout']} r={case['rate']} {dtype}"
    sampled = torch.cat([o["sampled"] for o in outs]) if case["rate"] < 1.0 else None
    ref = _reference(case, sampled)
    loss_tol, grad_tol = LOW[dtype]

    def close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
        err = float((actual.double() - expected).abs().max() / expected.abs().max())
        assert err <= tol, f"{tag} {what}: {err:.2e} of the largest entry > {tol}"

    for r, o in enumerate(outs):
        close(o["loss"], ref["loss"], loss_tol, "loss")
        rows = slice(r * B, (r + 1) * B)
        close(o["x_grad"] / world_size, ref["x_grad"][rows], grad_tol, f"x.grad rank {r}")
    close(torch.cat([o["w_grad"] for o in outs]), ref["w_grad"], grad_tol, "weight.grad")


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, floor: float = 1.2e-7) -> None:
    """fp32 sharded head vs float64 reference: 1e-5 relative to the tensor's largest entry.

    Plus a float32-epsilon floor (1.2e-7): a saturated softmax (a few classes, s = 16) has
    gradients of 1e-11 whose fp32 value is pure rounding of ``p − 1``. At r = 0 only the
    positives are kept (two or three classes, s = 64 for NormFace): ``floor`` 1e-6 there.
    """
    scale = float(expected.abs().max())
    torch.testing.assert_close(
        actual.double(),
        expected,
        rtol=1e-5,
        atol=1e-5 * scale + floor,
        msg=lambda m: f"{what}: {m}",
    )


def _check_case(world_size: int, case: dict[str, Any], outs: list[dict[str, Any]]) -> None:
    tag = f"W={world_size} {case['margin']} {case['layout']} r={case['rate']}"
    sampled = None
    if case["rate"] < 1.0:
        sampled = torch.cat([o["sampled"] for o in outs])
        assert torch.equal(sampled, sampled.unique()), tag  # disjoint, sorted by rank
        assert set(case["y"].tolist()) <= set(sampled.tolist()), f"{tag}: positive dropped"
        for r, o in enumerate(outs):
            lo, hi = class_range(C, r, world_size)
            positives = {int(v) for v in case["y"] if lo <= v < hi}
            assert positives <= set(o["sampled"].tolist()), tag
            # Partial FC's rule: ⌈r·C_local⌉, raised to the rank's positives
            budget = math.ceil(case["rate"] * (hi - lo) - 1e-9)
            assert len(o["sampled"]) == min(hi - lo, max(budget, len(positives))), tag
    ref = _reference(case, sampled)
    floor = 1e-6 if case["rate"] == 0.0 else 1.2e-7
    for r, o in enumerate(outs):
        _close(o["loss"], ref["loss"], f"{tag} loss rank {r}")
        # DDP averages: the rank's gradient / W is the reference gradient of its rows
        rows = slice(r * B, (r + 1) * B)
        _close(o["x_grad"] / world_size, ref["x_grad"][rows], f"{tag} x.grad rank {r}", floor)
        for n, g in o["margin_grads"].items():
            _close(g, ref["margin_grads"][n], f"{tag} margin.{n}.grad rank {r}")
        for n, v in o["margin_state"].items():  # λ step, t (a cosine: fp32 absolute error)
            expected = ref["margin_state"][n].double()
            torch.testing.assert_close(v.double(), expected, rtol=1e-5, atol=1e-6, msg=tag)
        assert torch.equal(o["loss"], outs[0]["loss"]), f"{tag}: loss differs across ranks"
    _close(torch.cat([o["w_grad"] for o in outs]), ref["w_grad"], f"{tag} weight.grad", floor)
    if ref["b_grad"] is not None:
        _close(torch.cat([o["b_grad"] for o in outs]), ref["b_grad"], f"{tag} bias.grad")


def _old_shards(world_size: int) -> list[dict[str, Any]]:
    full = torch.arange(C * D, dtype=torch.float32).view(C, D)
    return [
        {
            "class_start": lo,
            "class_end": hi,
            "num_classes": C,
            "weight": full[lo:hi],
            "bias": torch.arange(lo, hi, dtype=torch.float32),
            "replicated": {},
        }
        for lo, hi in class_ranges(C, world_size)
    ]


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_sharded_head_matches_full_softmax(world_size: int) -> None:
    cases = _cases(world_size)
    old_w = 3 if world_size != 3 else 2
    outs = run_distributed(_all_cases, world_size, cases, _old_shards(old_w), timeout=240)
    for i, case in enumerate(cases):
        _check_case(world_size, case, [o["cases"][i] for o in outs])
    for d, dtype in enumerate(LOW):
        for j, i in enumerate(_low_cases(cases)):
            _check_low(world_size, cases[i], [o["low"][d][j] for o in outs], dtype)
    # a bf16 run's head: >= 99 % of its GEMM FLOPs in bf16; Partial FC's row count
    for o in (o["bf16"] for o in outs):
        assert o["flops"].get("bfloat16", 0) >= 0.99 * sum(o["flops"].values()), o["flops"]
        assert o["kept"] <= 1.25 * o["bound"], o
        assert o["fraction"] == pytest.approx(o["kept"])  # head/sampled_fraction · C_local
    # without the DP-average compensation the local gradient is the plain one
    for r, o in enumerate(outs):
        torch.testing.assert_close(o["no_scale"], outs[r]["cases"][0]["x_grad"] / world_size)
    # memory: parameters and gradients are C/W per rank; the margin only sees [N, 5] blocks
    # (forward, then again in backward), which together cover the rank's classes twice
    n, big_c = 4 * world_size, 64
    for o in (o["memory"] for o in outs):
        assert o["params"] == o["grads"] == o["num_local"] * 4
        assert o["num_local"] <= -(-big_c // world_size)
        assert all(rows == n and cols <= 5 for rows, cols in o["blocks"]), o["blocks"]
        assert sum(cols for _, cols in o["blocks"]) == 2 * o["num_local"]
    # re-sharding: shards written by another world size load into this one's ranges
    torch.testing.assert_close(
        outs[0]["reshard"], torch.cat([s["weight"] for s in _old_shards(old_w)])
    )
