"""The DeepSpeed engine refuses, at start-up, a DeepSpeed whose internals it was not written for."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dist_face.config import ConfigError
from dist_face.train.deepspeed_engine import SUPPORTED_DEEPSPEED, check_deepspeed_version
from tests.helpers.installed import env_with_installed

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("version", ["0.19.0", "0.19.8", "0.19.10+cuda"])
def test_supported_versions_pass(version: str) -> None:
    check_deepspeed_version(version)


@pytest.mark.parametrize("version", ["0.15.0", "0.18.9", "0.20.0", "1.0.0", "dev"])
def test_other_versions_are_refused_with_the_range(version: str) -> None:
    with pytest.raises(ConfigError, match=rf"deepspeed {version} is installed.*>=0\.19,<0\.20"):
        check_deepspeed_version(version)


def test_extra_declares_the_same_range() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (lo, hi) = SUPPORTED_DEEPSPEED
    spec = f"deepspeed>={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"
    assert extras["optional-dependencies"]["deepspeed"] == [spec]


def test_entry_point_refuses_an_old_deepspeed_before_building(tmp_path: Path) -> None:
    """A real installed-distribution record of deepspeed 0.15.0 first on the path."""
    env = env_with_installed(tmp_path, "deepspeed", "0.15.0")
    out = tmp_path / "runs"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dist_face.train",
            "--config",
            "debug_cpu",
            "--engine",
            "deepspeed",
            f"--output_root={out}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "deepspeed 0.15.0 is installed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()  # nothing was built or written
