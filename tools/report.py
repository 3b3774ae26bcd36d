"""PNG report of the dashboard panels from Prometheus. See `python tools/report.py --help`."""

import sys

from dist_face.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
