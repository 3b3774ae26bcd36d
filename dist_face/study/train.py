"""One loss-study run on the current process group: train, then embed the held-out faces.

The run uses the trainer's components: the sharded head and margins (:func:`build_head`), the
auxiliary pair losses and their weighted sum (:class:`WeightedSum`), the backbone in DDP, the
optimizers, parameter groups and learning-rate schedule of :mod:`dist_face.train.optim`. Only
the data path differs: batches are drawn P identities × K images from in-memory 32×32 faces,
so every loss, the pair losses included, sees positives in every batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from dist_face.config import AuxLossConfig, HeadConfig, OptimConfig
from dist_face.dist.comm import all_gather, get_rank, get_world_size
from dist_face.eval.verification import embed_images
from dist_face.heads import build_head
from dist_face.heads.auxiliary.aux_losses import WeightedSum
from dist_face.study.faces import FaceSet
from dist_face.study.net import StudyNet
from dist_face.train.optim import build_optimizer, build_scheduler, param_groups


@dataclass(frozen=True)
class Budget:
    """Schedule and size shared by every loss of a study."""

    steps: int = 300
    """Optimizer steps."""
    batch: int = 64
    """Global batch (all ranks), ``identities_per_batch × images_per_identity``."""
    images_per_identity: int = 4
    """K of the P×K batches."""
    lr: float = 0.1
    """Peak learning rate (SGD, momentum 0.9) of backbone and head."""
    warmup: float = 0.1
    """Fraction of the steps with linear warm-up; cosine decay after."""
    weight_decay: float = 5e-4
    """Weight decay of weights (not biases or norms)."""
    embedding_size: int = 64
    """D."""


@dataclass(frozen=True)
class LossSpec:
    """One row of the study: a margin head, optionally with pair losses (weights in ``aux``)."""

    name: str
    head: dict = field(default_factory=dict)
    """HeadConfig fields (margin name and any value that differs from its defaults)."""
    aux: dict = field(default_factory=dict)
    """AuxLossConfig fields (losses, weights, head_weight)."""


@dataclass
class RunOutput:
    """What rank 0 keeps of one run."""

    embeddings: np.ndarray
    """``float32 [N, D]`` L2-normalised, flip-summed embeddings of the held-out faces."""
    target_gap: float | None
    """Mean over training faces of ``cos θ_y − max_{j≠y} cos θ_j`` against the head's centers
    (None when the head does not train: pair losses alone)."""
    final_loss: float
    """Mean training loss of the last 10% of steps."""
    centers: np.ndarray
    """``float32 [C, D]`` the head's class centers (gathered from every rank)."""


def _pk_batch(
    labels_index: list[np.ndarray], budget: Budget, rng: np.random.Generator
) -> np.ndarray:
    """Indices of one global batch: P distinct identities, K images each."""
    k = budget.images_per_identity
    ids = rng.choice(len(labels_index), size=budget.batch // k, replace=False)
    return np.concatenate([rng.choice(labels_index[i], size=k, replace=False) for i in ids])


def _to_input(images: np.ndarray, flip: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().sub_(127.5).div_(127.5)
    if flip.any():
        x[flip] = torch.flip(x[flip], dims=[3])
    return x


def train_run(
    spec: LossSpec,
    train: FaceSet,
    held_out: FaceSet,
    budget: Budget,
    seed: int,
    raw: bool = False,
) -> RunOutput | None:
    """Train ``spec`` on ``train`` under ``budget`` on every rank; rank 0 returns the result.

    Must be called on every rank of the default process group with the same arguments.

    Args:
        spec: the loss.
        train: training faces.
        held_out: faces to embed after training.
        budget: schedule and sizes.
        seed: backbone and center initialisation, batch order and flips.
        raw: return the backbone's raw outputs (no mirror sum, no normalisation), as the toy
            pictures plot them.
    """
    rank, world = get_rank(), get_world_size()
    d, num_classes = budget.embedding_size, train.num_classes
    torch.manual_seed(seed)
    net = StudyNet(d)
    model = DistributedDataParallel(net) if world > 1 else net
    head = build_head(HeadConfig(**spec.head), d, num_classes, seed=seed)
    loss_fn = WeightedSum.from_config(head, AuxLossConfig(**spec.aux), d, num_classes)
    optim = OptimConfig(lr=budget.lr, weight_decay=budget.weight_decay, schedule="cosine")
    cpu = torch.device("cpu")
    opts = [
        build_optimizer(param_groups(net, budget.weight_decay), optim, budget.lr, cpu),
        build_optimizer(param_groups(loss_fn, budget.weight_decay), optim, budget.lr, cpu),
    ]
    warmup = int(budget.warmup * budget.steps)
    scheds = [build_scheduler(o, optim, warmup, budget.steps) for o in opts]
    by_label = [np.flatnonzero(train.labels == c) for c in range(num_classes)]
    rng = np.random.default_rng([seed, 0x57])  # same stream on every rank: same global batch
    local = budget.batch // world
    losses = []
    for _ in range(budget.steps):
        idx = _pk_batch(by_label, budget, rng)
        flip = rng.random(len(idx)) < 0.5
        mine = slice(rank * local, (rank + 1) * local)
        x = _to_input(train.images[idx[mine]], flip[mine])
        y = torch.from_numpy(train.labels[idx[mine]])
        total, _ = loss_fn(model(x), y)
        for o in opts:
            o.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        for o in opts:
            o.step()
        for s in scheds:
            s.step()
        losses.append(float(total.detach()))
    centers = all_gather(head.weight.detach())
    if rank != 0:
        return None
    tail = losses[-max(len(losses) // 10, 1) :]
    gap = None if spec.aux.get("head_weight", 1.0) == 0 else _target_gap(net, centers, train)
    emb = _raw(net, held_out.images) if raw else embed_images(net, held_out.images)
    return RunOutput(emb, gap, float(np.mean(tail)), centers.float().numpy())


@torch.no_grad()
def _raw(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    net.eval()
    try:
        return net(_to_input(images, np.zeros(len(images), dtype=bool))).numpy()
    finally:
        net.train()


def _target_gap(net: torch.nn.Module, centers: torch.Tensor, faces: FaceSet) -> float:
    """Mean of ``cos θ_y − max_{j≠y} cos θ_j`` over ``faces`` (no flip), in cosine units.

    ``centers`` ``[C, D]``, or ``[C, K, D]`` (sub-centers: a class's cosine is their max).
    """
    emb = torch.from_numpy(embed_images(net, faces.images, flip=False))
    cos = emb @ F.normalize(centers.float().reshape(-1, emb.shape[1]), dim=1).T
    cos = cos.view(len(emb), centers.shape[0], -1).amax(dim=2)
    y = torch.from_numpy(faces.labels)
    target = cos.gather(1, y[:, None]).squeeze(1)
    others = cos.scatter(1, y[:, None], float("-inf")).amax(dim=1)
    return float((target - others).mean())
