"""Generate the embedded synthetic face dataset (image folder + verification .bin)."""

from __future__ import annotations

import argparse
import logging
import time

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.data.synthetic.embedded import EmbeddedSpec, generate_embedded_dataset
from dist_face.log import init_logging

logger = logging.getLogger("dist_face.make_dataset")


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the dataset, return the exit code."""
    d = EmbeddedSpec()
    p = argparse.ArgumentParser(prog="dist-face-make-dataset", description=__doc__)
    p.add_argument("out_dir", help="directory to write train/, val.bin and dataset.json into")
    p.add_argument("--identities", type=int, default=d.identities, help="training identities")
    p.add_argument("--images-per-identity", type=int, default=d.images_per_identity)
    p.add_argument(
        "--val-identities",
        type=int,
        default=d.val_identities,
        help="held-out identities used for verification pairs",
    )
    p.add_argument("--val-pairs", type=int, default=d.val_pairs, help="verification pairs")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    args = p.parse_args(argv)
    init_logging()
    spec = EmbeddedSpec(
        args.identities, args.images_per_identity, args.val_identities, args.val_pairs, args.seed
    )
    start = time.perf_counter()
    try:
        out = generate_embedded_dataset(args.out_dir, spec, args.workers)
    except ValueError as exc:
        p.error(str(exc))
    logger.info(
        "wrote %d training images of %d identities and %d verification pairs to %s in %.1f s",
        spec.identities * spec.images_per_identity,
        spec.identities,
        spec.val_pairs,
        out,
        time.perf_counter() - start,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
