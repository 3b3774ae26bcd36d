"""Write a synthetic IJB-B/C set in the official layout (held-out generated identities)."""

from __future__ import annotations

import argparse
import logging
import time

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.data.synthetic.ijb import IJBSpec, generate_ijb
from dist_face.log import init_logging

logger = logging.getLogger("dist_face.make_ijb")


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Parse arguments, write the set, return the exit code."""
    d = IJBSpec()
    p = argparse.ArgumentParser(prog="make_ijb.py", description=__doc__)
    p.add_argument("out_dir", help="dataset root: meta/ and loose_crop/ are written under it")
    p.add_argument("--target", choices=("IJBC", "IJBB"), default=d.target)
    p.add_argument("--identities", type=int, default=d.identities, help="held-out subjects")
    p.add_argument("--templates-per-identity", type=int, default=d.templates_per_identity)
    p.add_argument("--max-medias", type=int, default=d.max_medias, help="media per template")
    p.add_argument("--max-frames", type=int, default=d.max_frames, help="frames per media")
    p.add_argument(
        "--impostor-pairs", type=int, default=d.impostor_pairs, help="0: every cross pair"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    args = p.parse_args(argv)
    init_logging()
    try:
        spec = IJBSpec(
            target=args.target,
            identities=args.identities,
            templates_per_identity=args.templates_per_identity,
            max_medias=args.max_medias,
            max_frames=args.max_frames,
            impostor_pairs=args.impostor_pairs,
            seed=args.seed,
        )
    except ValueError as exc:
        p.error(str(exc))
    start = time.perf_counter()
    root = generate_ijb(args.out_dir, spec, args.workers)
    logger.info(
        "wrote a synthetic %s set to %s in %.1f s", spec.target, root, time.perf_counter() - start
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
