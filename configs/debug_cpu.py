"""Tiny backbone on the embedded dataset, 2 gloo ranks, a few steps: the CI smoke recipe."""

from dist_face.config import RunConfig


def config() -> RunConfig:
    cfg = RunConfig(name="debug_cpu")
    cfg.model.name = "tiny"
    cfg.model.embedding_size = 64
    cfg.head.margin = "arcface"
    cfg.head.scale = 32.0
    cfg.data.root = "data/quickstart/shards"
    cfg.data.backend = "torch"
    cfg.data.batch_size = 32
    cfg.data.num_workers = 1
    cfg.optim.lr = 0.1
    cfg.train.epochs = 1
    cfg.train.log_every = 5
    cfg.eval.targets = ["data/quickstart/val.bin"]
    cfg.eval.every = 0
    return cfg
