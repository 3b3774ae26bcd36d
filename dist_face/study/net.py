"""The loss study's backbone: a small CNN on 32×32 faces, the same for every loss."""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.PReLU(c_out)
    )


class StudyNet(nn.Module):
    """Three stride-2 3×3 conv stages (32 → 16 → 8 → 4 px), then ``Linear → BatchNorm1d``.

    About 0.1 M parameters and 1.2 M multiply-adds per image; the embedding is the BatchNorm1d
    output, as in iresnet.

    Args:
        embedding_size: D (2 or 3 for the toy pictures).
    """

    def __init__(self, embedding_size: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(_block(3, 32, 2), _block(32, 48, 2), _block(48, 64, 2))
        self.fc = nn.Linear(64 * 4 * 4, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 32, 32]`` in [-1, 1] → ``[B, D]``."""
        return self.features(self.fc(torch.flatten(self.trunk(x), 1)))
