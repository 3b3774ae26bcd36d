"""Sub-center ArcFace (Deng et al., ECCV 2020): K centers per class, robust to label noise.

Each class ``j`` holds ``K`` sub-centers ``w_{j,1..K}`` (default K = 3), all on the rank that
owns the class (the head's weight is ``[C_local, K, D]``, so checkpoints, sampling and the
row-sparse update stay per class). A class's cosine is the max over its sub-centers,
``cos θ_j = max_k cos(x, w_{j,k})``, and ArcFace's margin applies to it; the gradient of a
class reaches its arg-max sub-center only. Clean samples gather around one dominant
sub-center per class, noisy ones around the others: ``tools/subcenter_clean.py`` then keeps
the dominant one and lists the samples far from it (the paper's recipe).
"""

from __future__ import annotations

from dist_face.config.base import require
from dist_face.heads.margins.common import MARGINS, ArcFace


@MARGINS.register("subcenter_arcface")
class SubCenterArcFace(ArcFace):
    """ArcFace on the max over ``K`` sub-centers per class.

    Args:
        scale: s (64).
        margin: m in radians (0.5).
        sub_centers: K (3).
        easy_margin, straight_through: as :class:`~dist_face.heads.margins.common.ArcFace`.
    """

    def __init__(
        self,
        scale: float = 64.0,
        margin: float = 0.5,
        sub_centers: int = 3,
        easy_margin: bool = False,
        straight_through: bool = False,
    ) -> None:
        super().__init__(scale, margin, easy_margin, straight_through)
        require(sub_centers >= 1, "sub_centers", f"must be >= 1, got {sub_centers}")
        self.sub_centers = sub_centers
