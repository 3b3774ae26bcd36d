"""The head without a process group: numerics, input errors, sampling state, checkpoints, config."""

from __future__ import annotations

import pytest
import torch

from dist_face.config import ConfigError, RunConfig, apply_overrides
from dist_face.config.schema import HeadConfig
from dist_face.heads import MARGINS, MarginHead, PartialFC, build_head
from dist_face.heads.sharded.fused_loss import _exp_shifted
from dist_face.heads.sharded.sampling import init_class_centers, sample_classes
from dist_face.heads.sharded.shard_io import rows_from_shards

C, D = 11, 6


@pytest.mark.parametrize("name", MARGINS.names())
def test_one_device_head_equals_reference(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, D, generator=gen, dtype=torch.float64)
    y = torch.randint(0, C, (7,), generator=gen)
    head, ref = PartialFC(D, C, name).double(), MarginHead(D, C, name).double()
    xh, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    head(xh, y).backward()
    ref(xr, y).backward()
    torch.testing.assert_close(xh.grad, xr.grad)
    torch.testing.assert_close(head.weight.grad, ref.weight.grad)


def test_softmax_terms_far_below_the_max_stay_exact_and_never_subnormal() -> None:
    """At s = 64 a logit can sit 128 below its row's max: ``exp`` of it is subnormal, which
    x86 CPUs compute 35× slower. The head floors those terms at ``e · tiny`` (float32): the
    loss and gradients still equal the float64 reference."""
    ref = MarginHead(D, C, "normface").double()
    w = ref.weight.detach()
    x = torch.stack([w[0], -w[0], w[5]]).float() * 3  # cos 1 and -1 with class 0's center
    y = torch.tensor([0, 1, 5])
    head = PartialFC(D, C, "normface")
    with torch.no_grad():
        head.weight.copy_(w.float())
    xh, xr = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    loss = head(xh, y)
    loss.backward()
    ref(xr, y).backward()
    torch.testing.assert_close(loss.double(), ref(xr.detach(), y))
    torch.testing.assert_close(xh.grad.double(), xr.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weight.grad.double(), ref.weight.grad, rtol=1e-4, atol=1e-6)
    terms = _exp_shifted(torch.tensor([[0.0, -50.0, -90.0, -200.0]]), torch.zeros(1))
    assert torch.equal(terms[0, :2], torch.exp(torch.tensor([0.0, -50.0])))
    assert terms.min() >= torch.finfo(torch.float32).tiny  # a normal float, not 0 or subnormal


