"""dist_face's modules import each other without cycles (the rules: tests/helpers/import_graph.py).

Imports inside functions count; ``if TYPE_CHECKING:`` imports do not.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.helpers.import_graph import cycles, graph

PACKAGE = Path(__file__).resolve().parents[2] / "dist_face"

# Cycles being broken on their own: the integration empties this set once those changes are
# in. Nothing else may be added here: a new cycle is broken, not listed.
KNOWN: set[frozenset[str]] = {
    frozenset(f"dist_face.train.{m}" for m in ("step", "guard", "hooks", "loop")),
    frozenset({"dist_face.models.checkpoint", "dist_face.models.factory"}),
}


def test_dist_face_has_no_import_cycle() -> None:
    new = [c for c in cycles(graph(PACKAGE)) if not any(c <= k for k in KNOWN)]
    assert not new, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in new)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_a_cycle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "from pkg.b import f\n",
            "b.py": "def f():\n    from pkg import a\n    return a\n",
            "sub/__init__.py": "",
            "sub/c.py": "from ..a import f\n",  # relative, into the cycle but not part of it
        },
    )
    edges = graph(root)
    assert edges["pkg.sub.c"] == {"pkg.a"}
    assert cycles(edges) == [frozenset({"pkg.a", "pkg.b"})]


def test_type_checking_imports_are_no_edge(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "a.py": "from pkg.b import f\n",
            "b.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from pkg.a import Thing
                def f(x: "Thing") -> None: ...
            """,
        },
    )
    assert cycles(graph(root)) == []
