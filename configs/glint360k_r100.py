"""Glint360K (360,232 ids, 17.1 M images), iresnet100, CosFace m=0.4 s=64, wd 1e-4, 20 epochs."""

from dist_face.config import RunConfig, recipe


def config() -> RunConfig:
    cfg = recipe("ms1mv3_r50")
    cfg.name = "glint360k_r100"
    cfg.model.name = "iresnet100"
    cfg.head.margin = "cosface"
    cfg.head.margin_args = {"margin": 0.4}
    cfg.data.root = "/train_tmp/glint360k/shards"
    cfg.data.num_classes = 360_232
    cfg.optim.weight_decay = 1e-4
    cfg.eval.targets = [f"/train_tmp/glint360k/{n}.bin" for n in ("lfw", "cfp_fp", "agedb_30")]
    return cfg
