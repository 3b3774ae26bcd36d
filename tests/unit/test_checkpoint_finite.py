"""A checkpoint is refused when a tensor holds inf/NaN, named, without copying the centers."""

from __future__ import annotations

import pytest
import torch

from dist_face.checkpoint.manager import require_finite
from tests.helpers.allocations import LargestOutput

BLOCK = 1 << 20  # elements checked at a time (``manager._all_finite``)


def test_the_first_tensor_with_inf_or_nan_is_named() -> None:
    tree = {"model": {"w": torch.ones(3)}, "head": [torch.zeros(2, 2), torch.ones(4)]}
    require_finite(tree)  # all finite: no error
    tree["head"][1][2] = float("nan")
    tree["model"]["steps"] = torch.tensor([1, 2])  # integer tensors are not checked
    with pytest.raises(ValueError, match=r"^not saved: head/1 holds inf/NaN values$"):
        require_finite(tree)


def test_a_large_matrix_is_checked_a_block_at_a_time() -> None:
    """``isfinite`` of a whole ``[C, D]`` matrix would allocate a bool tensor of C·D bytes."""
    centers = torch.zeros(4 * BLOCK // 64, 64)
    centers[-1, -1] = float("inf")  # in the last block
    with LargestOutput() as probe, pytest.raises(ValueError, match="centers holds inf"):
        require_finite({"centers": centers})
    assert probe.largest[0] <= BLOCK, probe.largest
