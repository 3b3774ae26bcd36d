"""AdaFace, MagFace, ElasticFace and sub-center ArcFace through the sharded head, 1–4 ranks.

Against float64 references written from the papers' formulas (tests/helpers/margin_refs.py):
two steps per case, so the per-step state (AdaFace's μ and σ, ElasticFace's draw) and the
updated centers are checked too; with and without Partial FC sampling, in both update modes
(dense ``weight.grad`` stepped here; the row-sparse optimizer applying the rows its sink
received in backward), and
with bf16 center storage. One launch per world size runs every case; the shards each run
exports are re-split onto one device here (AdaFace's statistics and the sub-centers travel).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from dist_face.dist import all_gather_object
from dist_face.heads import PartialFC
from dist_face.heads.margins.adaface import AdaFace
from dist_face.heads.margins.elastic import ElasticArc, ElasticCosPlus, elastic_margins
from dist_face.heads.margins.magface import MagFace
from dist_face.heads.margins.subcenter import SubCenterArcFace
from dist_face.heads.sharded.row_optim import RowSparseOptimizer
from dist_face.heads.sharded.sampling import init_class_centers
from tests.helpers import margin_refs as refs
from tests.helpers.distributed import run_distributed

C, D, B, SEED, LR, K = 13, 8, 3, 5, 0.05, 3
STEPS = 2

MARGINS = {  # s = 16 keeps the few-class softmax from saturating; AdaFace's α large to move μ, σ
    "adaface": lambda: AdaFace(16.0, 0.4, 0.333, momentum=0.3),
    "magface": lambda: MagFace(16.0, l_a=0.5, u_a=3.0, l_m=0.45, u_m=0.8, lambda_g=2.0),
    "elasticface_arc": lambda: ElasticArc(16.0, 0.5, 0.05, seed=SEED),
    "elasticface_cos_plus": lambda: ElasticCosPlus(16.0, 0.35, 0.05, seed=SEED),
    "subcenter_arcface": lambda: SubCenterArcFace(16.0, 0.5, K),
}
# (sample rate, update mode, center storage)
MODES = [(1.0, "dense", "fp32"), (0.5, "sparse", "fp32"), (0.5, "dense", "bf16")]


def _cases(world_size: int) -> list[dict[str, Any]]:
    gen = torch.Generator().manual_seed(100 + world_size)
    n = B * world_size
    spread = torch.linspace(0.3, 4.0, n, dtype=torch.float64)[:, None]  # norms for ada/mag
    cases = []
    for name in MARGINS:
        for rate, update, storage in MODES:
            steps = 1 if storage == "bf16" else STEPS
            xs = [
                torch.randn(n, D, generator=gen, dtype=torch.float64) * spread for _ in range(steps)
            ]
            ys = [torch.randint(0, C, (n,), generator=gen) for _ in range(steps)]
            case = {"margin": name, "rate": rate, "update": update, "storage": storage}
            cases.append({**case, "xs": xs, "ys": ys})
    return cases


def _run_case(rank: int, case: dict[str, Any]) -> dict[str, Any]:
    dtype = torch.bfloat16 if case["storage"] == "bf16" else torch.float32
    head = PartialFC(
        D, C, MARGINS[case["margin"]](), case["rate"], seed=SEED, chunk_size=2, storage_dtype=dtype
    )
    opt = None
    if case["update"] == "sparse":
        opt = RowSparseOptimizer([(head.weight, 0.0)], [], "sgd", LR, 0.0)
        head.hand_rows_to(opt.sink)
    steps = []
    for x_all, y_all in zip(case["xs"], case["ys"], strict=True):
        x = x_all[rank * B : (rank + 1) * B].float().requires_grad_(True)
        loss = head(x, y_all[rank * B : (rank + 1) * B])
        loss.backward()
        if opt is not None:
            opt.step()
        out = {"loss": loss.detach(), "x_grad": x.grad, "sampled": head.last_sampled}
        if head.weight.grad is not None:
            out["w_grad"] = head.weight.grad.clone()
            with torch.no_grad():
                head.weight.sub_(LR * head.weight.grad)
            head.weight.grad = None
        out["state"] = {k: v.clone() for k, v in head.margin.state_dict().items()}
        out["weight"] = head.weight.detach().float().clone()
        steps.append(out)
    return {"steps": steps, "shard": head.export_shard()}


def _all(rank: int, world_size: int, cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outs = [_run_case(rank, c) for c in cases]
    # the next rank's shard lands on every rank: the re-split below needs them all
    shards = all_gather_object([o["shard"] for o in outs])
    for i, o in enumerate(outs):
        o["shards"] = [s[i] for s in shards] if rank == 0 else None
    return outs


def _reference_loss(case, step, x, w, y, state):
    """Float64 loss of the kept classes and the margin's state after the step."""
    name = case["margin"]
    if name == "adaface":
        loss, mu, sigma = refs.adaface(x, w, y, *state, s=16.0, m=0.4, h=0.333, alpha=0.3)
        return loss, (mu, sigma)
    if name == "magface":
        return refs.magface(x, w, y, s=16.0, la=0.5, ua=3.0, lm=0.45, um=0.8, lam=2.0), state
    if name.startswith("elasticface"):
        arc = name == "elasticface_arc"
        draws = elastic_margins(SEED, step, len(y), 0.5 if arc else 0.35, 0.05)
        return refs.elastic(x, w, y, draws, s=16.0, arc=arc, plus=not arc), state
    return refs.subcenter(x, w, y, s=16.0, m=0.5), state


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str, tol: float = 1e-5) -> None:
    """fp32 head vs float64 reference: ``tol`` of the tensor's largest entry, + fp32 epsilon."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(
        actual.double(), expected, rtol=tol, atol=tol * scale + 1.2e-7, msg=lambda m: f"{what}: {m}"
    )


def _check_case(world_size: int, case: dict[str, Any], outs: list[dict[str, Any]]) -> None:
    tag = f"W={world_size} {case['margin']} r={case['rate']} {case['update']} {case['storage']}"
    k = K if case["margin"] == "subcenter_arcface" else 1
    w = init_class_centers(0, C * k, D, SEED)
    if case["storage"] == "bf16":
        w = w.bfloat16()
    w = w.double().view(C, k, D) if k > 1 else w.double()
    state = (torch.tensor(20.0, dtype=torch.float64), torch.tensor(100.0, dtype=torch.float64))
    for step, (x_all, y_all) in enumerate(zip(case["xs"], case["ys"], strict=True)):
        got = [o["steps"][step] for o in outs]
        keep = torch.arange(C)
        if case["rate"] < 1.0:
            keep = torch.cat([g["sampled"] for g in got])
        assert set(y_all.tolist()) <= set(keep.tolist()), f"{tag}: positive dropped"
        x = x_all.clone().requires_grad_(True)
        wk = w[keep].clone().requires_grad_(True)
        loss, state = _reference_loss(case, step, x, wk, torch.searchsorted(keep, y_all), state)
        loss.backward()
        for r, g in enumerate(got):
            where = f"{tag} step {step} rank {r}"
            _close(g["loss"], loss.detach(), f"{where} loss")
            _close(g["x_grad"] / world_size, x.grad[r * B : (r + 1) * B], f"{where} x.grad")
            if case["margin"] == "adaface":
                _close(g["state"]["batch_mean"], state[0], f"{where} μ")
                _close(g["state"]["batch_std"], state[1], f"{where} σ")
            if case["margin"].startswith("elasticface"):
                assert int(g["state"]["step"]) == step + 1, where
        w_grad = torch.zeros_like(w)
        w_grad[keep] = wk.grad
        if case["update"] == "dense":
            # a bf16 parameter's gradient is stored in bf16: 8 bits of mantissa
            tol = 4e-3 if case["storage"] == "bf16" else 1e-5
            _close(torch.cat([g["w_grad"].double() for g in got]), w_grad, f"{tag} w.grad", tol)
        w = w - LR * w_grad
        if case["storage"] == "fp32":
            _close(torch.cat([g["weight"] for g in got]), w, f"{tag} step {step} centers")


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_adaface_magface_elastic_subcenter_match_references(world_size: int) -> None:
    cases = _cases(world_size)
    outs = run_distributed(_all, world_size, cases, timeout=240)
    for i, case in enumerate(cases):
        _check_case(world_size, case, [o[i] for o in outs])
    # re-split onto one device: the centers (K per class) and the margin's state follow
    for i, case in enumerate(cases):
        shards = outs[0][i]["shards"]
        head = PartialFC(D, C, MARGINS[case["margin"]](), storage_dtype=shards[0]["weight"].dtype)
        head.load_shards(shards)
        full = torch.cat([o[i]["steps"][-1]["weight"] for o in outs])
        torch.testing.assert_close(head.weight.detach().float(), full)
        for key, value in head.margin.state_dict().items():
            assert torch.equal(value, outs[-1][i]["steps"][-1]["state"][key]), (case, key)
