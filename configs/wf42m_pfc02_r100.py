"""WebFace42M (2,059,906 ids, 42.5 M images), iresnet100, CosFace, Partial FC r=0.2, 8×128 batch."""

from dist_face.config import RunConfig, recipe


def config() -> RunConfig:
    cfg = recipe("glint360k_r100")
    cfg.name = "wf42m_pfc02_r100"
    cfg.head.sample_rate = 0.2
    cfg.data.root = "/train_tmp/WebFace42M/shards"
    cfg.data.num_classes = 2_059_906
    cfg.optim.weight_decay = 5e-4
    cfg.eval.targets = []
    cfg.eval.every = 10_000
    return cfg
