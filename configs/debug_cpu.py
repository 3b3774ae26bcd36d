"""Tiny backbone on a small embedded dataset, 2 gloo ranks, a few steps: the CI smoke recipe.

Its data (40 synthetic identities × 8 images, packed, and 100 verification pairs) is made in
``debug_cpu/`` of the cache directory (``$DIST_FACE_CACHE``, else ``~/.cache/dist_face``) the
first time the recipe trains (about 5 s), so ``dist-face-train --config debug_cpu`` works on a
fresh clone. Nothing is written inside the checkout: a ``data/`` folder in a clone named
``dist_face`` would shadow the package for a command started in the clone's parent.
"""

from pathlib import Path

from dist_face.cache_dir import default_cache_dir
from dist_face.config import RunConfig


def debug_data() -> Path:
    """Where the recipe's data lives (absolute, so any working directory finds it)."""
    return Path(default_cache_dir()).resolve() / "debug_cpu"


def config() -> RunConfig:
    data = debug_data()
    cfg = RunConfig(name="debug_cpu")
    cfg.model.name = "tiny"
    cfg.model.embedding_size = 64
    cfg.head.margin = "arcface"
    cfg.head.margin_args = {"scale": 32.0}
    cfg.data.root = str(data / "shards")
    cfg.data.backend = "torch"
    cfg.data.batch_size = 32
    cfg.data.num_workers = 1
    cfg.optim.lr = 0.1
    cfg.train.epochs = 1
    cfg.train.log_every = 5
    cfg.eval.targets = [str(data / "val.bin")]
    cfg.eval.every = 0
    return cfg


def prepare(cfg: RunConfig) -> None:
    """Make the recipe's own data when the run reads it and it is not there yet."""
    data = debug_data()
    if cfg.data.root == str(data / "shards") or str(data / "val.bin") in cfg.eval.targets:
        from dist_face.data.synthetic.embedded import ensure_packed_dataset

        ensure_packed_dataset(data)
