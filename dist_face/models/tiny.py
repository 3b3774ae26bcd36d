"""``tiny``: a deliberately small CNN for CPU smoke runs and the quickstart.

Same recipe as iresnet at a fraction of the width and depth: a 3×3 stride-2 stem (112 → 56),
three stages of two IR units whose first unit has stride 2 (56 → 28 → 14 → 7), widths 32, 48,
64, then BN2d → flatten → dropout → ``Linear(64·7·7, D)`` → BatchNorm1d. About 0.45 M parameters
at D = 64 and 90 MFLOPs per image: it trains for real on two CPU processes in minutes.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_face.models.base import Backbone
from dist_face.models.iresnet import IBasicBlock
from dist_face.models.registry import BACKBONES

_STEM = 24
_WIDTHS = (32, 48, 64)
_FINAL_SIDE = 7


class TinyNet(Backbone):
    """A two-units-per-stage IR network; see the module docstring."""

    def __init__(
        self,
        *,
        embedding_size: int = 512,
        dropout: float = 0.0,
        channels_last: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            embedding_size, channels_last=channels_last, grad_checkpointing=grad_checkpointing
        )
        self.stem = nn.Sequential(
            nn.Conv2d(3, _STEM, 3, 2, 1, bias=False), nn.BatchNorm2d(_STEM), nn.PReLU(_STEM)
        )
        blocks, c_in = [], _STEM
        for width in _WIDTHS:
            blocks += [IBasicBlock(c_in, width, 2), IBasicBlock(width, width, 1)]
            c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(c_in * _FINAL_SIDE * _FINAL_SIDE, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 112, 112]`` → ``[B, 64·7·7]``."""
        x = self.stem(x)
        for block in self.blocks:
            x = self.run_block(block, x)
        return torch.flatten(self.bn(x), 1)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """``[B, 64·7·7]`` → ``[B, D]``."""
        return self.features(self.fc(self.dropout(feats)))


@BACKBONES.register("tiny")
def tiny(**kwargs: object) -> TinyNet:
    """The small CPU network (see the module docstring)."""
    return TinyNet(**kwargs)  # type: ignore[arg-type]
