"""Checkpoint state of the auxiliary losses: the center loss's class-sharded centers.

The centers of :class:`~dist_face.heads.auxiliary.center_loss.CenterLoss` are split over the ranks
by the same class ranges as the head's class centers, so they are saved as extra rows of each rank's
head file and re-split on load by the head's code (:func:`dist_face.checkpoint.load_rows`),
onto any world size. The other auxiliary losses are stateless.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dist_face.checkpoint import CheckpointError, ShardedCheckpointError, load_rows
from dist_face.heads.auxiliary.center_loss import CenterLoss


def aux_rows(losses: nn.ModuleDict) -> dict[str, torch.Tensor]:
    """``aux/<loss>/<buffer>`` → this rank's ``[num_local, D]`` rows, for the head files.

    Raises:
        ValueError: a loss holds state that is not class-sharded (it would not be saved).
    """
    rows: dict[str, torch.Tensor] = {}
    for name, loss in losses.items():
        state = dict(loss.named_buffers())
        if any(True for _ in loss.parameters()) or (state and not isinstance(loss, CenterLoss)):
            raise ValueError(f"auxiliary loss {name!r} has state that checkpoints do not hold")
        rows.update({f"aux/{name}/{key}": buf.detach() for key, buf in state.items()})
    return rows


def load_aux_state(losses: nn.ModuleDict, path: Path, class_range: tuple[int, int]) -> None:
    """Fill the losses' sharded buffers with rows ``class_range`` of checkpoint ``path``.

    Raises:
        CheckpointError: the checkpoint has no such state (saved without these losses) or the
            loss is sharded differently from the head.
    """
    for key, buf in aux_rows(losses).items():
        name = key.split("/")[1]
        loss = losses[name]
        if (loss.start, loss.end) != tuple(class_range):
            raise CheckpointError(
                f"auxiliary loss {name!r} owns classes [{loss.start}, {loss.end}), "
                f"the head {list(class_range)}"
            )
        try:
            rows = load_rows(Path(path), key, *class_range)
        except ShardedCheckpointError as exc:
            raise CheckpointError(
                f"{path}: no state for auxiliary loss {name!r} (saved without it?): {exc}"
            ) from None
        with torch.no_grad():
            buf.copy_(rows.to(buf.device, buf.dtype))
