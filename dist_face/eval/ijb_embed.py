"""Embedding the IJB images: decode, align, embed the face and its mirror, gather on rank 0.

Each rank embeds a contiguous slice of the image rows; rank 0 gathers the slices in row order,
so the result is the same for any number of processes.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dist_face.eval.align import align_face
from dist_face.eval.ijb_meta import IJBFormatError, IJBMeta

logger = logging.getLogger(__name__)


class AlignedIJB(Dataset):
    """Aligned faces of a slice of the image rows.

    A decoding failure is returned as a message rather than raised, so that the main process
    reports it (file and row) however many loader workers run.
    """

    def __init__(self, meta: IJBMeta, rows: np.ndarray) -> None:
        self.meta = meta
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        row = int(self.rows[i])
        path = self.meta.image_path(row)
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            where = f"{self.meta.file('name_5pts_score')}:{self.meta.image_lines[row]}"
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return np.zeros(
                (112, 112, 3), np.uint8
            ), f"{path} ({where}): unreadable image: {reason}"
        return align_face(image, self.meta.landmarks[row]), ""


def _collate(batch: list[tuple[np.ndarray, str]]) -> tuple[torch.Tensor, list[str]]:
    return torch.from_numpy(np.stack([b[0] for b in batch])), [b[1] for b in batch]


@torch.no_grad()
def embed_pair(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``uint8 [B, 112, 112, 3]`` RGB → ``float32 [B, 2D]``: embedding of x ‖ of its mirror.

    Pixels are normalised as in training, ``(x/255 − 0.5)/0.5``; both views run in one forward.
    """
    first = next(model.parameters())
    x = pixels.to(first.device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).to(first.dtype)
    out = model(torch.cat([x, torch.flip(x, dims=[3])])).float()
    b = len(pixels)
    return torch.cat([out[:b], out[b:]], dim=1)


def rank_rows(num_rows: int, rank: int, world_size: int) -> np.ndarray:
    """The contiguous slice of image rows rank ``rank`` embeds (sizes differ by at most 1)."""
    return np.array_split(np.arange(num_rows), world_size)[rank]


def embed_ijb(
    model: nn.Module,
    meta: IJBMeta,
    batch_size: int = 128,
    workers: int = 0,
    progress: bool = True,
) -> np.ndarray | None:
    """Embed every image row; on a process group, each rank a slice, gathered on rank 0.

    Args:
        model: the backbone, on the device to embed on (put in eval mode here).
        meta: the dataset's meta files.
        batch_size: faces per forward (each forward also runs their mirrors).
        workers: loader processes decoding and aligning images (0: in this process).
        progress: show a progress bar (rank 0 only).

    Returns:
        ``float32 [N, 2D]`` original ‖ mirror features in row order on rank 0, ``None`` on
        the other ranks.

    Raises:
        IJBFormatError: an image cannot be decoded (the message names it and its row).
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    rows = rank_rows(len(meta.image_names), rank, world)
    loader = DataLoader(
        AlignedIJB(meta, rows),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
    )
    model.eval()
    parts, error = [], ""
    bar = tqdm(
        total=len(meta.image_names),
        desc="IJB images",
        unit="img",
        disable=not progress or rank != 0,
    )
    for pixels, errors in loader:
        error = next((e for e in errors if e), "")
        if error:
            break
        parts.append(embed_pair(model, pixels).cpu().numpy())
        bar.update(len(pixels) * world)
    bar.close()
    feats = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    if world == 1:
        if error:
            raise IJBFormatError(error)
        return feats
    # every rank learns of a failure anywhere, so that all of them stop with the message
    errors: list[str] = [""] * world
    dist.all_gather_object(errors, error)
    first_error = next((e for e in errors if e), "")
    if first_error:
        raise IJBFormatError(first_error)
    gathered: list[np.ndarray] | None = [np.empty(0)] * world if rank == 0 else None
    dist.gather_object(feats, gathered, dst=0)
    if gathered is None:
        return None
    return np.concatenate([g for g in gathered if g.size])
