"""Generate the embedded synthetic face dataset. See `python tools/make_dataset.py --help`."""

import sys

from dist_face.cli.make_dataset import main

if __name__ == "__main__":
    sys.exit(main())
