"""Class-center heads: margins, the sharded classifier and its arithmetic."""

import dist_face.heads.margins  # noqa: F401  (registers every margin)
from dist_face.heads.build import build_head, build_margin
from dist_face.heads.margins.common import MARGINS, Margin, MarginInput
from dist_face.heads.sharded.margin_head import MarginHead
from dist_face.heads.sharded.partial_fc import PartialFC

__all__ = [
    "MARGINS",
    "Margin",
    "MarginHead",
    "MarginInput",
    "PartialFC",
    "build_head",
    "build_margin",
]
