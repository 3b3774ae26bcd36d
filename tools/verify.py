"""Thin wrapper: `python tools/verify.py --help` (same as `dist-face-verify`)."""

import sys

from dist_face.cli.verify import main

if __name__ == "__main__":
    sys.exit(main())
