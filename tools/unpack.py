"""Thin wrapper: `python tools/unpack.py --help` (same as `dist-face-unpack`)."""

import sys

from dist_face.cli.unpack import main

if __name__ == "__main__":
    sys.exit(main())
