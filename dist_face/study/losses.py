"""The rows of the loss study: every margin head, and the pair losses as their papers use them.

Margin heads run with their paper defaults (:mod:`dist_face.heads.margins.margin_args`). Pair and
metric losses follow their papers' setups: center loss is added to softmax with λ = 0.003;
contrastive, triplet, N-pair, Circle and SupCon train alone (the classifier head is built but
weighted 0, so it shapes nothing).
"""

from __future__ import annotations

import dataclasses

from dist_face.heads.margins.margin_args import margin_args
from dist_face.study.train import LossSpec

# The table's order (by publication); a margin registered elsewhere joins the table after these.
_ORDER = (
    "softmax",
    "normface",
    "lsoftmax",
    "sphereface",
    "cosface",
    "arcface",
    "combined",
    "curricularface",
    "uniface",
    "adaface",
    "magface",
    "elasticface_arc",
    "elasticface_arc_plus",
    "elasticface_cos",
    "elasticface_cos_plus",
    "subcenter_arcface",
)
_ALONE = ("contrastive", "triplet", "npair", "circle", "supcon")


def study_losses() -> list[LossSpec]:
    """Every row of the study, in table order."""
    from dist_face.heads.margins.common import MARGINS

    heads = [n for n in _ORDER if n in MARGINS] + [n for n in MARGINS.names() if n not in _ORDER]
    rows = [LossSpec(name, head={"margin": name}) for name in heads]
    rows.append(
        LossSpec(
            "softmax+center",
            head={"margin": "softmax"},
            aux={"losses": ["center"], "weights": [0.003]},
        )
    )
    rows += [
        LossSpec(
            name,
            head={"margin": "softmax"},
            aux={"losses": [name], "weights": [1.0], "head_weight": 0.0},
        )
        for name in _ALONE
    ]
    return rows


def by_name(names: list[str]) -> list[LossSpec]:
    """The rows called ``names`` (in that order).

    Raises:
        ValueError: a name is not a row of the study (the message lists the rows).
    """
    rows = {r.name: r for r in study_losses()}
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}; the study has: {', '.join(rows)}")
    return [rows[n] for n in names]


def with_scale(spec: LossSpec, scale: float) -> LossSpec:
    """``spec`` with the logit scale ``s`` set, when its margin has one (else unchanged).

    Pair losses alone keep their head untouched (it is weighted 0).
    """
    margin = spec.head.get("margin", "arcface")
    if "scale" not in margin_args(margin) or spec.aux.get("head_weight", 1.0) == 0:
        return spec
    args = {**spec.head.get("margin_args", {}), "scale": scale}
    return dataclasses.replace(spec, head={**spec.head, "margin_args": args})
