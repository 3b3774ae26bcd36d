"""AdaFace, MagFace, ElasticFace and sub-center ArcFace on one device: names, defaults, state.

The multi-rank parity against float64 references is tests/dist/test_adaptive_margins.py.
"""

from __future__ import annotations

import argparse
import math

import pytest
import torch
import yaml

from dist_face.config import describe
from dist_face.heads import PartialFC
from dist_face.heads.margins.adaface import AdaFace
from dist_face.heads.margins.elastic import ElasticArc, ElasticCosPlus, assign_by_difficulty
from dist_face.heads.margins.subcenter import SubCenterArcFace
from tests.unit.test_margin_defaults import PAPER

# The papers' values as --print-config shows them: the adaptive margins' rows of the table the
# built modules are checked against (test_margin_defaults.py), independent of the signatures.
NEW = {
    name: PAPER[name]
    for name in (
        "adaface",
        "magface",
        "elasticface_arc",
        "elasticface_cos",
        "elasticface_arc_plus",
        "elasticface_cos_plus",
        "subcenter_arcface",
    )
}


@pytest.mark.parametrize("name", sorted(NEW))
def test_print_config_shows_the_papers_defaults(name: str, capsys) -> None:
    args = argparse.Namespace(config="ms1mv3_r50", print_config=True, help_config=None)
    assert describe.run_info(args, [f"--head.margin={name}"]) == 0
    head = yaml.safe_load(capsys.readouterr().out)["head"]["margin_args"]
    assert {k: head[k] for k in NEW[name]} == pytest.approx(NEW[name])


def test_subcenter_matches_pytorch_metric_learning() -> None:
    from pytorch_metric_learning import losses as pml  # the dev extra: never skipped

    c, d, k, n = 7, 16, 3, 24
    gen = torch.Generator().manual_seed(0)
    ref = pml.SubCenterArcFaceLoss(
        num_classes=c, embedding_size=d, margin=math.degrees(0.5), scale=16.0, sub_centers=k
    ).double()
    head = PartialFC(d, c, SubCenterArcFace(16.0, 0.5, k), grad_scale_for_dp_average=False)
    with torch.no_grad():  # PML's W is [D, C·K], class-major: the head's [C, K, D] transposed
        head.weight.copy_(ref.W.detach().T.reshape(c, k, d))
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=gen)
    xr = x.clone().requires_grad_(True)
    expected = ref(xr, y)
    expected.backward()
    # PML has no fallback past θ > π − m: the data must not reach it
    xn, wn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(ref.W.T, dim=1)
    target = (xn @ wn.T).view(n, c, k).amax(2).gather(1, y[:, None])
    assert bool((torch.acos(target) + 0.5 < math.pi).all())
    xh = x.float().requires_grad_(True)
    loss = head(xh, y)
    loss.backward()
    torch.testing.assert_close(loss.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xh.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)
    w_grad = ref.W.grad.T.reshape(c, k, d)
    scale = float(w_grad.abs().max())
    torch.testing.assert_close(head.weight.grad.double(), w_grad, rtol=1e-4, atol=1e-5 * scale)


def _draws(margin, steps: int, rows: int = 6) -> list[torch.Tensor]:
    out = []
    for _ in range(steps):
        margin.begin_step(None, torch.ones(rows))
        out.append(margin.margins().clone())
    return out


def test_elastic_draw_is_deterministic_per_seed_and_step_and_resumable() -> None:
    first = _draws(ElasticArc(seed=3), 4)
    assert all(torch.equal(a, b) for a, b in zip(first, _draws(ElasticArc(seed=3), 4)))
    assert not torch.equal(first[0], first[1])  # redrawn every step
    assert not torch.equal(first[0], _draws(ElasticArc(seed=4), 1)[0])
    stats = torch.cat(_draws(ElasticArc(seed=0), 200, rows=50))
    assert float(stats.mean()) == pytest.approx(0.5, abs=0.002)
    assert float(stats.std()) == pytest.approx(0.05, rel=0.03)
    # resume: a fresh margin loaded from step 2's state draws steps 2 and 3
    run = ElasticArc(seed=3)
    _draws(run, 2)
    resumed = ElasticArc(seed=3)
    resumed.load_state_dict(run.state_dict())
    later = _draws(resumed, 2)
    assert torch.equal(later[0], first[2]) and torch.equal(later[1], first[3])
    # evaluation neither advances the step nor changes the draw
    resumed.eval()
    assert torch.equal(_draws(resumed, 2)[1], _draws(resumed, 1)[0])


def test_elastic_plus_gives_the_largest_margin_to_the_hardest_row() -> None:
    draws = torch.tensor([0.3, 0.5, 0.4, 0.2])
    cos = torch.tensor([0.9, -0.2, 0.5, 0.1])
    assert assign_by_difficulty(draws, cos).tolist() == pytest.approx([0.2, 0.5, 0.3, 0.4])
    margin = ElasticCosPlus(seed=1)
    margin.begin_step(cos, torch.ones(4))
    got = margin.margins()
    assert torch.equal(torch.argsort(got), torch.argsort(-cos))


def test_adaface_statistics_update_in_training_only() -> None:
    margin = AdaFace(momentum=0.5)
    norms = torch.tensor([10.0, 20.0, 30.0])
    margin.begin_step(None, norms)
    assert float(margin.batch_mean) == pytest.approx(0.5 * 20 + 0.5 * 20)
    assert float(margin.batch_std) == pytest.approx(0.5 * 10 + 0.5 * 100)
    margin.eval()
    before = margin.state_dict()
    margin.begin_step(None, norms * 3)
    assert all(torch.equal(v, margin.state_dict()[k]) for k, v in before.items())
    # a batch of one row has no spread: the statistics stay finite
    AdaFace().begin_step(None, torch.tensor([5.0]))
