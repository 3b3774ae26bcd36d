"""Verification of a trained backbone. See `python tools/evaluate.py --help`."""

import sys

from dist_face.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
