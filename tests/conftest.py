"""Test tiers: tests/unit (pure CPU), tests/dist (2-4 gloo ranks), tests/gpu (needs CUDA)."""

from __future__ import annotations

import os
import pathlib

import pytest
import torch

_TIERS = {"unit", "dist", "gpu"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_matrix = pytest.mark.skip(reason="the full parametrisation runs with DIST_FACE_MATRIX=1")
    full_matrix = bool(os.environ.get("DIST_FACE_MATRIX"))
    for item in items:
        tier = pathlib.Path(str(item.fspath)).parent.name
        if tier in _TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if item.get_closest_marker("matrix") and not full_matrix:
            item.add_marker(skip_matrix)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """60 identities x 12 images packed into 2 shards, plus a 300-pair val.bin."""
    from tests.helpers.datasets import embedded_shards

    return embedded_shards(tmp_path_factory.mktemp("embedded"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """20 identities x 6 images packed into 2 shards, plus a 20-pair val.bin."""
    from tests.helpers.datasets import TINY, embedded_shards

    return embedded_shards(tmp_path_factory.mktemp("tiny"), TINY)


@pytest.fixture(scope="session")
def color_shards(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """60 colour-coded PNG records of 7 classes in 3 shards (see tests/helpers/datasets.py)."""
    from tests.helpers.datasets import color_coded_shards

    return color_coded_shards(tmp_path_factory.mktemp("color"), records=60, classes=7)
