"""A package version as Python's metadata sees it, without installing the package."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def env_with_installed(tmp_path: Path, name: str, version: str) -> dict[str, str]:
    """The environment of a process that sees ``name==version`` as installed.

    A real installed-distribution record (``NAME-VERSION.dist-info/METADATA``) goes first on
    ``PYTHONPATH``, ahead of this checkout; ``importlib.metadata`` then reports that version
    while the package's code stays the real one. Distributed-launch variables are dropped so
    the process starts as a lone run.
    """
    site = tmp_path / "site"
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return env
