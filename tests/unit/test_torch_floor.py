"""Start-up refuses a torch older than the head's GEMMs need, in one line naming both versions."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from dist_face.config import ConfigError
from dist_face.torch_floor import TORCH_FLOOR, check_torch_version
from tests.helpers.installed import env_with_installed

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", ["2.8.0", "2.11.0+cu130", "2.13.0+cpu", "3.0.0"])
def test_torch_at_or_above_the_floor_passes(version: str) -> None:
    check_torch_version(version)


@pytest.mark.parametrize("version", ["2.4.1", "2.7.1+cu126", "1.13.0", "dev"])
def test_older_torch_is_refused_naming_found_and_needed(version: str) -> None:
    with pytest.raises(ConfigError, match=rf"^torch {re.escape(version)} is installed; .*>=2\.8 "):
        check_torch_version(version)


def test_the_floor_is_real_and_declared() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"torch>={TORCH_FLOOR[0]}.{TORCH_FLOOR[1]}" in deps
    check_torch_version(torch.__version__)  # the torch the suite runs on
    # the overload the floor is for: on the CPU it exists and refuses (CUDA-only kernel)
    a = torch.ones(2, 2, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError):
        torch.mm(a, a, out_dtype=torch.float32)


def test_entry_point_refuses_an_old_torch_in_one_line(tmp_path: Path) -> None:
    """A real installed-distribution record of torch 2.7.1 first on the path."""
    env = env_with_installed(tmp_path, "torch", "2.7.1")
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "dist_face.train", "--config", "debug_cpu", f"--output_root={out}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "torch 2.7.1" in line]
    assert len(lines) == 1 and "needs torch>=2.8" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
