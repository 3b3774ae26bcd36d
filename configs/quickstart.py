"""The main job of launch/quickstart.sh: a small backbone trained on the embedded dataset."""

from dist_face.config import RunConfig, recipe


def config() -> RunConfig:
    cfg = recipe("debug_cpu")
    cfg.name = "quickstart"
    cfg.model.embedding_size = 128
    cfg.data.batch_size = 64
    cfg.train.epochs = 4
    cfg.train.log_every = 10
    cfg.eval.every = 50
    cfg.metrics.prometheus = True
    return cfg
