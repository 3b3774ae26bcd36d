"""The row-sparse center update against hand-computed and torch references, and its memory."""

from __future__ import annotations

import copy

import pytest
import torch

from dist_face.heads import MarginHead, PartialFC
from dist_face.heads.margins.common import ArcFace, CombinedMargin, CosFace, NormFace
from dist_face.heads.sharded.row_optim import RowSparseOptimizer, build_row_optimizer
from dist_face.train.engine import DDPEngine
from dist_face.train.precision import LossScaler
from dist_face.train.step import TrainStep, optimizer_step
from tests.helpers.allocations import LargestOutput

C, D, N = 40, 6, 5
LR, MU, WD = 0.5, 0.9, 0.01


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=gen), torch.randint(0, C, (N,), generator=gen)


def _reference_grad(head: PartialFC, w0: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Float64 full-softmax gradient of centers ``w0`` over the classes the head kept."""
    keep = torch.arange(C) if head.last_sampled is None else head.last_sampled
    ref = MarginHead(D, len(keep), "arcface").double()
    with torch.no_grad():
        ref.weight.copy_(w0.double()[keep])
    ref(x.double(), torch.searchsorted(keep, y)).backward()
    full = torch.zeros(C, D, dtype=torch.float64)
    full[keep] = ref.weight.grad
    return keep, full


@pytest.mark.parametrize("rate", [1.0, 0.3])
def test_sgd_step_matches_hand_computed_update_on_touched_rows(rate: float) -> None:
    head = PartialFC(D, C, "arcface", rate, seed=3, chunk_size=7)
    opt = build_row_optimizer(head, "sgd", LR, WD, MU)
    head.hand_rows_to(opt.sink)
    momentum = opt.state[head.weight]["momentum_buffer"]
    momentum.normal_(generator=torch.Generator().manual_seed(9))  # a step in mid-run
    w0, m0 = head.weight.detach().clone(), momentum.clone()
    x, y = _batch()
    head(x, y).backward()
    assert head.weight.grad is None  # the kept rows' gradients are in the sink, no dense one
    assert torch.equal(head.weight.detach(), w0)  # nothing moves before the step
    opt.step()
    keep, grad = _reference_grad(head, w0, x, y)
    m1 = MU * m0.double() + grad + WD * w0.double()
    w1 = w0.double() - LR * m1
    w, m = head.weight.detach(), momentum
    # float32 against float64: 1e-5 of the largest entry (gradients reach s = 64)
    for got, want in ((w, w1), (m, m1)):
        tol = 1e-5 * float(want.abs().max())
        torch.testing.assert_close(got[keep].double(), want[keep], rtol=1e-5, atol=tol)
    untouched = torch.ones(C, dtype=torch.bool)
    untouched[keep] = False
    assert untouched.any() == (rate < 1)
    # rows not sampled keep their weight and their momentum, bit for bit
    assert torch.equal(w[untouched], w0[untouched])
    assert torch.equal(m[untouched], m0[untouched])


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
@pytest.mark.parametrize("margin", ["arcface", "softmax", "uniface"])
def test_all_rows_used_equals_torch_dense_optimizer(kind: str, margin: str) -> None:
    """At r = 1 the sparse update is torch's SGD/AdamW, for three steps in a row."""
    sparse, dense = PartialFC(D, C, margin, chunk_size=9), PartialFC(D, C, margin)
    opt_s = build_row_optimizer(sparse, kind, LR / 10, WD, MU)
    sparse.hand_rows_to(opt_s.sink)
    groups = [{"params": [dense.weight], "weight_decay": WD}]
    others = [p for n, p in dense.named_parameters() if n != "weight"]
    if others:
        groups.append({"params": others, "weight_decay": 0.0})
    if kind == "sgd":
        opt_d = torch.optim.SGD(groups, lr=LR / 10, momentum=MU)
    else:
        opt_d = torch.optim.AdamW(groups, lr=LR / 10)
    for step in range(3):
        x, y = _batch(step)
        sparse(x, y).backward()
        opt_s.step()
        opt_s.zero_grad()
        dense(x, y).backward()
        opt_d.step()
        opt_d.zero_grad()
    # float32 rounding of two orders of summation: 1e-5 of the largest entry (the first steps
    # move centers of norm 0.02 by gradients ∝ 1/‖w‖, far beyond it)
    for (name, a), b in zip(sparse.named_parameters(), dense.parameters(), strict=True):
        tol = 1e-5 * float(b.detach().abs().max())
        torch.testing.assert_close(a, b, rtol=1e-5, atol=tol, msg=f"{kind} {margin} {name}")


def test_adamw_bias_correction_counts_each_rows_own_updates() -> None:
    head = PartialFC(D, C, "cosface", 0.2, seed=1)
    opt = build_row_optimizer(head, "adamw", 1e-2, 0.0, MU)
    head.hand_rows_to(opt.sink)
    for step in range(4):
        head(*_batch(step)).backward()
        opt.step()
    steps = opt.state[head.weight]["step"]
    assert steps.shape == (C,) and 0 < int(steps.max()) <= 4
    assert int(steps.min()) < int(steps.max())  # rows sampled a different number of times


def test_non_finite_loss_leaves_centers_and_state_unchanged() -> None:
    head = PartialFC(D, C, "arcface", chunk_size=8)
    opt = build_row_optimizer(head, "sgd", LR, WD, MU)
    head.hand_rows_to(opt.sink)
    head(*_batch(0)).backward()  # a normal step first: momentum is non-zero
    opt.step()
    w0 = head.weight.detach().clone()
    m0 = opt.state[head.weight]["momentum_buffer"].clone()
    x, y = _batch(1)
    x[2, 0] = float("nan")
    loss = head(x, y)
    loss.backward()
    opt.step()
    assert not torch.isfinite(loss)
    assert torch.equal(head.weight.detach(), w0)
    assert torch.equal(opt.state[head.weight]["momentum_buffer"], m0)


def test_grad_scale_is_divided_out() -> None:
    """fp16 training back-propagates ``loss · scale``; the update must not see the scale."""
    plain, scaled = PartialFC(D, C, "arcface"), PartialFC(D, C, "arcface")
    for head, scale in ((plain, 1.0), (scaled, 1024.0)):
        opt = build_row_optimizer(head, "sgd", LR, WD, MU)
        head.hand_rows_to(opt.sink)
        (head(*_batch()) * scale).backward()
        found = torch.zeros(())
        LossScaler("fp16", torch.device("cpu"), init_scale=scale).unscale(opt.sink.tensors(), found)
        optimizer_step(opt, found)  # as the step's decision does
    assert not torch.equal(plain.weight, PartialFC(D, C, "arcface").weight)
    torch.testing.assert_close(plain.weight, scaled.weight)


def _fp16_step(images: torch.Tensor) -> tuple[PartialFC, RowSparseOptimizer, TrainStep]:
    """A real training step with a dynamic loss scale of 2^100 (fp16's scaler, on the CPU)."""
    torch.manual_seed(0)
    backbone = torch.nn.Linear(12, D)
    head = PartialFC(D, C, "arcface", sample_rate=0.5)
    opt = build_row_optimizer(head, "sgd", LR, WD, MU)
    head.hand_rows_to(opt.sink)
    scaler = LossScaler("fp16", torch.device("cpu"), init_scale=2.0**100)
    engine = DDPEngine(backbone, [torch.optim.SGD(backbone.parameters(), lr=0.1)], scaler, "fp32")
    step = TrainStep(engine=engine, loss_fn=head, head_optimizers=[opt], schedulers=[])
    step([(images, torch.randint(0, C, (N,)))])  # momentum is non-zero now
    return head, opt, step


def test_a_step_skipped_for_an_overflow_leaves_centers_and_momentum_unchanged() -> None:
    """A real overflow: at a loss scale of 2^127 the scaled gradients pass float32's range
    (at 2^100 they do not); the skipped step leaves the centers and their momentum as they
    were, the clean one moves both."""
    for scale, skipped in ((2.0**100, 0.0), (2.0**127, 1.0)):
        head, opt, step = _fp16_step(torch.randn(N, 12))
        w0 = head.weight.detach().clone()
        m0 = opt.state[head.weight]["momentum_buffer"].clone()
        step.engine.scaler.scale.fill_(scale)
        out = step([(torch.randn(N, 12), torch.randint(0, C, (N,)))])
        assert float(out["skipped"]) == skipped
        assert torch.equal(head.weight.detach(), w0) == bool(skipped)
        assert torch.equal(opt.state[head.weight]["momentum_buffer"], m0) == bool(skipped)


def test_bf16_storage_keeps_float32_math() -> None:
    fp32 = PartialFC(D, C, "arcface")
    bf16 = PartialFC(D, C, "arcface", storage_dtype=torch.bfloat16)
    assert bf16.weight.dtype == torch.bfloat16
    opt = build_row_optimizer(bf16, "sgd", LR, WD, MU)
    bf16.hand_rows_to(opt.sink)
    assert opt.state[bf16.weight]["momentum_buffer"].dtype == torch.bfloat16
    x, y = _batch()
    loss32, loss16 = fp32(x, y), bf16(x, y)
    assert loss16.dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=2e-2, atol=2e-2)  # rounded centers only
    loss16.backward()
    opt.step()
    assert torch.isfinite(bf16.weight.float()).all()


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_no_tensor_scales_with_all_classes(rate: float) -> None:
    """With the sparse update, nothing the size of ``[N, K]`` or ``[C, D]`` is allocated."""
    classes, chunk = 4096, 64
    head = PartialFC(D, classes, "arcface", rate, chunk_size=chunk)
    opt = build_row_optimizer(head, "sgd", LR, WD, MU)
    head.hand_rows_to(opt.sink)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=gen, requires_grad=True)
    y = torch.randint(0, classes, (N,), generator=gen)
    head(x, y)  # warm-up: allocations of the first step (label check) are not the steady state
    with LargestOutput() as probe:
        head(x, y).backward()
        opt.step()
    # blocks [N, chunk], rows [chunk, D]; sampling draws one score per class ([C + 1])
    limit = max(N * chunk, chunk * D, classes + 1)
    assert probe.largest[0] <= limit, probe.largest


