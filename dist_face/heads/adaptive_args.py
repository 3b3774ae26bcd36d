"""Keyword arguments of the AdaFace, MagFace, ElasticFace and sub-center margins from ``head``.

``build_margin`` merges :data:`ADAPTIVE_ARGS` into its table; the values are already resolved
(:func:`~dist_face.config.margin_defaults.resolve_head`).
"""

from __future__ import annotations

from collections.abc import Callable

from dist_face.config.schema import HeadConfig


def _elastic_arc(c: HeadConfig, n: int) -> dict[str, object]:
    return {"scale": c.scale, "margin": c.m2, "std": c.elastic_std}


def _elastic_cos(c: HeadConfig, n: int) -> dict[str, object]:
    return {"scale": c.scale, "margin": c.m3, "std": c.elastic_std}


ADAPTIVE_ARGS: dict[str, Callable[[HeadConfig, int], dict[str, object]]] = {
    "adaface": lambda c, n: {
        "scale": c.scale,
        "margin": c.adaface_m,
        "h": c.adaface_h,
        "momentum": c.adaface_momentum,
    },
    "magface": lambda c, n: {
        "scale": c.scale,
        "l_a": c.magface_la,
        "u_a": c.magface_ua,
        "l_m": c.magface_lm,
        "u_m": c.magface_um,
        "lambda_g": c.magface_lambda,
        "easy_margin": c.easy_margin,
    },
    "elasticface_arc": _elastic_arc,
    "elasticface_arc_plus": _elastic_arc,
    "elasticface_cos": _elastic_cos,
    "elasticface_cos_plus": _elastic_cos,
    "subcenter_arcface": lambda c, n: {
        "scale": c.scale,
        "margin": c.m2,
        "sub_centers": int(c.sub_centers),
    },
}

SEEDED = frozenset(n for n in ADAPTIVE_ARGS if n.startswith("elasticface"))
"""Margins that take the run's seed (their draws are a function of ``(seed, step)``)."""
