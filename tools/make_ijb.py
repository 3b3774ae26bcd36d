"""Write a synthetic IJB-B/C set in the official layout. See `python tools/make_ijb.py --help`."""

import sys

from dist_face.cli.make_ijb import main

if __name__ == "__main__":
    sys.exit(main())