def _step(margin: str, keep_mb: float, sparse: bool) -> tuple[torch.Tensor, ...]:
    """Two training steps of a sampled head with filtering; every value backward produced."""
    head = PartialFC(
        D,
        C,
        margin,
        0.6,
        seed=2,
        chunk_size=7,
        keep_projections_mb=keep_mb,
        interclass_filtering_threshold=0.3 if margin != "softmax" else 0.0,
    )
    opt = build_row_optimizer(head, "sgd", LR, WD, MU) if sparse else None
    if opt is not None:
        head.hand_rows_to(opt.sink)
    out = []
    for seed in (0, 1):
        x, y = _batch(seed)
        x.requires_grad_(True)
        loss = head(x, y)
        kept = len(loss.grad_fn.fused.kept)  # blocks held by the autograd node's context
        loss.backward()
        if opt is not None:
            opt.step()
        out += [loss.detach(), x.grad, torch.tensor(kept)]
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    return (*out, *grads, *[p.detach() for p in head.parameters()])


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize(
    "margin", ["arcface", "softmax", "uniface", "curricularface", "sphereface"]
)
def test_kept_projections_give_bitwise_the_recomputed_result(margin: str, sparse: bool) -> None:
    """Keeping the forward's projections changes nothing but the time backward takes."""
    kept = _step(margin, 1.0, sparse)
    recomputed = _step(margin, 0.0, sparse)
    assert kept[2] == 4 and recomputed[2] == 0  # K = 24 kept classes in blocks of 7
    for a, b in zip(kept[3:], recomputed[3:], strict=True):
        if a.dim():  # the block counts differ by design
            assert torch.equal(a, b)
    assert torch.equal(kept[0], recomputed[0]) and torch.equal(kept[1], recomputed[1])


