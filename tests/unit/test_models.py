"""Backbone registry, parameter counts and a forward/backward of every registered backbone."""

from __future__ import annotations

import pytest
import torch

import dist_face.models as M

# InsightFace arcface_torch parameter counts at D = 512 (frozen embedding-BN weight included).
INSIGHTFACE_PARAMS = {
    "iresnet18": 24_025_600,
    "iresnet34": 34_139_328,
    "iresnet50": 43_590_848,
    "iresnet100": 65_156_160,
    "iresnet200": 118_833_920,
    "mbf": 2_059_520,
}
EXPECTED = {
    "convnext_s",
    "convnext_t",
    "iresnet_se50",
    "iresnet_se100",
    "mbf_large",
    "tiny",
    "vit_t",
    "vit_s",
    "vit_b",
    *INSIGHTFACE_PARAMS,
}


def test_every_family_is_registered() -> None:
    assert set(M.names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(INSIGHTFACE_PARAMS))
def test_parameter_count_matches_insightface(name: str) -> None:
    with torch.device("meta"):  # counting needs no memory and no init
        model = M.create(name)
    assert M.count_parameters(model) == INSIGHTFACE_PARAMS[name]


def test_tiny_is_small_and_vit_head_is_insightface_shaped() -> None:
    with torch.device("meta"):
        tiny = M.create("tiny", embedding_size=64)
        vit = M.create("vit_s", embedding_size=256)
    assert 200_000 <= M.count_parameters(tiny) <= 1_000_000
    # Linear(embed·144 → embed), BN1d, Linear(embed → D), BN1d, with patch 9 → 144 tokens.
    shapes = [tuple(p.shape) for p in vit.feature.parameters()]
    assert shapes == [(512, 512 * 144), (512,), (512,), (256, 512), (256,), (256,)]
    assert tuple(vit.pos_embed.shape) == (1, 144, 512)


def test_iresnet_keys_follow_insightface() -> None:
    with torch.device("meta"):
        model = M.create("iresnet50")
    keys = set(model.state_dict())
    for key in (
        "conv1.weight",
        "prelu.weight",
        "layer1.0.bn1.running_mean",
        "layer1.0.downsample.0.weight",
        "layer3.13.conv2.weight",
        "bn2.weight",
        "fc.weight",
        "features.num_batches_tracked",
    ):
        assert key in keys, key
    assert tuple(model.fc.weight.shape) == (512, 512 * 7 * 7)
    assert not model.features.weight.requires_grad  # frozen at 1, as in InsightFace


# Deep variants of a family whose lighter member is trained below (same classes, more units).
# On 2 shared CPU cores their backward alone takes 5-30 s, so they run a forward only, in
# training mode: with untrained running statistics, eval mode overflows through 100+ units.
HEAVY = {"iresnet100", "iresnet200", "iresnet_se100", "convnext_s", "vit_s", "vit_b"}


@pytest.mark.parametrize("name", sorted(EXPECTED - HEAVY))
def test_forward_backward_is_finite(name: str) -> None:
    torch.manual_seed(0)
    model = M.create(name, embedding_size=128)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    out = model(x)
    assert out.shape == (2, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", sorted(HEAVY))
def test_heavy_forward_is_finite(name: str) -> None:
    torch.manual_seed(0)
    model = M.create(name, embedding_size=128)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 112, 112) * 2 - 1)
    assert out.shape == (2, 128) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0


def test_create_errors_name_the_problem() -> None:
    with pytest.raises(KeyError, match=r"unknown backbone 'resnet9'; known: convnext_s"):
        M.create("resnet9")
    with pytest.raises(TypeError, match=r"backbone 'tiny'.*mask_ratio.*it takes \['channels_last'"):
        M.create("tiny", mask_ratio=0.1)
    with pytest.raises(ValueError, match="embedding_size must be > 0"):
        M.create("tiny", embedding_size=0)
    with pytest.raises(ValueError, match="mask_ratio must be in"):
        M.create("vit_t", mask_ratio=1.0)


def test_wrong_input_shape_is_a_clear_error() -> None:
    model = M.create("tiny")
    with pytest.raises(
        ValueError, match=r"expects a \[B, 3, 112, 112\] batch, got \[2, 3, 96, 96\]"
    ):
        model(torch.zeros(2, 3, 96, 96))


@pytest.mark.parametrize("name", ["tiny", "mbf", "iresnet18", "convnext_t", "vit_t"])
def test_whole_network_in_bf16(name: str) -> None:
    # DeepSpeed's bf16 mode casts every parameter and buffer; nothing may force fp32 inputs
    # onto bf16 weights (the fp32 embedding head and ViT's fp32 attention adapt to the dtype)
    torch.manual_seed(0)
    model = M.create(name, embedding_size=128).to(torch.bfloat16)
    with torch.no_grad():
        out = model((torch.rand(2, 3, 112, 112) * 2 - 1).to(torch.bfloat16))
    assert out.shape == (2, 128) and out.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()


def test_the_tiny_backbones_stated_sizes_are_measured() -> None:
    """Every page states the ``tiny`` backbone's size with its embedding size, as measured."""
    import re
    from pathlib import Path

    from dist_face.models import create

    root = Path(__file__).resolve().parents[2]
    measured = {
        d: sum(p.numel() for p in create("tiny", embedding_size=d).parameters())
        for d in (64, 128, 512)
    }
    training = (root / "docs" / "training.md").read_text()
    sentence = " ".join(training[training.index("- `tiny`: ") :].split("\n\n")[0].split())
    for d, n in measured.items():
        assert re.search(rf"{n / 1e6:.2f} M(?: parameters)? at D = {d}\b", sentence), (d, n)
    assert f"| tiny | {measured[512]:,} | {measured[512] / 1e6:.2f} |" in training
    started = (root / "docs" / "getting-started.md").read_text()
    assert f"`tiny` at D = 128, {measured[128] / 1e6:.2f} M params" in started
