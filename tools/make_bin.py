"""Thin wrapper: `python tools/make_bin.py --help` (same as `dist-face-make-bin`)."""

import sys

from dist_face.cli.make_bin import main

if __name__ == "__main__":
    sys.exit(main())
