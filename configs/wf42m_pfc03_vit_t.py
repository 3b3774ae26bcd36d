"""WebFace42M, ViT-T (patch 9), CosFace, PFC r=0.3, AdamW lr 1e-3 wd 0.1, 40 epochs, 8×512."""

from dist_face.config import RunConfig, recipe


def config() -> RunConfig:
    cfg = recipe("wf42m_pfc02_r100")
    cfg.name = "wf42m_pfc03_vit_t"
    cfg.model.name = "vit_t"
    cfg.head.sample_rate = 0.3
    cfg.data.batch_size = 512
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "adamw", 1e-3, 0.1
    cfg.optim.warmup_epochs = 4
    cfg.train.epochs = 40
    return cfg
