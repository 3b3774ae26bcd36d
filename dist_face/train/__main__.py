"""``python -m dist_face.train``."""

import sys

from dist_face.train.entry import main

sys.exit(main())