@pytest.mark.parametrize("name", MARGINS.names())
def test_degenerate_inputs_stay_finite(name: str) -> None:
    head = PartialFC(D, C, name)
    x = torch.randn(6, D)
    x[0] = 0.0  # zero embedding
    w = head.weight.detach().view(C, -1, D)[:, 0]  # the first of a class's sub-centers
    x[1] = w[3] * 5  # cos θ = 1 exactly with its own center
    x[2] = -w[4]  # cos θ = -1 with its own center
    x = x.requires_grad_(True)
    y = torch.tensor([2, 3, 4, 4, 4, 0])  # duplicates
    loss = head(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("name", ["arcface", "cosface", "uniface", "curricularface"])
def test_low_precision_autocast_keeps_loss_in_float32(name: str) -> None:
    head = PartialFC(D, C, name)
    x = torch.randn(8, D)
    y = torch.randint(0, C, (8,))
    expected = head(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = head(x.bfloat16(), y)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # bf16 GEMM: cosines to ~3 digits, times s = 64
    torch.testing.assert_close(loss, expected, rtol=0.05, atol=0.5)


def test_bad_inputs_are_named() -> None:
    head = PartialFC(D, C, "arcface")
    with pytest.raises(ValueError, match=r"embeddings: expected \[B, 6\]"):
        head(torch.randn(3, D + 1), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels: expected shape \[3\]"):
        head(torch.randn(3, D), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"labels: expected an integer dtype"):
        head(torch.randn(3, D), torch.zeros(3))
    with pytest.raises(ValueError, match=r"labels: value 11 \(rank 0, row 1\) is outside"):
        head(torch.randn(3, D), torch.tensor([0, 11, 2]))
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(D, C, "arcface", sample_rate=1.5)


def test_sampling_keeps_positives_and_is_reproducible() -> None:
    labels = torch.tensor([3, -1, 7, 3, -1])
    gen = torch.Generator().manual_seed(0)
    index, remapped = sample_classes(labels, 20, 6, gen)
    assert len(index) == 6 and {3, 7} <= set(index.tolist())
    assert torch.equal(index, index.sort().values)
    owned = labels >= 0
    assert torch.equal(index[remapped[owned]], labels[owned])
    assert (remapped[~owned] == -1).all()
    # more positives than the budget: positives only
    index, _ = sample_classes(torch.tensor([1, 5, 9]), 20, 2, gen)
    assert index.tolist() == [1, 5, 9]


def test_sampler_state_travels_in_state_dict() -> None:
    head = PartialFC(D, 100, "cosface", sample_rate=0.1, seed=3)
    x, y = torch.randn(4, D), torch.tensor([1, 2, 3, 4])
    head(x, y)
    state = {k: v.clone() if torch.is_tensor(v) else v for k, v in head.state_dict().items()}
    head(x, y)
    second = head.last_sampled.clone()
    other = PartialFC(D, 100, "cosface", sample_rate=0.1, seed=99)
    other.load_state_dict(state)
    other(x, y)
    assert torch.equal(other.last_sampled, second)
    assert len(second) == 10


def test_centers_do_not_depend_on_the_split() -> None:
    full = init_class_centers(0, 9000, 4, seed=2)
    torch.testing.assert_close(init_class_centers(4000, 8193, 4, seed=2), full[4000:8193])
    assert not torch.equal(init_class_centers(0, 10, 4, seed=3), full[:10])


def test_export_and_load_full() -> None:
    head = PartialFC(D, C, "softmax")
    full_w, full_b = torch.randn(C, D), torch.randn(C)
    head.load_full(full_w, full_b)
    shard = head.export_shard()
    assert (shard["class_start"], shard["class_end"], shard["world_size"]) == (0, C, 1)
    torch.testing.assert_close(shard["weight"], full_w)
    torch.testing.assert_close(shard["bias"], full_b)
    with pytest.raises(ValueError, match=r"full weight: expected \[11, 6\]"):
        head.load_full(torch.randn(C + 1, D), full_b)


def test_rows_from_shards_rejects_gaps() -> None:
    shards = [
        {"class_start": 0, "class_end": 4, "weight": torch.zeros(4, 2)},
        {"class_start": 6, "class_end": 9, "weight": torch.ones(3, 2)},
    ]
    assert rows_from_shards(shards, "weight", 6, 8).sum() == 4
    with pytest.raises(ValueError, match=r"classes \[4, 6\) uncovered"):
        rows_from_shards(shards, "weight", 2, 8)


def test_no_weight_decay_names_biases() -> None:
    assert PartialFC(D, C, "uniface").no_weight_decay() == {"margin.bias"}
    assert PartialFC(D, C, "softmax").no_weight_decay() == {"bias"}
    assert PartialFC(D, C, "arcface").no_weight_decay() == set()
    names = dict(PartialFC(D, C, "uniface").named_parameters())
    assert "margin.bias" in names


def test_build_head_from_config() -> None:
    cfg = apply_overrides(
        RunConfig(), ["--head.margin=cosface", "--head.margin_args.margin=0.35"]
    ).head
    head = build_head(cfg, D, C)
    assert head.margin.margin == 0.35 and head.margin.scale == 64.0
    arc = build_head(
        HeadConfig(margin_args={"straight_through": True, "easy_margin": True}), D, C
    ).margin
    assert arc.straight_through and arc.easy_margin and arc.margin == 0.5
    sphere = build_head(
        HeadConfig(margin="sphereface", margin_args={"m": 4, "lambda_min": 2.0}), D, C
    ).margin
    assert sphere.m == 4 and sphere.lambda_min == 2.0
    with pytest.raises(ConfigError, match=r"head\.margin: unknown margin 'arcfce'"):
        build_head(HeadConfig(margin="arcfce"), D, C)
    with pytest.raises(ConfigError, match=r"head\.margin_args\.m: must be int, got 1\.5"):
        apply_overrides(RunConfig(), ["--head.margin=sphereface", "--head.margin_args.m=1.5"])
