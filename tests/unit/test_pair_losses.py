"""Pair and metric losses (one process) against naive float64 loop references."""

from __future__ import annotations

import math

import pytest
import torch

from dist_face.config.base import ConfigError
from dist_face.config.loader import apply_overrides
from dist_face.config.schema import AuxLossConfig, RunConfig
from dist_face.heads.auxiliary.aux_losses import WeightedSum, build_aux_losses
from dist_face.heads.auxiliary.center_loss import CenterLoss
from dist_face.heads.auxiliary.pair_losses import (
    PAIR_LOSSES,
    CircleLoss,
    ContrastiveLoss,
    NPairLoss,
    SupConLoss,
    TripletLoss,
)

LABELS = [0, 3, 1, 0, 2, 1, 3, 1, 4, 0, 2, 5]  # classes 4 and 5 have no positive


# ------------------------------------------------------------------ naive references (float64)
def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.clamp(torch.sqrt((v * v).sum()), min=1e-12)


def _val(t: torch.Tensor) -> float:
    return float(t.detach())


def _sq(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).sum()


def naive_contrastive(x, y, margin=1.0):
    f = [_unit(v) for v in x]
    pos, neg = [], []
    for i in range(len(y)):
        for j in range(len(y)):
            if i == j:
                continue
            d2 = _sq(f[i], f[j])
            if y[i] == y[j]:
                pos.append(d2)
            else:
                neg.append(torch.clamp(margin - torch.sqrt(d2), min=0) ** 2)
    pos_mean = sum(pos) / len(pos) if pos else 0.0
    neg_mean = sum(neg) / len(neg) if neg else 0.0
    return 0.5 * (pos_mean + neg_mean)


def naive_triplet_batch_hard(x, y, margin=0.2):
    f = [_unit(v) for v in x]
    terms = []
    for a in range(len(y)):
        dp = [_sq(f[a], f[p]) for p in range(len(y)) if p != a and y[p] == y[a]]
        dn = [_sq(f[a], f[n]) for n in range(len(y)) if y[n] != y[a]]
        if dp and dn:
            hardest_p = max(dp, key=_val)
            hardest_n = min(dn, key=_val)
            terms.append(torch.clamp(hardest_p - hardest_n + margin, min=0))
    return sum(terms) / len(terms) if terms else torch.zeros((), dtype=x.dtype)


def naive_triplet_semi_hard(x, y, margin=0.2):
    f = [_unit(v) for v in x]
    terms = []
    for a in range(len(y)):
        for p in range(len(y)):
            if p == a or y[p] != y[a]:
                continue
            d_ap = _sq(f[a], f[p])
            semi = [
                _sq(f[a], f[n])
                for n in range(len(y))
                if y[n] != y[a] and _val(d_ap) < _val(_sq(f[a], f[n])) < _val(d_ap) + margin
            ]
            if semi:
                terms.append(d_ap - min(semi, key=_val) + margin)
    return sum(terms) / len(terms) if terms else torch.zeros((), dtype=x.dtype)


def naive_npair(x, y, l2_reg=0.002):
    terms = []
    for i in range(len(y)):
        for p in range(len(y)):
            if p == i or y[p] != y[i]:
                continue
            inner = sum(
                (torch.exp(x[i] @ x[n] - x[i] @ x[p]) for n in range(len(y)) if y[n] != y[i]),
                torch.zeros((), dtype=x.dtype),
            )
            terms.append(torch.log(1 + inner))
    pair = sum(terms) / len(terms) if terms else 0.0
    return pair + 0.5 * l2_reg * sum((v * v).sum() for v in x) / len(y)


def naive_circle(x, y, m=0.25, gamma=256.0):
    f = [_unit(v) for v in x]
    terms = []
    for i in range(len(y)):
        sp = [f[i] @ f[p] for p in range(len(y)) if p != i and y[p] == y[i]]
        sn = [f[i] @ f[n] for n in range(len(y)) if y[n] != y[i]]
        if not sp or not sn:
            continue
        # log-sum-exp by hand (γ = 256 overflows a plain sum of exponentials)
        lp = [-gamma * max(1 + m - _val(s), 0.0) * (s - (1 - m)) for s in sp]
        ln = [gamma * max(_val(s) + m, 0.0) * (s - m) for s in sn]
        lse_p = torch.logsumexp(torch.stack(lp), 0)
        lse_n = torch.logsumexp(torch.stack(ln), 0)
        terms.append(torch.nn.functional.softplus(lse_p + lse_n))
    return sum(terms) / len(terms) if terms else torch.zeros((), dtype=x.dtype)


def naive_supcon(x, y, tau=0.1):
    f = [_unit(v) for v in x]
    terms = []
    for i in range(len(y)):
        positives = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if not positives:
            continue
        denom = sum(torch.exp(f[i] @ f[a] / tau) for a in range(len(y)) if a != i)
        logs = [torch.log(torch.exp(f[i] @ f[p] / tau) / denom) for p in positives]
        terms.append(-sum(logs) / len(positives))
    return sum(terms) / len(terms) if terms else torch.zeros((), dtype=x.dtype)


