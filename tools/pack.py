"""Thin wrapper: `python tools/pack.py --help` (same as `dist-face-pack`)."""

import sys

from dist_face.cli.pack import main

if __name__ == "__main__":
    sys.exit(main())
