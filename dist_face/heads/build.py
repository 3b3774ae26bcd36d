"""Build a margin and the sharded head from the ``head`` config section."""

from __future__ import annotations

import torch
from torch.distributed import ProcessGroup

from dist_face.config.base import ConfigError, FieldError
from dist_face.config.schema import HeadConfig
from dist_face.heads.margins.common import MARGINS, Margin
from dist_face.heads.margins.margin_args import build_from_args
from dist_face.heads.sharded.kernels import gemm_dtype
from dist_face.heads.sharded.partial_fc import PartialFC


def build_margin(cfg: HeadConfig, num_classes: int, seed: int = 0) -> Margin:
    """The margin named by ``cfg.margin`` with its options ``cfg.margin_args``.

    Unset options take the margin's paper defaults, the defaults of its class's signature
    (:mod:`~dist_face.heads.margins.margin_args`). ``num_classes`` (UniFace's initial bias) and
    ``seed`` (the run's seed, for margins that draw per step: ElasticFace) are passed to
    classes whose signature asks for them.

    Raises:
        ConfigError: unknown margin name (the message lists the known ones), or a bad option.
    """
    if cfg.margin not in MARGINS:
        raise ConfigError(f"head.margin: unknown margin {cfg.margin!r}; known: {MARGINS.names()}")
    try:
        return build_from_args(
            cfg.margin,
            cfg.margin_args,
            num_classes=num_classes,
            sample_rate=cfg.sample_rate,
            seed=seed,
        )
    except FieldError as exc:
        raise ConfigError(f"head.{exc.field}: {exc.message}") from None


def build_head(
    cfg: HeadConfig,
    embedding_size: int,
    num_classes: int,
    group: ProcessGroup | None = None,
    *,
    seed: int = 0,
    grad_scale_for_dp_average: bool = True,
    precision: str = "fp32",
) -> PartialFC:
    """The sharded head of a run.

    Args:
        cfg: the ``head`` config section.
        embedding_size: D (``model.embedding_size``).
        num_classes: C.
        group: process group the classes are split over (None = default group / no group).
        seed: center initialisation and sampling seed (e.g. ``train.seed``).
        grad_scale_for_dp_average: False for engines that sum, not average, gradients.
        precision: the run's ``train.precision``: bf16/fp16 runs the head's GEMMs in it.
    """
    return PartialFC(
        embedding_size,
        num_classes,
        build_margin(cfg, num_classes, seed),
        cfg.sample_rate,
        group,
        grad_scale_for_dp_average=grad_scale_for_dp_average,
        seed=seed,
        interclass_filtering_threshold=cfg.interclass_filtering_threshold,
        check_labels=cfg.check_labels,
        chunk_size=cfg.chunk_size,
        storage_dtype=torch.bfloat16 if cfg.storage == "bf16" else torch.float32,
        keep_projections_mb=cfg.keep_projections_mb,
        gemm_dtype=gemm_dtype(precision),
        tf32=cfg.tf32,
    )
