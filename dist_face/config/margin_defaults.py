"""Per-margin defaults of the ``head`` section: a margin chosen by name gets its paper's values.

Every margin-specific field of :class:`~dist_face.config.schema.HeadConfig` defaults to
``None``, meaning "the default of the chosen margin". :func:`resolve_head` fills them in from
:data:`MARGIN_DEFAULTS`. A field the chosen margin does not read is an error when given on the
command line (:func:`check_overridden_fields`, called by the override loader) and a warning
naming it when a recipe or ``config.yaml`` set it (then it is dropped).

Why not plain dataclass defaults: those are shared by all margins, so
``--head.margin=cosface`` would silently inherit ArcFace's ``m3 = 0`` and train a plain
normalised softmax. Resolution happens where the values are used (building the margin, writing
the run's ``config.yaml``), after every override, so the order of overrides does not matter.

Sources of the values: CosFace (Wang et al. 2018) m = 0.35, s = 64; ArcFace (Deng et al. 2019)
m = 0.5, s = 64; SphereFace (Liu et al. 2017) m = 4 and its released λ schedule (base 1000,
γ 0.12, power 1, λ_min 5); L-Softmax (Liu et al. 2016) m = 4 with its released CIFAR schedule
(base 1000, γ 2.5e-5, power 35, λ_min 0); CurricularFace m = 0.5, s = 64, EMA 0.01; UniFace's
official code m = 0.4, s = 64, λ = 1, b̃ initialised to log(10·C·r) (``uniface_bias_init = 0``
stands for that, since C is known only when the data is opened); insightface's combined margin
(1.0, 0.3, 0.2), s = 64; NormFace s = 64 as in the other cosine losses here; AdaFace (Kim et
al. 2022) m = 0.4, h = 0.333, EMA 0.01, s = 64; MagFace (Meng et al. 2021) l_a = 10,
u_a = 110, l_m = 0.45, u_m = 0.8, λ_g = 35, s = 64; ElasticFace (Boutros et al. 2022) arc
m = 0.5, cos m = 0.35, σ = 0.05, and the "+" variants' σ from the official config (arc+
0.0175, cos+ 0.02), s = 64; sub-center ArcFace (Deng et al. 2020) K = 3, m = 0.5, s = 64.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from dist_face.config.base import FieldError

if TYPE_CHECKING:
    from dist_face.config.schema import HeadConfig

logger = logging.getLogger(__name__)

_ANNEAL_SPHERE = {
    "lambda_base": 1000.0,
    "lambda_gamma": 0.12,
    "lambda_power": 1.0,
    "lambda_min": 5.0,
}
_ANNEAL_LSOFTMAX = {
    "lambda_base": 1000.0,
    "lambda_gamma": 2.5e-5,
    "lambda_power": 35.0,
    "lambda_min": 0.0,
}

#: margin name -> {field read by that margin: its default}. A field absent here is not read.
MARGIN_DEFAULTS: MappingProxyType[str, dict[str, Any]] = MappingProxyType(
    {
        "softmax": {},
        "normface": {"scale": 64.0},
        "cosface": {"scale": 64.0, "m3": 0.35},
        "arcface": {"scale": 64.0, "m2": 0.5, "easy_margin": False, "straight_through": False},
        "combined": {"scale": 64.0, "m1": 1.0, "m2": 0.3, "m3": 0.2},
        "lsoftmax": {"m1": 4.0, **_ANNEAL_LSOFTMAX},
        "sphereface": {"m1": 4.0, **_ANNEAL_SPHERE},
        "curricularface": {"scale": 64.0, "m2": 0.5, "curricular_momentum": 0.01},
        "uniface": {"scale": 64.0, "m3": 0.4, "uniface_lambda": 1.0, "uniface_bias_init": 0.0},
        "adaface": {"scale": 64.0, "adaface_m": 0.4, "adaface_h": 0.333, "adaface_momentum": 0.01},
        "magface": {
            "scale": 64.0,
            "magface_la": 10.0,
            "magface_ua": 110.0,
            "magface_lm": 0.45,
            "magface_um": 0.8,
            "magface_lambda": 35.0,
            "easy_margin": False,
        },
        "elasticface_arc": {"scale": 64.0, "m2": 0.5, "elastic_std": 0.05},
        "elasticface_arc_plus": {"scale": 64.0, "m2": 0.5, "elastic_std": 0.0175},
        "elasticface_cos": {"scale": 64.0, "m3": 0.35, "elastic_std": 0.05},
        "elasticface_cos_plus": {"scale": 64.0, "m3": 0.35, "elastic_std": 0.02},
        "subcenter_arcface": {"scale": 64.0, "m2": 0.5, "sub_centers": 3},
    }
)

#: Every field of the head section whose meaning depends on the margin.
MARGIN_FIELDS: tuple[str, ...] = (
    "scale",
    "m1",
    "m2",
    "m3",
    "easy_margin",
    "straight_through",
    "lambda_base",
    "lambda_gamma",
    "lambda_power",
    "lambda_min",
    "curricular_momentum",
    "uniface_lambda",
    "uniface_bias_init",
    "adaface_m",
    "adaface_h",
    "adaface_momentum",
    "magface_la",
    "magface_ua",
    "magface_lm",
    "magface_um",
    "magface_lambda",
    "elastic_std",
    "sub_centers",
)


def unused_fields(cfg: HeadConfig) -> list[str]:
    """Margin fields set in ``cfg`` that its margin does not read (``[]`` for unknown margins)."""
    reads = MARGIN_DEFAULTS.get(cfg.margin)
    if reads is None:
        return []
    return [k for k in MARGIN_FIELDS if k not in reads and getattr(cfg, k) is not None]


def check_overridden_fields(cfg: HeadConfig, keys: Iterable[str]) -> None:
    """Reject command-line overrides of margin fields that the chosen margin does not read.

    Args:
        cfg: the head section after the overrides.
        keys: field names (within ``head``) given on the command line.

    Raises:
        FieldError: naming the first such field, the margin and the fields it does read.
    """
    unused = set(unused_fields(cfg))
    for name in keys:
        if name in unused:
            used = ", ".join(MARGIN_DEFAULTS[cfg.margin]) or "no margin field"
            raise FieldError(
                name,
                f"is not used by margin {cfg.margin!r} (it reads {used}); "
                f"remove it or choose a margin that uses it",
            )


def resolve_head(cfg: HeadConfig) -> HeadConfig:
    """A copy of ``cfg`` with the margin's defaults filled in and ignored fields cleared.

    Explicit values the margin reads are kept. A field set by a recipe or a ``config.yaml``
    that the margin does not read (a recipe's ``scale = 32`` when the command line switches to
    ``softmax``) is logged as a warning naming it and reset to ``None``, so the resolved
    config shows only values that take effect. Idempotent.
    """
    reads = MARGIN_DEFAULTS.get(cfg.margin)
    if reads is None:
        return cfg
    changes: dict[str, Any] = {k: v for k, v in reads.items() if getattr(cfg, k) is None}
    for name in unused_fields(cfg):
        logger.warning(
            "head.%s=%s is not used by margin %r; ignored", name, getattr(cfg, name), cfg.margin
        )
        changes[name] = None
    return dataclasses.replace(cfg, **changes) if changes else cfg
