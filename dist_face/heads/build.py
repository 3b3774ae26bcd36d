"""Build a margin and the sharded head from the ``head`` config section."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributed import ProcessGroup

from dist_face.config.base import ConfigError
from dist_face.config.margin_defaults import resolve_head
from dist_face.config.schema import HeadConfig
from dist_face.heads.adaptive_args import ADAPTIVE_ARGS, SEEDED
from dist_face.heads.kernels import gemm_dtype
from dist_face.heads.margins import MARGINS, Margin
from dist_face.heads.partial_fc import PartialFC
from dist_face.heads.uniface import uniface_default_bias

# margin name -> keyword arguments taken from the config (num_classes for UniFace's bias init)
_ARGS: dict[str, Callable[[HeadConfig, int], dict[str, object]]] = {
    "softmax": lambda c, n: {},
    "normface": lambda c, n: {"scale": c.scale},
    "cosface": lambda c, n: {"scale": c.scale, "margin": c.m3},
    "arcface": lambda c, n: {
        "scale": c.scale,
        "margin": c.m2,
        "easy_margin": c.easy_margin,
        "straight_through": c.straight_through,
    },
    "combined": lambda c, n: {"scale": c.scale, "m1": c.m1, "m2": c.m2, "m3": c.m3},
    "lsoftmax": lambda c, n: _annealing(c),
    "sphereface": lambda c, n: _annealing(c),
    "curricularface": lambda c, n: {
        "scale": c.scale,
        "margin": c.m2,
        "momentum": c.curricular_momentum,
    },
    "uniface": lambda c, n: {
        "scale": c.scale,
        "margin": c.m3,
        "neg_weight": c.uniface_lambda,
        "bias_init": c.uniface_bias_init or uniface_default_bias(n, c.sample_rate),
    },
    **ADAPTIVE_ARGS,
}


def _annealing(c: HeadConfig) -> dict[str, object]:
    return {
        "m": int(c.m1),
        "lambda_base": c.lambda_base,
        "lambda_gamma": c.lambda_gamma,
        "lambda_power": c.lambda_power,
        "lambda_min": c.lambda_min,
    }


def build_margin(cfg: HeadConfig, num_classes: int, seed: int = 0) -> Margin:
    """The margin named by ``cfg.margin`` with its options from ``cfg``.

    ``seed``: the run's seed, for margins that draw per step (ElasticFace).

    Unset options take the margin's paper defaults (:func:`~dist_face.config.margin_defaults.
    resolve_head`).

    Raises:
        ConfigError: unknown margin name (the message lists the known ones).
    """
    if cfg.margin not in MARGINS:
        raise ConfigError(f"head.margin: unknown margin {cfg.margin!r}; known: {MARGINS.names()}")
    cfg = resolve_head(cfg)
    args = _ARGS[cfg.margin](cfg, num_classes) if cfg.margin in _ARGS else {}
    if cfg.margin in SEEDED:
        args["seed"] = seed
    return MARGINS.get(cfg.margin)(**args)


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
