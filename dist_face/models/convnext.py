"""ConvNeXt-style networks for 112×112 faces.

ConvNeXt (Liu et al., 2022) patchifies 224×224 images with a 4×4 stride-4 stem and ends at 7×7.
For 112×112 faces the stem is 2×2 stride 2 instead, so the four stages still run at 56, 28, 14
and 7 pixels and cost about what ConvNeXt costs at 224. Blocks: 7×7 depthwise conv → LayerNorm
→ Linear(4×) → GELU → Linear → layer scale → stochastic depth + residual. Like iresnet, the head
keeps the spatial layout (faces are aligned, so position matters): LayerNorm → flatten → dropout
→ ``Linear(C·7·7, D)`` → BatchNorm1d.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from dist_face.models.base import Backbone
from dist_face.models.registry import BACKBONES
from dist_face.models.vit import DropPath, drop_path_rates

_FINAL_SIDE = 7  # 112 / 2 (stem) / 2**3 (downsamples)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, H, W]`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize each pixel's channel vector."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7×7 → LN → MLP(4×, GELU) → layer scale, plus the residual."""

    def __init__(self, dim: int, drop_path: float, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` → ``[B, C, H, W]``."""
        y = self.dwconv(x).permute(0, 2, 3, 1)  # the MLP runs on channels-last rows
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXt(Backbone):
    """ConvNeXt for faces; see the module docstring."""

    def __init__(
        self,
        depths: tuple[int, int, int, int],
        dims: tuple[int, int, int, int],
        *,
        embedding_size: int = 512,
        dropout: float = 0.0,
        drop_path: float = 0.1,
        channels_last: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            embedding_size, channels_last=channels_last, grad_checkpointing=grad_checkpointing
        )
        self.downsample = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(3, dims[0], 2, 2), LayerNorm2d(dims[0], eps=1e-6))]
        )
        for c_in, c_out in itertools.pairwise(dims):
            self.downsample.append(
                nn.Sequential(LayerNorm2d(c_in, eps=1e-6), nn.Conv2d(c_in, c_out, 2, 2))
            )
        rates = iter(drop_path_rates(drop_path, sum(depths)))
        self.stages = nn.ModuleList(
            nn.Sequential(*[ConvNeXtBlock(dim, next(rates)) for _ in range(depth)])
            for depth, dim in zip(depths, dims)
        )
        self.norm = LayerNorm2d(dims[-1], eps=1e-6)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(dims[-1] * _FINAL_SIDE * _FINAL_SIDE, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 112, 112]`` → ``[B, C·7·7]``."""
        for down, stage in zip(self.downsample, self.stages):
            x = down(x)
            for block in stage:
                x = self.run_block(block, x)
        return torch.flatten(self.norm(x), 1)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, C·7·7]`` → ``[B, D]``."""
        return self.features(self.fc(self.dropout(feats)))


@BACKBONES.register("convnext_t")
def convnext_t(**kwargs: object) -> ConvNeXt:
    """ConvNeXt-T widths (96, 192, 384, 768), depths (3, 3, 9, 3)."""
    return ConvNeXt((3, 3, 9, 3), (96, 192, 384, 768), **kwargs)  # type: ignore[arg-type]


@BACKBONES.register("convnext_s")
def convnext_s(**kwargs: object) -> ConvNeXt:
    """ConvNeXt-S widths (96, 192, 384, 768), depths (3, 3, 27, 3)."""
    return ConvNeXt((3, 3, 27, 3), (96, 192, 384, 768), **kwargs)  # type: ignore[arg-type]
