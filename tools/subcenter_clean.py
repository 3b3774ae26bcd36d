"""Thin wrapper: `python tools/subcenter_clean.py --help` (same as `dist-face-subcenter-clean`)."""

import sys

from dist_face.cli.subcenter_clean import main

if __name__ == "__main__":
    sys.exit(main())
