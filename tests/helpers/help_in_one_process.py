"""Run ``--help`` of many console scripts and tools in one interpreter; print JSON results.

``python -m tests.helpers.help_in_one_process script:dist-face-pack tool:bench_train.py ...``

Each entry point is called as its console-script wrapper calls it (``sys.exit(main())`` with
``sys.argv = [name, "--help"]``), each tool is run as ``__main__``. torch and the package are
imported once instead of once per script, which is what makes ``--help`` on every script slow
as separate processes. Prints one JSON list of ``{"case", "code", "stdout", "stderr"}``.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import tomllib
import traceback
from importlib import import_module
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _call(kind: str, name: str) -> int:
    """Run one case; its exit code (argparse's ``--help`` exits with 0)."""
    if kind == "script":
        scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
        module, func = scripts[name].split(":")
        sys.argv = [name, "--help"]
        return int(getattr(import_module(module), func)() or 0)
    path = REPO / "tools" / name
    sys.argv = [str(path), "--help"]
    runpy.run_path(str(path), run_name="__main__")
    return 0


def main() -> int:
    """Run every ``KIND:NAME`` argument and print the results."""
    results = []
    for case in sys.argv[1:]:
        kind, name = case.split(":", 1)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = _call(kind, name)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except BaseException:
                traceback.print_exc()
                code = 1
        results.append(
            {"case": case, "code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}
        )
    sys.__stdout__.write(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