def naive_center(x, y, centers, alpha=0.5):
    loss = sum(0.5 * _sq(x[i], centers[y[i]]) for i in range(len(y))) / len(y)
    new = centers.clone()
    for j in range(centers.shape[0]):
        members = [i for i in range(len(y)) if y[i] == j]
        delta = sum((centers[j] - x[i] for i in members), torch.zeros_like(centers[j]))
        new[j] = centers[j] - alpha * delta / (1 + len(members))
    return loss, new


# ------------------------------------------------------------------ loss vs reference
CASES = [
    ("contrastive", lambda: ContrastiveLoss(margin=1.2), lambda x, y: naive_contrastive(x, y, 1.2)),
    ("triplet_bh", lambda: TripletLoss(), naive_triplet_batch_hard),
    ("triplet_sh", lambda: TripletLoss(margin=0.5, mining="semi_hard"),
     lambda x, y: naive_triplet_semi_hard(x, y, 0.5)),
    ("npair", lambda: NPairLoss(), naive_npair),
    ("circle", lambda: CircleLoss(), naive_circle),
    ("circle_pml", lambda: CircleLoss(m=0.4, gamma=80.0),
     lambda x, y: naive_circle(x, y, 0.4, 80.0)),
    ("supcon", lambda: SupConLoss(), naive_supcon),
]  # fmt: skip


def _batch(seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(LABELS), 6, generator=gen, dtype=torch.float64) * scale
    return x, torch.tensor(LABELS)


@pytest.mark.parametrize("name,make,naive", CASES, ids=[c[0] for c in CASES])
def test_loss_and_grad_match_naive_reference(name, make, naive) -> None:
    for seed in range(3):
        x, y = _batch(seed, scale=0.7 if name == "npair" else 1.0)
        x1 = x.clone().requires_grad_(True)
        x2 = x.clone().requires_grad_(True)
        got = make()(x1, y)
        want = naive(x2, y.tolist())
        assert float(want.detach()) > 1e-3, "reference is (near) zero: the case tests nothing"
        torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
        (g1,) = torch.autograd.grad(got, x1)
        (g2,) = torch.autograd.grad(want, x2)
        torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-12)


def test_center_loss_and_update_match_naive_reference() -> None:
    x, y = _batch(0)
    centers = torch.randn(7, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    loss = CenterLoss(7, 6, alpha=0.3).double()
    loss.centers.copy_(centers)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got = loss(x1, y)
    want, new_centers = naive_center(x2, y.tolist(), centers, alpha=0.3)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        torch.autograd.grad(got, x1)[0], torch.autograd.grad(want, x2)[0], rtol=1e-12, atol=0
    )
    torch.testing.assert_close(loss.centers, new_centers, rtol=1e-12, atol=1e-15)
    assert not torch.equal(loss.centers, centers)
    loss.eval()  # no update outside training
    before = loss.centers.clone()
    loss(x, y)
    assert torch.equal(loss.centers, before)


# ------------------------------------------------------------------ numerics
def _all_losses() -> list[tuple[str, torch.nn.Module]]:
    out = [(n, PAIR_LOSSES.get(n)()) for n in PAIR_LOSSES.names() if n != "center"]
    out.append(("triplet_sh", TripletLoss(mining="semi_hard")))
    out.append(("center", CenterLoss(8, 6)))
    return out


@pytest.mark.parametrize(
    "case",
    ["zero_embeddings", "no_positive_pair", "all_labels_equal", "single_sample", "half_precision"],
)
def test_degenerate_batches_stay_finite(case: str) -> None:
    x, y = _batch(1)
    x = x.float()
    if case == "zero_embeddings":
        x = torch.zeros_like(x)
    elif case == "no_positive_pair":
        y = torch.arange(len(y)) % 8
        x, y = x[:8], y[:8]
    elif case == "all_labels_equal":
        y = torch.zeros_like(y)
    elif case == "single_sample":
        x, y = x[:1], y[:1]
    else:
        x = x.bfloat16()
    for name, loss in _all_losses():
        xg = x.clone().requires_grad_(True)
        value = loss(xg, y)
        (grad,) = torch.autograd.grad(value, xg)
        assert torch.isfinite(value), (case, name, value)
        assert torch.isfinite(grad).all(), (case, name)
        assert value.dtype == torch.float32


def test_no_valid_triplet_gives_zero_and_zero_gradient() -> None:
    # positives identical, negatives opposite: d_ap = 0, d_an = 4 > α, no semi-hard negative
    # and every batch-hard triplet satisfied, and all-equal labels have no negative at all
    base = torch.tensor([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]])
    batches = [(base, torch.tensor([0, 0, 1, 1])), (base, torch.zeros(4, dtype=torch.long))]
    batches.append((base, torch.arange(4)))  # no positive
    for mining in ("batch_hard", "semi_hard"):
        for x, y in batches:
            xg = x.clone().requires_grad_(True)
            value = TripletLoss(mining=mining)(xg, y)
            (grad,) = torch.autograd.grad(value, xg)
            assert value.item() == 0.0
            assert torch.equal(grad, torch.zeros_like(grad))


