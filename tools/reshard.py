"""Thin wrapper: `python tools/reshard.py --help` (same as `dist-face-reshard`)."""

import sys

from dist_face.cli.reshard import main

if __name__ == "__main__":
    sys.exit(main())
