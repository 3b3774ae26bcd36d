"""Class ranges for every world size, including uneven splits."""

from __future__ import annotations

import itertools

import pytest

from dist_face.heads.sharded.shard_math import (
    class_range,
    class_ranges,
    num_local_classes,
    owner_of,
)


@pytest.mark.parametrize("num_classes", [4, 5, 7, 10, 11, 1000, 1003])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranges_tile_the_classes_in_rank_order(num_classes: int, world_size: int) -> None:
    ranges = class_ranges(num_classes, world_size)
    assert ranges[0][0] == 0 and ranges[-1][1] == num_classes
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert end == start
    sizes = [end - start for start, end in ranges]
    assert max(sizes) - min(sizes) <= 1
    extra = num_classes % world_size
    assert sizes == [num_classes // world_size + (r < extra) for r in range(world_size)]
    for r, (start, end) in enumerate(ranges):
        assert num_local_classes(num_classes, r, world_size) == end - start
        for c in (start, end - 1):
            assert owner_of(c, num_classes, world_size) == r


def test_example_from_the_reference_formula() -> None:
    assert class_ranges(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_errors() -> None:
    with pytest.raises(ValueError, match="cannot be sharded"):
        class_range(2, 0, 3)
    with pytest.raises(ValueError, match="outside"):
        class_range(10, 4, 4)
    with pytest.raises(ValueError, match="class id 10"):
        owner_of(10, 10, 2)
