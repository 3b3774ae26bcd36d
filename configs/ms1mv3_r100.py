"""MS1MV3, iresnet100, ArcFace: the ms1mv3_r50 recipe with the deeper backbone."""

from dist_face.config import RunConfig, recipe


def config() -> RunConfig:
    cfg = recipe("ms1mv3_r50")
    cfg.name = "ms1mv3_r100"
    cfg.model.name = "iresnet100"
    return cfg
