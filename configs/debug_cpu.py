"""Tiny backbone on a small embedded dataset, 2 gloo ranks, a few steps: the CI smoke recipe.

Its data (40 synthetic identities × 8 images, packed, and 100 verification pairs) is made in
``data/debug_cpu/`` of this repository the first time the recipe trains (about 5 s), so
``python -m dist_face.train --config debug_cpu`` works on a fresh clone.
"""

from pathlib import Path

from dist_face.config import RunConfig

# named absolutely so the recipe works from any working directory (a relative path would be
# relative to where the command was started)
DEBUG_DATA = Path(__file__).resolve().parents[1] / "data" / "debug_cpu"


def config() -> RunConfig:
    cfg = RunConfig(name="debug_cpu")
    cfg.model.name = "tiny"
    cfg.model.embedding_size = 64
    cfg.head.margin = "arcface"
    cfg.head.margin_args = {"scale": 32.0}
    cfg.data.root = str(DEBUG_DATA / "shards")
    cfg.data.backend = "torch"
    cfg.data.batch_size = 32
    cfg.data.num_workers = 1
    cfg.optim.lr = 0.1
    cfg.train.epochs = 1
    cfg.train.log_every = 5
    cfg.eval.targets = [str(DEBUG_DATA / "val.bin")]
    cfg.eval.every = 0
    return cfg


def prepare(cfg: RunConfig) -> None:
    """Make the recipe's own data when the run reads it and it is not there yet."""
    if (
        cfg.data.root == str(DEBUG_DATA / "shards")
        or str(DEBUG_DATA / "val.bin") in cfg.eval.targets
    ):
        from dist_face.data.embedded import ensure_packed_dataset

        ensure_packed_dataset(DEBUG_DATA)
