"""MS1MV3 (93,431 ids, 5.18 M images), iresnet50, ArcFace m=0.5 s=64, 8×128, fp16, 20 epochs."""

from dist_face.config import RunConfig


def config() -> RunConfig:
    cfg = RunConfig(name="ms1mv3_r50")
    cfg.model.name = "iresnet50"
    cfg.head.margin = "arcface"
    cfg.head.margin_args = {"scale": 64.0, "margin": 0.5}
    cfg.data.root = "/train_tmp/ms1m-retinaface-t1/shards"
    cfg.data.num_classes = 93_431
    cfg.data.batch_size = 128
    cfg.data.backend = "auto"
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "sgd", 0.1, 5e-4
    cfg.train.epochs = 20
    cfg.train.precision = "fp16"
    cfg.eval.targets = [
        f"/train_tmp/ms1m-retinaface-t1/{n}.bin" for n in ("lfw", "cfp_fp", "agedb_30")
    ]
    cfg.eval.every = 2000
    return cfg