def test_projections_are_kept_only_within_the_budget_and_for_a_backward() -> None:
    x, y = _batch()
    x.requires_grad_(True)
    k_bytes = N * int(0.6 * C) * 4  # N·K float32
    fits = PartialFC(D, C, "arcface", 0.6, chunk_size=7, keep_projections_mb=k_bytes / 2**20)
    assert len(fits(x, y).grad_fn.fused.kept) == 4
    short = PartialFC(D, C, "arcface", 0.6, chunk_size=7, keep_projections_mb=(k_bytes - 1) / 2**20)
    assert len(short(x, y).grad_fn.fused.kept) == 0
    with torch.no_grad():  # evaluation: nothing will read them
        assert fits(x, y).grad_fn is None


def _trained(margin: torch.nn.Module, through_blocks: bool, sparse: bool) -> list[torch.Tensor]:
    head = PartialFC(D, C, margin, 0.6, seed=4, chunk_size=7)
    if through_blocks:  # the generic path: autograd over every [N, chunk] block
        head.margin.target_only = False
    opt = build_row_optimizer(head, "sgd", LR, WD, MU) if sparse else None
    if opt is not None:
        head.hand_rows_to(opt.sink)
    calls, targets = [], []
    logits, target_logit = head.margin.logits, head.margin.target_logit
    head.margin.logits = lambda inp: calls.append(1) or logits(inp)
    head.margin.target_logit = lambda zt: targets.append(1) or target_logit(zt)
    out = []
    for seed in (0, 1):
        x, y = _batch(seed)
        x.requires_grad_(True)
        loss = head(x, y)
        loss.backward()
        if opt is not None:
            opt.step()
        out += [loss.detach(), x.grad]
    # K = 24 kept classes in blocks of 7: 4 blocks in forward and in backward when generic;
    # target-only: the [N] target logits once per block in forward, their graph kept for
    # backward, and never a whole block through the margin
    assert len(calls) == (2 * 8 if through_blocks else 0)
    assert through_blocks or len(targets) == 2 * 4
    return out + [head.weight.detach()] + ([] if sparse else [head.weight.grad])


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize(
    "margin",
    [
        NormFace(),
        CosFace(),
        ArcFace(),
        ArcFace(easy_margin=True),
        ArcFace(straight_through=True),
        CombinedMargin(),
    ],
    ids=["normface", "cosface", "arcface", "arcface_easy", "arcface_st", "combined"],
)
def test_target_only_margins_differentiate_targets_alone_bitwise_as_whole_blocks(
    margin: torch.nn.Module, sparse: bool
) -> None:
    """Margins that change only the target logit skip autograd over the blocks: same bits."""
    assert margin.target_only
    fast = _trained(copy.deepcopy(margin), False, sparse)
    generic = _trained(copy.deepcopy(margin), True, sparse)
    for a, b in zip(fast, generic, strict=True):
        assert torch.equal(a, b)


def test_learning_rate_is_a_device_tensor_the_scheduler_updates_in_place() -> None:
    """CUDA-graph ready: the update reads the rate from a tensor a scheduler fills in place."""
    head = PartialFC(D, C, "arcface", chunk_size=8)
    opt = build_row_optimizer(head, "sgd", LR, 0.0, 0.0)
    head.hand_rows_to(opt.sink)
    lr = opt.param_groups[0]["lr"]
    assert torch.is_tensor(lr) and lr.device == head.weight.device
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.1)
    sched.step()
    assert opt.param_groups[0]["lr"] is lr and float(lr) == pytest.approx(0.1 * LR)
    w0 = head.weight.detach().clone()
    head(*_batch(0)).backward()
    opt.step()
    changed = head.weight.detach() - w0
    opt.param_groups[0]["lr"].fill_(LR)  # the same batch at the full rate moves 10x as far
    head.weight.data.copy_(w0)
    head(*_batch(0)).backward()
    opt.step()
    torch.testing.assert_close(head.weight.detach() - w0, 10 * changed, rtol=1e-4, atol=1e-7)
