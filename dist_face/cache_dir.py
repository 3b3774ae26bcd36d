"""Where the product keeps what it makes for itself, never inside the checkout."""

from __future__ import annotations

import os


def default_cache_dir() -> str:
    """``$DIST_FACE_CACHE``, else ``$XDG_CACHE_HOME/dist_face``, else ``~/.cache/dist_face``.

    What the product makes for itself (the debug recipe's data, ``.rec`` manifests) goes here,
    never inside the checkout.
    """
    if os.environ.get("DIST_FACE_CACHE"):
        return os.environ["DIST_FACE_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "dist_face")
