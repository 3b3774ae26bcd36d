"""MobileFaceNet for edge devices, as in arcface_torch ``backbones/mobilefacenet.py``.

A stride-2 stem (112 → 56), depthwise-separable bottlenecks down to 7×7, a 1×1 conv to 512
channels and the GDC head: a 7×7 depthwise linear block → flatten → ``Linear(512, D)`` →
BatchNorm1d. ``mbf`` uses blocks (1, 4, 6, 2) with width scale 2 (2,059,520 parameters at
D = 512); ``mbf_large`` uses (2, 8, 12, 4) with scale 4. Parameter names match InsightFace.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_face.models.base import Backbone
from dist_face.models.registry import BACKBONES


class ConvBlock(nn.Module):
    """Conv → BN → PReLU."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
            nn.PReLU(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return self.layers(x)


class LinearBlock(nn.Module):
    """Conv → BN, no activation (the linear bottleneck)."""

    def __init__(
        self,
        in_c: int,
        out_c: int,
        kernel: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        return self.layers(x)


class DepthWise(nn.Module):
    """Inverted bottleneck: 1×1 expand to ``groups`` → 3×3 depthwise (stride) → 1×1 project."""

    def __init__(self, in_c: int, out_c: int, residual: bool, stride: int, groups: int) -> None:
        super().__init__()
        self.residual = residual
        self.layers = nn.Sequential(
            ConvBlock(in_c, groups),
            ConvBlock(groups, groups, 3, stride, 1, groups=groups),
            LinearBlock(groups, out_c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the bottleneck, adding the input when residual."""
        out = self.layers(x)
        return x + out if self.residual else out


class Residual(nn.Module):
    """``num_block`` residual, stride-1 bottlenecks of width ``c``."""

    def __init__(self, c: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[DepthWise(c, c, True, 1, groups) for _ in range(num_block)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the bottlenecks in order."""
        return self.layers(x)


class GDC(nn.Module):
    """Global depthwise conv head: 7×7 depthwise → flatten → [dropout] → Linear → BN1d."""

    def __init__(self, embedding_size: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            LinearBlock(512, 512, kernel=7, groups=512),
            nn.Flatten(),
            nn.Linear(512, embedding_size, bias=False),
            nn.BatchNorm1d(embedding_size),
        )
        # Kept outside ``layers`` so the parameter names stay InsightFace's.
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 512, 7, 7]`` → ``[B, D]``."""
        x = self.layers[1](self.layers[0](x))
        return self.layers[3](self.layers[2](self.dropout(x)))


class MobileFaceNet(Backbone):
    """MobileFaceNet with a GDC head; see the module docstring."""

    def __init__(
        self,
        blocks: tuple[int, int, int, int] = (1, 4, 6, 2),
        scale: int = 2,
        *,
        embedding_size: int = 512,
        dropout: float = 0.0,
        channels_last: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            embedding_size, channels_last=channels_last, grad_checkpointing=grad_checkpointing
        )
        c1, c2 = 64 * scale, 128 * scale
        self.layers = nn.ModuleList([ConvBlock(3, c1, 3, 2, 1)])
        if blocks[0] == 1:
            self.layers.append(ConvBlock(c1, c1, 3, 1, 1, groups=64))
        else:
            self.layers.append(Residual(c1, blocks[0], groups=128))
        self.layers.extend(
            [
                DepthWise(c1, c1, False, 2, groups=128),
                Residual(c1, blocks[1], groups=128),
                DepthWise(c1, c2, False, 2, groups=256),
                Residual(c2, blocks[2], groups=256),
                DepthWise(c2, c2, False, 2, groups=512),
                Residual(c2, blocks[3], groups=256),
            ]
        )
        self.conv_sep = ConvBlock(c2, 512)
        self.features = GDC(embedding_size, dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 112, 112]`` → ``[B, 2·64·scale, 7, 7]``."""
        for layer in self.layers:
            x = self.run_block(layer, x)
        return x

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, 128·scale, 7, 7]`` → ``[B, D]`` (1×1 conv to 512, then GDC)."""
        return self.features(self.conv_sep(feats))


@BACKBONES.register("mbf")
def mbf(**kwargs: object) -> MobileFaceNet:
    """MobileFaceNet, blocks (1, 4, 6, 2), scale 2."""
    return MobileFaceNet((1, 4, 6, 2), 2, **kwargs)  # type: ignore[arg-type]


@BACKBONES.register("mbf_large")
def mbf_large(**kwargs: object) -> MobileFaceNet:
    """MobileFaceNet-large, blocks (2, 8, 12, 4), scale 4."""
    return MobileFaceNet((2, 8, 12, 4), 4, **kwargs)  # type: ignore[arg-type]
