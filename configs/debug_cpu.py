"""Tiny backbone on the embedded dataset, 2 gloo ranks, a few steps: the CI smoke recipe."""

from pathlib import Path

from dist_face.config import RunConfig

# the quickstart's data in this repository, named absolutely so the recipe works from any
# working directory (a relative path would be relative to where the command was started)
QUICKSTART_DATA = Path(__file__).resolve().parents[1] / "data" / "quickstart"


def config() -> RunConfig:
    cfg = RunConfig(name="debug_cpu")
    cfg.model.name = "tiny"
    cfg.model.embedding_size = 64
    cfg.head.margin = "arcface"
    cfg.head.scale = 32.0
    cfg.data.root = str(QUICKSTART_DATA / "shards")
    cfg.data.backend = "torch"
    cfg.data.batch_size = 32
    cfg.data.num_workers = 1
    cfg.optim.lr = 0.1
    cfg.train.epochs = 1
    cfg.train.log_every = 5
    cfg.eval.targets = [str(QUICKSTART_DATA / "val.bin")]
    cfg.eval.every = 0
    return cfg
