"""Each margin on one device against its formula written out here in float64 (θ from acos)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dist_face.heads import MARGINS, MarginHead
from dist_face.heads.margins.common import ArcFace, CombinedMargin, CosFace, NormFace
from dist_face.heads.margins.curricular import CurricularFace
from dist_face.heads.margins.multiplicative import LSoftmax, SphereFace
from dist_face.heads.margins.uniface import UniFace

B, C, D = 12, 9, 6
S = 64.0


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=gen, dtype=torch.float64)
    w = torch.randn(C, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=gen)
    return x, w, y


def _head(margin: torch.nn.Module, w: torch.Tensor) -> MarginHead:
    head = MarginHead(D, C, margin).double()
    with torch.no_grad():
        head.weight.copy_(w)
    return head


def _cos(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x @ w.T) / (x.norm(dim=1)[:, None] * w.norm(dim=1)[None, :])


def _with_target(base: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    onehot = F.one_hot(y, C).bool()
    return torch.where(onehot, target[:, None], base)


def _check(margin: torch.nn.Module, reference, seed: int = 0) -> None:
    """Logits, loss and both gradients of the head equal the written-out formula."""
    x, w, y = _data(seed)
    head = _head(margin, w)
    xh = x.clone().requires_grad_(True)
    loss = head(xh, y)
    loss.backward()
    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ref_logits = reference(xr, wr, y)
    ref_loss = F.cross_entropy(ref_logits, y)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(xh.grad, xr.grad, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, wr.grad, rtol=1e-8, atol=1e-12)


def _arc_ref(m: float, easy: bool):
    def ref(x, w, y):
        cos = _cos(x, w)
        theta = torch.acos(cos.gather(1, y[:, None])[:, 0])
        if easy:
            tgt = torch.where(theta < math.pi / 2, torch.cos(theta + m), torch.cos(theta))
        else:
            tgt = torch.where(
                theta < math.pi - m, torch.cos(theta + m), torch.cos(theta) - m * math.sin(m)
            )
        return S * _with_target(cos, y, tgt)

    return ref


def test_registry_holds_every_required_margin() -> None:
    required = {"softmax", "normface", "lsoftmax", "sphereface", "cosface", "arcface"}
    required |= {"combined", "uniface", "curricularface"}
    assert required <= set(MARGINS.names())


def test_softmax_with_bias() -> None:
    x, w, y = _data()
    head = _head(MARGINS.get("softmax")(), w)
    with torch.no_grad():
        head.bias.copy_(torch.linspace(-1, 1, C, dtype=torch.float64))
    b = head.bias.detach().clone()
    torch.testing.assert_close(head.logits(x, y), x @ w.T + b)


def test_normface() -> None:
    _check(NormFace(S), lambda x, w, y: S * _cos(x, w))


def test_cosface() -> None:
    def ref(x, w, y):
        cos = _cos(x, w)
        return S * (cos - 0.35 * F.one_hot(y, C).double())

    _check(CosFace(S, 0.35), ref)


@pytest.mark.parametrize("easy", [False, True])
def test_arcface_exact(easy: bool) -> None:
    _check(ArcFace(S, 0.5, easy_margin=easy), _arc_ref(0.5, easy))


def test_arcface_fallback_branch_is_exercised() -> None:
    # m = 2.5 puts most targets past θ > π − m, where the th/mm branch applies
    _check(ArcFace(S, 2.5), _arc_ref(2.5, False))


def test_arcface_straight_through_has_plain_gradient() -> None:
    x, w, y = _data()
    head = _head(ArcFace(S, 0.5, straight_through=True), w)
    logits = head.logits(x, y)
    torch.testing.assert_close(logits, _arc_ref(0.5, False)(x, w, y))
    xh = x.clone().requires_grad_(True)
    head(xh, y).backward()
    # reference: the margin as a constant offset added to the target cosine
    xr = x.clone().requires_grad_(True)
    cos = _cos(xr, w)
    shift = (_arc_ref(0.5, False)(x, w, y) / S - _cos(x, w)).detach()
    F.cross_entropy(S * (cos + shift), y).backward()
    torch.testing.assert_close(xh.grad, xr.grad)


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.3, 0.2), (1.35, 0.0, 0.0), (2.0, 0.4, 0.1)])
def test_combined(m1: float, m2: float, m3: float) -> None:
    def ref(x, w, y):
        cos = _cos(x, w)
        theta = torch.acos(cos.gather(1, y[:, None])[:, 0])
        return S * _with_target(cos, y, torch.cos(m1 * theta + m2) - m3)

    _check(CombinedMargin(S, m1, m2, m3), ref)


def _psi(theta: torch.Tensor, m: int) -> torch.Tensor:
    k = torch.floor(m * theta / math.pi)
    return (-1.0) ** k * torch.cos(m * theta) - 2 * k


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("lam", [0.0, 3.0])
def test_lsoftmax(m: int, lam: float) -> None:
    def ref(x, w, y):
        raw = x @ w.T
        xn, wn = x.norm(dim=1), w.norm(dim=1)[y]
        theta = torch.acos(_cos(x, w).gather(1, y[:, None])[:, 0])
        tgt = (lam * xn * wn * torch.cos(theta) + xn * wn * _psi(theta, m)) / (1 + lam)
        return _with_target(raw, y, tgt)

    _check(LSoftmax(m, lambda_base=lam, lambda_min=lam), ref)


@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("lam", [0.0, 5.0])
def test_sphereface(m: int, lam: float) -> None:
    def ref(x, w, y):
        xn = x.norm(dim=1)
        cos = _cos(x, w)
        theta = torch.acos(cos.gather(1, y[:, None])[:, 0])
        tgt = xn * (lam * torch.cos(theta) + _psi(theta, m)) / (1 + lam)
        return _with_target(xn[:, None] * cos, y, tgt)

    _check(SphereFace(m, lambda_base=lam, lambda_min=lam), ref)


def test_lambda_annealing_schedule_and_state() -> None:
    margin = SphereFace(4)  # base 1000, gamma 0.12, power 1, min 5
    x, w, y = _data()
    head = _head(margin, w)
    for step in range(1, 4):
        head(x, y)
        assert int(margin.iteration) == step
        assert margin.current_lambda() == pytest.approx(max(5.0, 1000 / (1 + 0.12 * step)))
    head.eval()
    head(x, y)
    assert int(margin.iteration) == 3  # evaluation does not advance the schedule
    assert "margin.iteration" in head.state_dict()
    margin.iteration.fill_(2000)  # 1000 / (1 + 0.12 · 2000) < 5
    assert margin.current_lambda() == 5.0


def test_curricularface() -> None:
    m, t0 = 0.5, 0.2
    margin = CurricularFace(S, m).double()
    margin.t.fill_(t0)

    def ref(x, w, y):
        cos = _cos(x, w)
        ct = cos.gather(1, y[:, None])[:, 0]
        t = 0.01 * ct.detach().mean() + 0.99 * t0
        theta = torch.acos(ct)
        bound = torch.cos(theta.detach() + m)  # hard negatives beat cos(θ_y + m)
        neg = torch.where(cos > bound[:, None], cos * (t + cos), cos)
        tgt = torch.where(theta < math.pi - m, torch.cos(theta + m), ct - m * math.sin(m))
        return S * _with_target(neg, y, tgt)

    _check(margin, ref, seed=3)
    x, w, y = _data(3)
    expected = 0.01 * _cos(x, w).gather(1, y[:, None]).mean() + 0.99 * t0
    assert float(margin.t) == pytest.approx(float(expected), rel=1e-6)


def test_uniface() -> None:
    m, lam, b0 = 0.4, 0.7, 2.5
    x, w, y = _data()
    head = _head(UniFace(S, m, lam, b0), w)
    xh = x.clone().requires_grad_(True)
    loss = head(xh, y)
    loss.backward()

    xr, wr = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
    cos = _cos(xr, wr)
    onehot = F.one_hot(y, C).bool()
    pos = torch.log1p(torch.exp(-S * (cos[onehot] - m) + b))
    neg = torch.where(onehot, 0.0, torch.log1p(torch.exp(S * cos - b))).sum(dim=1)
    ref = (pos + lam * neg).mean()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(xh.grad, xr.grad)
    torch.testing.assert_close(head.weight.grad, wr.grad)
    torch.testing.assert_close(head.margin.bias.grad, b.grad)


def test_uniface_default_bias_follows_official_init() -> None:
    from dist_face.config.schema import HeadConfig
    from dist_face.heads import build_margin

    margin = build_margin(
        HeadConfig(margin="uniface", margin_args={"margin": 0.4}, sample_rate=0.5), 1000
    )
    assert margin.bias.item() == pytest.approx(math.log(10 * 1000 * 0.5))