def test_semi_hard_excludes_hard_and_easy_negatives() -> None:
    # anchor 0: positive at d_ap; negatives at d < d_ap (hard), inside the margin, beyond it
    angle = [0.0, 0.5, 0.3, 0.6, 1.5]
    x = torch.tensor([[math.cos(a), math.sin(a)] for a in angle], dtype=torch.float64)
    y = torch.tensor([0, 0, 1, 2, 3])
    d = lambda i, j: float(((x[i] - x[j]) ** 2).sum())  # noqa: E731
    assert d(0, 2) < d(0, 1) < d(0, 3) < d(0, 1) + 0.2 < d(0, 4)
    got = TripletLoss(mining="semi_hard")(x, y)
    # anchor 0 must pick negative 3 (not the harder 2 nor the easy 4); the other anchors'
    # choices are checked against the naive reference
    torch.testing.assert_close(got, naive_triplet_semi_hard(x, y.tolist()), rtol=1e-12, atol=0)
    assert got.item() > 0
    # a negative exactly as far as the positive is not semi-hard (strict d_ap < d_an)
    same = torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1)  # normalises exactly: d = 0
    tie = TripletLoss(mining="semi_hard")(same, torch.tensor([0, 0, 1, 1]))
    assert tie.item() == 0.0
    assert TripletLoss()(same, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.2)


def test_bad_shapes_are_named() -> None:
    loss = SupConLoss()
    with pytest.raises(ValueError, match=r"SupConLoss: labels must be \[B\]"):
        loss(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="embeddings must be"):
        loss(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class ids"):
        loss(torch.randn(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="mining"):
        TripletLoss(mining="hardest")


# ------------------------------------------------------------------ config and weighted sum
def test_aux_config_overrides_and_validation() -> None:
    cfg = apply_overrides(
        RunConfig(), ["--aux.losses=[triplet,center]", "--aux.weights=[0.5,0.003]"]
    )
    assert cfg.aux.losses == ["triplet", "center"] and cfg.aux.weights == [0.5, 0.003]
    bad = {
        "--aux.losses=[tripplet]": "aux.losses: unknown loss 'tripplet'",
        "--aux.losses=[triplet]": "aux.weights: needs one weight per loss",
        "--aux.triplet_mining=hardest": "aux.triplet_mining",
        "--aux.center_alpha=2": "aux.center_alpha",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            apply_overrides(RunConfig(), [override])
    with pytest.raises(ConfigError, match=r"aux\.weights: must be >= 0"):
        apply_overrides(RunConfig(), ["--aux.losses=[npair]", "--aux.weights=[-1]"])
    with pytest.raises(ConfigError, match=r"aux\.losses: each loss may appear once"):
        apply_overrides(RunConfig(), ["--aux.losses=[npair,npair]", "--aux.weights=[1,1]"])


def test_build_aux_losses_passes_hyper_parameters() -> None:
    cfg = AuxLossConfig(
        losses=["contrastive", "triplet", "center", "npair", "circle", "supcon"],
        weights=[1.0] * 6,
        contrastive_margin=0.7,
        triplet_margin=0.3,
        triplet_mining="semi_hard",
        center_alpha=0.2,
        npair_l2_reg=0.01,
        circle_m=0.4,
        circle_gamma=80.0,
        supcon_temperature=0.07,
    )
    losses = build_aux_losses(cfg, embedding_size=6, num_classes=9)
    assert list(losses) == cfg.losses
    assert losses["contrastive"].margin == 0.7
    assert (losses["triplet"].margin, losses["triplet"].mining) == (0.3, "semi_hard")
    assert losses["center"].centers.shape == (9, 6) and losses["center"].alpha == 0.2
    assert losses["npair"].l2_reg == 0.01
    assert (losses["circle"].m, losses["circle"].gamma) == (0.4, 80.0)
    assert losses["supcon"].temperature == 0.07
    assert len(build_aux_losses(AuxLossConfig(), 6, 9)) == 0


def test_weighted_sum_adds_weighted_parts() -> None:
    x, y = _batch(2)
    x = x.float().requires_grad_(True)

    def head(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (emb**2).mean() + labels.float().mean()

    cfg = AuxLossConfig(losses=["supcon", "triplet"], weights=[0.25, 2.0], head_weight=0.5)
    combined = WeightedSum.from_config(head, cfg, embedding_size=6, num_classes=8)
    total, parts = combined(x, y)
    assert set(parts) == {"head", "supcon", "triplet"}
    assert all(isinstance(p, torch.Tensor) for p in parts.values())
    torch.testing.assert_close(parts["supcon"], SupConLoss()(x, y))
    torch.testing.assert_close(parts["triplet"], TripletLoss()(x, y))
    want = 0.5 * head(x, y) + 0.25 * parts["supcon"] + 2.0 * parts["triplet"]
    torch.testing.assert_close(total, want)
    (g,) = torch.autograd.grad(total, x, retain_graph=True)
    (g_want,) = torch.autograd.grad(want, x)
    torch.testing.assert_close(g, g_want)
    with pytest.raises(ValueError, match="2 auxiliary losses but 1 weights"):
        WeightedSum(head, combined.losses, [1.0])
