"""A short training job through the Python API, as a user script would run it on one rank.

``python -m tests.helpers.api_job DATA OUT`` under the launcher's variables (``RANK``,
``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): ``init_distributed``, ``build_trainer``,
two steps, and the end of the script, without ``destroy_distributed``: whatever the library
left running meets interpreter shutdown.
"""

from __future__ import annotations

import sys

from dist_face.config import load_config
from dist_face.dist import Topology, init_distributed
from dist_face.train.build import build_trainer


def main(data: str, out: str) -> None:
    """Train two steps of the debug recipe on ``data``'s shards into ``out``."""
    topology = Topology.from_env()
    parallel = init_distributed(topology, "gloo", 60)
    cfg = load_config(
        "debug_cpu",
        [
            f"--data.root={data}/shards",
            "--eval.targets=[]",
            f"--output_root={out}",
            "--name=api",
            "--train.max_steps=2",
            "--train.log_every=1",
        ],
    )
    trainer, _ = build_trainer(cfg, topology, parallel.device, parallel=parallel)
    trainer.fit()


if __name__ == "__main__":
    main(*sys.argv[1:3])
