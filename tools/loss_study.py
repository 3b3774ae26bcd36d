"""Every loss trained under one budget and scored on held-out identities.

See `python tools/loss_study.py --help`.
"""

import sys

from dist_face.cli.loss_study import main

if __name__ == "__main__":
    sys.exit(main())
