"""Class-center heads: margins, the sharded classifier and its arithmetic."""

from dist_face.heads import (  # noqa: F401  (registration)
    adaface,
    curricular,
    elastic,
    magface,
    multiplicative,
    subcenter,
    uniface,
)
from dist_face.heads.build import build_head, build_margin
from dist_face.heads.margin_head import MarginHead
from dist_face.heads.margins import MARGINS, Margin, MarginInput
from dist_face.heads.partial_fc import PartialFC

__all__ = [
    "MARGINS",
    "Margin",
    "MarginHead",
    "MarginInput",
    "PartialFC",
    "build_head",
    "build_margin",
]
