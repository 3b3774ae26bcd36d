"""InsightFace's "IR" ResNets (iresnet18…200) and their squeeze-excitation variant (IR-SE).

Layout (arcface_torch ``backbones/iresnet.py``): a 3×3 stride-1 stem conv + BN + PReLU, four
stages of stride 2 (112 → 56 → 28 → 14 → 7) with widths 64, 128, 256, 512, then
BN2d → flatten → dropout → ``Linear(512·7·7, D)`` → BatchNorm1d whose weight is frozen at 1. A unit
is BN-conv3×3-BN-PReLU-conv3×3(stride)-BN plus the shortcut. Parameter names match InsightFace,
so its ``model.pt`` state dicts load as they are. IR-SE adds squeeze-excitation after the last
BN of each unit (the IR-SE of ArcFace's original MXNet code and face.evoLVe).
"""

from __future__ import annotations

import torch
from torch import nn

from dist_face.models.base import Backbone
from dist_face.models.registry import BACKBONES

#: Units per stage of each depth.
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
    200: (6, 26, 60, 6),
}
_WIDTHS = (64, 128, 256, 512)
_FINAL_SIDE = 7  # 112 / 2**4


class SqueezeExcite(nn.Module):
    """Channel gating: ``x · sigmoid(W2 · relu(W1 · avgpool(x)))``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Gate ``[B, C, H, W]`` features channel-wise."""
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))


class IBasicBlock(nn.Module):
    """IR unit: BN-conv-BN-PReLU-conv(stride)-BN [+ SE] + shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int, se: bool = False) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.se = SqueezeExcite(planes) if se else None
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes, eps=1e-5),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, inplanes, H, W]`` → ``[B, planes, H/stride, W/stride]``."""
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(Backbone):
    """InsightFace IResNet; see the module docstring for the layout."""

    def __init__(
        self,
        layers: tuple[int, int, int, int],
        se: bool = False,
        *,
        embedding_size: int = 512,
        dropout: float = 0.0,
        channels_last: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            embedding_size, channels_last=channels_last, grad_checkpointing=grad_checkpointing
        )
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        inplanes = 64
        for i, (width, units) in enumerate(zip(_WIDTHS, layers), start=1):
            blocks = [IBasicBlock(inplanes, width, 2, se)]
            blocks += [IBasicBlock(width, width, 1, se) for _ in range(units - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            inplanes = width
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(512 * _FINAL_SIDE * _FINAL_SIDE, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.1)
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # InsightFace freezes the embedding BN's scale: only its shift and statistics adapt.
        self.features.weight.requires_grad_(False)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 112, 112]`` → ``[B, 512·7·7]`` (before dropout)."""
        x = self.prelu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = self.run_block(block, x)
        return torch.flatten(self.bn2(x), 1)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, 512·7·7]`` → ``[B, D]``."""
        return self.features(self.fc(self.dropout(feats)))


def _register(name: str, depth: int, se: bool) -> None:
    def factory(**kwargs: object) -> IResNet:
        return IResNet(IRESNET_LAYERS[depth], se, **kwargs)  # type: ignore[arg-type]

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = f"{'IR-SE' if se else 'IR'}-ResNet-{depth} ({IRESNET_LAYERS[depth]} units)."
    BACKBONES.register(name)(factory)


for _depth in IRESNET_LAYERS:
    _register(f"iresnet{_depth}", _depth, se=False)
for _depth in (50, 100):
    _register(f"iresnet_se{_depth}", _depth, se=True)
