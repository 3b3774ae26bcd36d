"""WebFace4M (205,990 ids, 4.24 M images), iresnet50, UniFace (UCE) loss, 8×128 batch, 20 epochs."""

from dist_face.config import RunConfig, recipe


def config() -> RunConfig:
    cfg = recipe("ms1mv3_r50")
    cfg.name = "wf4m_uniface_r50"
    cfg.head.margin = "uniface"
    cfg.head.margin_args = {"margin": 0.4}
    cfg.data.root = "/train_tmp/WebFace4M/shards"
    cfg.data.num_classes = 205_990
    cfg.eval.targets = [f"/train_tmp/WebFace4M/{n}.bin" for n in ("lfw", "cfp_fp", "agedb_30")]
    return cfg
