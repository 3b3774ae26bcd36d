"""IJB-B/C 1:1 and 1:N evaluation. See `python tools/ijb.py --help`."""

import sys

from dist_face.cli.ijb import main

if __name__ == "__main__":
    sys.exit(main())
