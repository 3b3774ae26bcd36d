"""Vision transformers for 112×112 faces, as in arcface_torch ``backbones/vit.py``.

A 9×9 stride-9 patch embedding gives 12×12 = 144 tokens (the last 4 pixel rows and columns are
not covered), plus a learned position embedding and no class token. Pre-norm blocks (LayerNorm,
multi-head attention, GELU MLP, stochastic depth), a final LayerNorm, then the head
``Linear(embed·144 → embed)`` → BN1d → ``Linear(embed → D)`` → BN1d. In training, a fraction
``mask_ratio`` of each image's patches is dropped before the blocks and refilled with a learned
mask token before the head. Attention logits and softmax are computed in fp32 even under
autocast. Parameter names match InsightFace.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dist_face.models.base import INPUT_SIZE, Backbone
from dist_face.models.registry import BACKBONES

PATCH_SIZE = 9
NUM_PATCHES = (INPUT_SIZE // PATCH_SIZE) ** 2  # 144


class DropPath(nn.Module):
    """Stochastic depth: zero a sample's residual branch with probability ``p`` in training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale kept samples by ``1/(1-p)`` so the expectation is unchanged."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


def drop_path_rates(max_rate: float, depth: int) -> list[float]:
    """Stochastic-depth rates rising linearly from 0 (first block) to ``max_rate`` (last)."""
    return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


class Attention(nn.Module):
    """Multi-head self-attention with an fp32 softmax."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` → ``[B, N, C]``."""
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).float().unbind(0)
        # fp16 attention logits overflow on long training runs; InsightFace forces fp32 here.
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c).to(x.dtype))


class Mlp(nn.Module):
    """Linear → GELU → Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` → ``[B, N, C]``."""
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, C]`` → ``[B, N, C]``."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping 9×9 patches → tokens."""

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, PATCH_SIZE, PATCH_SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 112, 112]`` → ``[B, 144, embed_dim]``."""
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(Backbone):
    """ViT for faces; see the module docstring."""

    def __init__(
        self,
        embed_dim: int,
        depth: int,
        num_heads: int,
        *,
        embedding_size: int = 512,
        dropout: float = 0.0,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        mask_ratio: float = 0.1,
        channels_last: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            embedding_size, channels_last=channels_last, grad_checkpointing=grad_checkpointing
        )
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.embed_dim = embed_dim
        self.mask_ratio = mask_ratio
        self.patch_embed = PatchEmbed(embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, NUM_PATCHES, embed_dim))
        rates = drop_path_rates(drop_path, depth)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.dropout = nn.Dropout(p=dropout)
        self.feature = nn.Sequential(
            nn.Linear(embed_dim * NUM_PATCHES, embed_dim, bias=False),
            nn.BatchNorm1d(embed_dim, eps=2e-5),
            nn.Linear(embed_dim, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size, eps=2e-5),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 112, 112]`` → ``[B, 144, embed_dim]`` (masked patches refilled)."""
        x = self.patch_embed(x) + self.pos_embed
        restore = None
        if self.training and self.mask_ratio > 0:
            x, restore = _drop_patches(x, self.mask_ratio)
        for block in self.blocks:
            x = self.run_block(block, x)
        x = self.norm(x.to(self.norm.weight.dtype))  # fp32 unless the network is in half
        if restore is not None:
            fill = self.mask_token.expand(x.shape[0], restore.shape[1] - x.shape[1], -1)
            x = torch.cat([x, fill.to(x.dtype)], dim=1)
            x = torch.gather(x, 1, restore.unsqueeze(-1).expand(-1, -1, x.shape[2]))
        return x

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, 144, embed_dim]`` → ``[B, D]``."""
        return self.feature(self.dropout(feats.flatten(1)))


def _drop_patches(x: torch.Tensor, ratio: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep a random ``1 - ratio`` of each sample's tokens.

    Args:
        x: ``[B, N, C]`` tokens.
        ratio: fraction of tokens to drop.

    Returns:
        The kept tokens ``[B, K, C]`` and ``restore [B, N]``: the index into
        ``cat(kept, dropped)`` of each original position.
    """
    b, n, c = x.shape
    keep = int(n * (1.0 - ratio))
    order = torch.argsort(torch.rand(b, n, device=x.device), dim=1)
    restore = torch.argsort(order, dim=1)
    kept = torch.gather(x, 1, order[:, :keep].unsqueeze(-1).expand(-1, -1, c))
    return kept, restore


def _vit(embed_dim: int, depth: int, num_heads: int, kwargs: dict) -> VisionTransformer:
    return VisionTransformer(embed_dim, depth, num_heads, **kwargs)


@BACKBONES.register("vit_t")
def vit_t(**kwargs: object) -> VisionTransformer:
    """ViT-T: width 256, depth 12, 8 heads."""
    return _vit(256, 12, 8, kwargs)


@BACKBONES.register("vit_s")
def vit_s(**kwargs: object) -> VisionTransformer:
    """ViT-S: width 512, depth 12, 8 heads."""
    return _vit(512, 12, 8, kwargs)


@BACKBONES.register("vit_b")
def vit_b(**kwargs: object) -> VisionTransformer:
    """ViT-B (InsightFace's): width 512, depth 24, 8 heads."""
    return _vit(512, 24, 8, kwargs)
