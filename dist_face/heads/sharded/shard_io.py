"""Export and re-split the class-sharded tensors of a head, for any world size.

A shard is a plain dict (``torch.save``-able)::

    {"class_start": int, "class_end": int, "num_classes": int, "rank": int, "world_size": int,
     "weight": [end-start, D] ([end-start, K, D] with sub-centers), "bias": [end-start] or None,
     "replicated": {name: tensor}}   # margin state identical on all ranks (b̃, λ step, t)

Loading picks the rows ``class_range(C, r, W_new)`` out of the shards of any old world size
(each shard covers a contiguous class range), so a run can resume on a different number of
ranks without ever materialising the full ``[C, D]`` matrix.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from dist_face.heads.sharded.shard_math import resplit_rows


class ShardedHead(Protocol):
    """What this module reads and fills of a class-sharded head (``PartialFC`` is one).

    A protocol, so that the head can import this module without this module importing it.
    """

    class_start: int
    class_end: int
    num_classes: int
    rank: int
    world_size: int
    weight: nn.Parameter
    bias: nn.Parameter | None
    margin: nn.Module


def export_shard(head: ShardedHead) -> dict[str, Any]:
    """This rank's shard dict (tensors detached and cloned to CPU)."""
    replicated = {k: v.detach().cpu().clone() for k, v in head.margin.state_dict().items()}
    return {
        "class_start": head.class_start,
        "class_end": head.class_end,
        "num_classes": head.num_classes,
        "rank": head.rank,
        "world_size": head.world_size,
        "weight": head.weight.detach().cpu().clone(),
        "bias": None if head.bias is None else head.bias.detach().cpu().clone(),
        "replicated": replicated,
    }


def rows_from_shards(shards: list[dict[str, Any]], key: str, start: int, end: int) -> torch.Tensor:
    """Rows ``[start, end)`` of the concatenation of ``shard[key]`` over contiguous shards.

    Raises:
        ValueError: the shards do not cover ``[start, end)`` or a shard's size is inconsistent.
    """
    pieces = [(s["class_start"], s["class_end"], lambda s=s: s[key]) for s in shards]
    return resplit_rows(pieces, start, end)


def load_shards(head: ShardedHead, shards: list[dict[str, Any]]) -> None:
    """Fill ``head`` from the shards of a run with any world size.

    Raises:
        ValueError: the shards are of another class count or do not cover this rank's range.
    """
    counts = {s["num_classes"] for s in shards}
    if counts != {head.num_classes}:
        raise ValueError(f"shards hold {sorted(counts)} classes, this head {head.num_classes}")
    start, end = head.class_start, head.class_end
    with torch.no_grad():
        head.weight.copy_(rows_from_shards(shards, "weight", start, end))
        if head.bias is not None:
            head.bias.copy_(rows_from_shards(shards, "bias", start, end))
    head.margin.load_state_dict(shards[0]["replicated"])


def load_full(head: ShardedHead, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """Fill ``head`` with its rows of full ``[C, D]`` (``[C, K, D]``) centers (and ``[C]`` bias).

    Raises:
        ValueError: wrong shape.
    """
    expected = (head.num_classes, *head.weight.shape[1:])
    if tuple(weight.shape) != expected:
        raise ValueError(f"full weight: expected {list(expected)}, got {list(weight.shape)}")
    start, end = head.class_start, head.class_end
    with torch.no_grad():
        head.weight.copy_(weight[start:end])
        if head.bias is not None:
            if bias is None or bias.shape != (head.num_classes,):
                got = None if bias is None else list(bias.shape)
                raise ValueError(f"full bias: expected [{head.num_classes}], got {got}")
            head.bias.copy_(bias[start:end])
