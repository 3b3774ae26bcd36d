"""What every backbone shares: input checks, channels-last, checkpointing and an fp32 head.

A backbone maps a batch of aligned 112×112 RGB faces, normalized to [-1, 1], to embeddings. The
trunk runs under whatever autocast the caller set (fp16/bf16 on the accelerator); the head runs
with autocast disabled on an fp32 copy of the trunk's output, so the embedding is fp32, as in
InsightFace where the final FC and BatchNorm1d stay in fp32. A network whose parameters are in
bf16/fp16 (DeepSpeed's half-precision modes) runs entirely in that dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

#: Side of the aligned face crop every backbone expects, in pixels.
INPUT_SIZE = 112


class Backbone(nn.Module):
    """Base class: ``forward(x) = head(trunk(x))`` with the head in fp32.

    Subclasses implement :meth:`forward_trunk` and :meth:`forward_head` and run their repeated
    blocks through :meth:`run_block`, which recomputes activations in backward when
    ``grad_checkpointing`` is set.
    """

    def __init__(
        self,
        embedding_size: int,
        *,
        channels_last: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if embedding_size <= 0:
            raise ValueError(f"embedding_size must be > 0, got {embedding_size}")
        self.embedding_size = embedding_size
        self.channels_last = channels_last
        self.grad_checkpointing = grad_checkpointing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a batch of faces.

        Args:
            x: ``[B, 3, 112, 112]`` images normalized to [-1, 1] (any float dtype).

        Returns:
            ``[B, embedding_size]`` embeddings (not L2-normalized), fp32 unless the network's
            parameters and ``x`` are in half precision.
        """
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"{type(self).__name__} expects a [B, 3, {INPUT_SIZE}, {INPUT_SIZE}] batch, "
                f"got {list(x.shape)}"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.forward_trunk(x)
        # The head (FC + BatchNorm1d) in fp32 keeps the embedding's statistics stable under AMP.
        # It runs in the input's dtype: fp32 under autocast, and the parameters' own dtype when
        # the whole network is in bf16/fp16 (DeepSpeed's half-precision modes).
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.forward_head(feats.to(x.dtype))

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Features before the embedding head (runs under the caller's autocast)."""
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Map fp32 trunk features to ``[B, embedding_size]`` embeddings."""
        raise NotImplementedError

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Apply ``block``; with checkpointing on (training only), keep only its input alive."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements, frozen ones included."""
    return sum(p.numel() for p in model.parameters())
