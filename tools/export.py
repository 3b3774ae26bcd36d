"""Export a backbone to ONNX and safetensors. See `python tools/export.py --help`."""

import sys

from dist_face.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
