"""The fused loss's features: which margin gets which, and one that stands alone.

The margins' parity with their references is proven elsewhere (``test_partial_fc.py``,
``test_adaptive_margins.py``, ``test_row_sparse_update.py``); here, what the head builds from
a margin's flags, and a per-row loss on a margin that does not read ``‖x‖`` otherwise, which
only the feature's own gradient can bring to the embeddings.
"""

from __future__ import annotations

import pytest
import torch

from dist_face.heads import PartialFC
from dist_face.heads.margins.common import MARGINS, ArcFace
from dist_face.heads.sharded.fused_loss import NormReader, RowLoss, SubCenters, features_for
from dist_face.heads.sharded.margin_head import MarginHead

D, C = 16, 23


@pytest.mark.parametrize(
    ("name", "kinds"),
    [
        ("arcface", []),
        ("cosface", []),
        ("adaface", []),  # reads ‖x‖ detached in begin_step: no feature
        ("uniface", []),  # per-row sums are its objective, not a feature
        ("curricularface", []),
        ("magface", [NormReader, RowLoss]),
        ("subcenter_arcface", [SubCenters]),
        ("sphereface", [NormReader]),
        ("softmax", [NormReader]),
    ],
)
def test_the_head_builds_features_from_the_margin_flags(name: str, kinds: list[type]) -> None:
    found = features_for(MARGINS.get(name)())
    assert [type(f) for f in found] == kinds
    readers = [f for f in found if isinstance(f, NormReader)]
    margin = MARGINS.get(name)()
    cosine = margin.normalize_embedding and margin.normalize_weight
    assert all(r.weight == (not cosine) for r in readers)  # ‖w‖ only for non-cosine margins


def test_sub_centers_on_a_margin_reading_the_target_cosine_are_refused() -> None:
    margin = MARGINS.get("curricularface")()
    margin.sub_centers = 3
    with pytest.raises(ValueError, match="sub-center margins must be cosine margins"):
        features_for(margin)


class _ArcFaceWithRowLoss(ArcFace):
    """ArcFace plus ``λ (‖x‖ − 3)²`` per row: a row loss on a margin that reads no norm."""

    has_row_loss = True

    def row_loss(self, x_norm: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x_norm - 3.0) ** 2


def test_a_row_loss_alone_reaches_the_embeddings_and_keeps_the_fast_path() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(9, D, generator=gen, dtype=torch.float64) * 2
    y = torch.randint(0, C, (9,), generator=gen)
    head = PartialFC(D, C, _ArcFaceWithRowLoss(scale=16.0), chunk_size=8).double()
    ref = MarginHead(D, C, _ArcFaceWithRowLoss(scale=16.0)).double()
    assert [type(f) for f in features_for(head.margin)] == [RowLoss]
    xh, xr = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    loss = head(xh, y)
    assert loss.grad_fn.fused.target_only  # a row loss does not touch the margin's blocks
    loss.backward()
    expected = ref(xr, y)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(xh.grad, xr.grad)
    torch.testing.assert_close(head.weight.grad, ref.weight.grad)
