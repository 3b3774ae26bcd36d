"""The GPU check's plan, checked on a CPU: ``bash tools/gpu_check.sh --dry-run`` (what the CI runs).

Nothing here measures a GPU; the dry run checks what the check will do within its 7 minutes:
the stage budgets, the wheel list against pyproject.toml, that the GPU tier's every test is
collected, and that the projections and the report are produced.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "tools" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_dry_run_passes_and_writes_the_report(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        ["bash", "tools/gpu_check.sh", "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"]["problems"] == []
    benched = {(r["model"], r["precision"]) for r in report["bench"]}
    assert benched == {(m, p) for m in ("iresnet50", "mbf") for p in ("bf16", "fp16")}
    for r in report["bench"]:
        assert r["measured"] is None  # a dry run measures nothing
        low, high = r["projected"]["projected_band_ms"]
        assert low < r["projected"]["projected_ms"]["step"] < high
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| iresnet50 | bf16 | head | — |" in table
    assert "calibrated 20" in table and "dry run: nothing measured" in table


def test_the_plan_fits_seven_minutes() -> None:
    gc = _module()
    assert gc.check_budgets() == []
    assert sum(gc.BUDGET_S.values()) <= gc.TOTAL_S == 420


def test_a_core_dependency_missing_from_the_wheels_is_caught(tmp_path: Path) -> None:
    gc = _module()
    short = tmp_path / "gpu_wheels.txt"
    lines = gc.WHEELS.read_text().splitlines()
    short.write_text(
        "\n".join(x for x in lines if not x.startswith("omegaconf")) + "\nrich==13.0\n"
    )
    gc.WHEELS = short
    problems = gc.check_wheels()
    assert any("core dependency omegaconf" in p for p in problems), problems
    assert any("rich is no core or testing dependency" in p for p in problems), problems


def test_every_gpu_test_function_is_known_to_the_dry_run() -> None:
    names = _module().test_functions()
    assert "tests/gpu/test_cuda_paths.py::test_loaders_deliver_on_the_device" in names
    assert len(names) >= 9
