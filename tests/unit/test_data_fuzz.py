"""Seeded mutations of a shard set against every reader (see tests/helpers/data_fuzz.py).

The default run takes a fast subset; ``pytest -m fuzz`` runs the full 1,200 cases.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.data_fuzz import FAILURES, MUTATIONS, make_base, run_fuzz


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_base(tmp_path_factory.mktemp("fuzz"))


def _check(base: Path, work: Path, seeds: range) -> None:
    counts, failures = run_fuzz(base, work, seeds)
    assert not failures, "\n".join(f"{f.outcome}: {f.mutation}: {f.detail}" for f in failures)
    assert sum(counts.values()) == len(seeds) and counts["detected"] > 0
    assert not set(counts) & set(FAILURES)


def test_fuzz_subset(base: Path, tmp_path: Path) -> None:
    _check(base, tmp_path, range(5 * len(MUTATIONS)))  # every mutation kind, 5 seeds each


@pytest.mark.fuzz
@pytest.mark.timeout(1800)
def test_fuzz_full(base: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the full fuzz runs with -m fuzz")
    _check(base, tmp_path, range(1200))
