"""Start-up check of the launchers: a raw image folder as ``data.root`` is one line, exit 2.

``launch/torchrun.sh`` runs it before torchrun: a worker that exits 2 makes torchrun print its
own traceback and exit 1, so a mistake found this early is reported here, once, instead.
Everything else is left to the trainer's checks (this module imports no torch: 0.2 s).

    python -m dist_face.cli.launch_check --config RECIPE [trainer arguments...]
"""

from __future__ import annotations

import os
import sys

from dist_face.config import ConfigError, load_config
from dist_face.data.packing.image_files import is_image_folder


def image_folder_problem(argv: list[str]) -> str | None:
    """The one-line problem when the run's ``data.root`` is a folder of photos, else None.

    Args:
        argv: ``--config RECIPE`` followed by the trainer's arguments; only ``--config`` and
            the ``--section.field=value`` overrides are read.
    """
    config = None
    overrides = []
    for k, arg in enumerate(argv):
        if arg == "--config" and k + 1 < len(argv):
            config = argv[k + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        elif arg.startswith("--") and "." in arg.split("=", 1)[0] and "=" in arg:
            overrides.append(arg)
    if config is None:
        return None
    try:
        root = load_config(config, overrides).data.root
    except ConfigError:
        return None  # the trainer reports it, naming the key
    if os.path.isdir(root) and not os.path.isfile(os.path.join(root, "meta.json")):
        if is_image_folder(root):
            return f"data.root: {root} is an image folder; pack it first: dist-face-pack {root} OUT"
    return None


def main(argv: list[str] | None = None) -> int:
    """0 when the launch may go on; 2 (and one line on standard error) when it must not."""
    problem = image_folder_problem(sys.argv[1:] if argv is None else argv)
    if problem is None:
        return 0
    print(f"bad configuration: {problem}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
