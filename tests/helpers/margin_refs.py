"""Float64 references of AdaFace, MagFace, ElasticFace and sub-center ArcFace.

Written from the papers' formulas (and the official codes' guards, named where used), on the
full ``[N, C]`` logit matrix, without any code of ``dist_face.heads``: the sharded head is
tested against these. Each returns the mean loss over the batch, differentiable in ``x`` and
``w`` (float64 autograd gives the reference gradients).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _cosines(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` cosines; ``w`` ``[C, D]``, or ``[C, K, D]`` (max over the K sub-centers)."""
    xn = x / x.norm(dim=1, keepdim=True)
    wn = w / w.norm(dim=-1, keepdim=True)
    if w.dim() == 3:
        return torch.einsum("nd,ckd->nck", xn, wn).amax(dim=2).clamp(-1, 1)
    return (xn @ wn.T).clamp(-1, 1)


def _softmax_loss(cos: torch.Tensor, y: torch.Tensor, target: torch.Tensor, s: float):
    """Cross-entropy of ``s·cos`` with each row's target logit replaced by ``target`` [N]."""
    onehot = F.one_hot(y, cos.shape[1]).bool()
    logits = torch.where(onehot, target[:, None], s * cos)
    return F.cross_entropy(logits, y)


def adaface(x, w, y, mu, sigma, *, s=64.0, m=0.4, h=0.333, alpha=0.01, train=True):
    """AdaFace's loss and the updated ``(μ, σ)`` (Kim et al. 2022, Eq. 9–12).

    ``μ, σ`` EMA (momentum α) of the batch's mean and (unbiased) std of the norm, updated
    before use; norm clipped to [0.001, 100], ε = 1e-3 in the official code.
    """
    eps = 1e-3
    norm = x.detach().norm(dim=1).clamp(0.001, 100)
    if train:
        std = norm.std() if len(norm) > 1 else torch.zeros((), dtype=norm.dtype)
        mu = alpha * norm.mean() + (1 - alpha) * mu
        sigma = alpha * std + (1 - alpha) * sigma
    z = ((norm - mu) / (sigma + eps) * h).clamp(-1, 1)
    g_angle, g_add = -m * z, m + m * z
    cos = _cosines(x, w)
    theta = torch.acos(cos.gather(1, y[:, None])[:, 0].clamp(-1 + eps, 1 - eps))
    target = s * (torch.cos((theta + g_angle).clamp(eps, math.pi - eps)) - g_add)
    return _softmax_loss(cos, y, target, s), mu, sigma


def magface(x, w, y, *, s=64.0, la=10.0, ua=110.0, lm=0.45, um=0.8, lam=35.0):
    """MagFace's loss (Meng et al. 2021, Eq. 4 and 5): ArcFace with m(a) plus λ_g·g(a).

    ``cos(θ + m)`` with insightface's fallback past ``θ > π − m`` (``cos θ − m·sin m``).
    """
    a = x.norm(dim=1).clamp(la, ua)
    m = (um - lm) / (ua - la) * (a - la) + lm
    cos = _cosines(x, w)
    c = cos.gather(1, y[:, None])[:, 0]
    theta = torch.acos(c.clamp(-1 + 1e-12, 1 - 1e-12))
    phi = torch.where(theta + m < math.pi, torch.cos(theta + m), c - m * torch.sin(m))
    g = a / ua**2 + 1 / a
    return _softmax_loss(cos, y, s * phi, s) + lam * g.mean()


def elastic_assign(draws: torch.Tensor, target_cos: torch.Tensor) -> torch.Tensor:
    """ElasticFace+: the k-th hardest row (k-th smallest target cosine) gets the k-th largest
    draw (Boutros et al. 2022, Sec. 3.3), written as a loop over ranks."""
    out = torch.empty_like(draws)
    hardest_first = sorted(range(len(draws)), key=lambda i: (float(target_cos[i]), i))
    largest_first = sorted(draws.tolist(), reverse=True)
    for k, row in enumerate(hardest_first):
        out[row] = largest_first[k]
    return out


def elastic(x, w, y, margins, *, s=64.0, arc=True, plus=False):
    """ElasticFace (Eq. 4 and 5): target ``s cos(θ + m_i)`` or ``s (cos θ − m_i)``."""
    cos = _cosines(x, w)
    c = cos.gather(1, y[:, None])[:, 0]
    if plus:
        margins = elastic_assign(margins, c.detach())
    margins = margins.to(x.dtype)
    if arc:
        target = s * torch.cos(torch.acos(c.clamp(-1 + 1e-7, 1 - 1e-7)) + margins)
    else:
        target = s * (c - margins)
    return _softmax_loss(cos, y, target, s)


def subcenter(x, w, y, *, s=64.0, m=0.5):
    """Sub-center ArcFace (Deng et al. 2020, Eq. 2): ArcFace on ``max_k cos(x, w_{j,k})``,
    with insightface's fallback past ``θ > π − m``."""
    cos = _cosines(x, w)
    c = cos.gather(1, y[:, None])[:, 0]
    theta = torch.acos(c.clamp(-1 + 1e-12, 1 - 1e-12))
    phi = torch.where(theta + m < math.pi, torch.cos(theta + m), c - m * math.sin(m))
    return _softmax_loss(cos, y, s * phi, s)
