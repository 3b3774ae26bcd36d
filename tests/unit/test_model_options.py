"""Backbone options checked against a reference run: checkpointing, channels-last, autocast,
dropout, ViT patch masking, torch.compile, building from the config, and that tiny learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dist_face.models as M
from dist_face.config.schema import ModelConfig
from dist_face.models.vit import _drop_patches


def _batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 112, 112, generator=g) * 2 - 1


def _grads(model: torch.nn.Module, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, list]:
    torch.manual_seed(seed)  # same drop-path / masking draws in both runs
    out = model(x)
    out.square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", ["tiny", "mbf", "iresnet18", "vit_t"])
def test_grad_checkpointing_gives_the_same_gradients(name: str) -> None:
    torch.manual_seed(0)
    plain = M.create(name, embedding_size=64)
    ckpt = M.create(name, embedding_size=64, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    blocks = {"IBasicBlock", "Block", "ConvBlock"}
    first_block = next(m for m in ckpt.modules() if type(m).__name__ in blocks)
    first_block.register_forward_pre_hook(lambda *_: calls.append(1))
    x = _batch()
    out_p, g_p = _grads(plain, x, seed=1)
    out_c, g_c = _grads(ckpt, x, seed=1)
    assert len(calls) == 2  # forward, then recomputed in backward: checkpointing is active
    torch.testing.assert_close(out_c, out_p)
    assert len(g_c) == len(g_p)
    for a, b in zip(g_c, g_p):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["tiny", "mbf", "convnext_t"])
def test_channels_last_matches_contiguous(name: str) -> None:
    torch.manual_seed(0)
    ref = M.create(name, embedding_size=64).eval()
    cl = M.create(name, embedding_size=64, channels_last=True).eval()
    cl.load_state_dict(ref.state_dict())
    conv = next(m for m in cl.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = _batch()
    with torch.no_grad():
        torch.testing.assert_close(cl(x), ref(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny", "mbf", "vit_t"])
def test_autocast_bf16_returns_fp32_close_to_fp32(name: str) -> None:
    torch.manual_seed(0)
    model = M.create(name, embedding_size=64)
    x = _batch(4)
    model(x)  # one training step's statistics so that eval mode is well conditioned
    model.eval()
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.float32
    assert F.cosine_similarity(low, ref).min() > 0.98


def test_dropout_is_active_in_training_only() -> None:
    torch.manual_seed(0)
    model = M.create("tiny", embedding_size=64, dropout=0.5)
    x = _batch(4)
    assert not torch.allclose(model(x), model(x))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_drop_patches_restores_every_kept_token_in_place() -> None:
    x = torch.randn(3, 144, 8)
    kept, restore = _drop_patches(x, 0.25)
    assert kept.shape == (3, 108, 8)
    fill = torch.full((3, 36, 8), float("nan"))
    back = torch.gather(torch.cat([kept, fill], 1), 1, restore.unsqueeze(-1).expand(-1, -1, 8))
    dropped = back.isnan().all(-1)
    assert (dropped.sum(1) == 36).all()
    torch.testing.assert_close(back[~dropped], x[~dropped])


def test_vit_masks_only_in_training() -> None:
    torch.manual_seed(0)
    model = M.create("vit_t", embedding_size=64, mask_ratio=0.5, drop_path=0.0)
    x = _batch(2)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)  # different patches dropped
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))


def test_tiny_compiles_without_graph_breaks() -> None:
    # aot_eager traces forward and backward like inductor does, without the minute of C++
    # compilation inductor needs on two cores (inductor was checked by hand: same output).
    torch.manual_seed(0)
    model = M.create("tiny", embedding_size=64)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = _batch()
    torch.testing.assert_close(compiled(x), model(x))
    compiled(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_build_backbone_follows_the_config() -> None:
    model = M.build_backbone(ModelConfig(name="vit_t", embedding_size=32, mask_ratio=0.3))
    assert model.embedding_size == 32 and model.mask_ratio == 0.3
    model = M.build_backbone(ModelConfig(name="tiny", embedding_size=16, grad_checkpointing=True))
    assert model.grad_checkpointing and model(_batch()).shape == (2, 16)


def test_tiny_learns_to_separate_classes() -> None:
    # Four classes of noisy images with class-specific patterns: loss must fall well below
    # ln 4 within a few SGD steps, or the network cannot train.
    torch.manual_seed(0)
    protos = torch.rand(4, 3, 112, 112) * 2 - 1
    model = M.create("tiny", embedding_size=32)
    head = torch.nn.Linear(32, 4)
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    losses = []
    for _ in range(10):
        y = torch.randint(0, 4, (8,))
        x = (protos[y] + 0.5 * torch.randn(8, 3, 112, 112)).clamp(-1, 1)
        loss = F.cross_entropy(head(model(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.0 and sum(losses[-3:]) / 3 < 0.5, losses
