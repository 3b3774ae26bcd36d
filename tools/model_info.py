"""Parameters and FLOPs per 112×112 image of every registered backbone (see --help)."""

from dist_face.cli.model_info import main

if __name__ == "__main__":
    raise SystemExit(main())
