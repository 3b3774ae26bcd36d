"""A few hundred people of your own photos on CPU: dist-face-pack --detect dlib, then this.

Sized for 100-500 identities of 10-50 aligned photos each (a few thousand images): the ``tiny``
IR backbone with 128-d embeddings (0.66 M parameters: more overfits such a set within a few
epochs), ArcFace with a softer scale and margin (s = 32, m = 0.3), dropout 0.2 before the
embedding, and augmentations for aligned faces: the mirror, a small crop and shift (70 %),
colour jitter (50 %), grayscale (10 %) and blur (10 %). The run evaluates the held-out pair
file you name in ``eval.targets`` every 50 steps and keeps the backbone with the lowest EER as
``model.pt`` (``eval.select_best``; the log names its step): on a small set the held-out EER
stops improving long before the training loss does.

It reads ``packed`` (the shard set) and ``heldout.bin`` (the held-out pairs) in the directory
it is started in; name others on the command line:

    CONFIG=photos_small bash launch/torchrun.sh --data.root=DIR --eval.targets=[FILE.bin]
"""

from dist_face.config import RunConfig


def config() -> RunConfig:
    cfg = RunConfig(name="photos_small")
    cfg.model.name = "tiny"
    cfg.model.embedding_size = 128
    cfg.model.dropout = 0.2
    cfg.head.margin = "arcface"
    cfg.head.margin_args = {"scale": 32.0, "margin": 0.3}
    cfg.data.root = "packed"  # dist-face-pack's output, relative to where the run starts
    cfg.data.backend = "torch"
    cfg.data.batch_size = 64
    cfg.data.num_workers = 1
    cfg.data.hflip = True
    cfg.data.aug_crop_p = 0.7
    cfg.data.aug_color_p = 0.5
    cfg.data.aug_gray_p = 0.1
    cfg.data.aug_blur_p = 0.1
    cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay = "sgd", 0.1, 5e-4
    cfg.optim.warmup_epochs = 1.0
    cfg.optim.schedule = "cosine"
    cfg.train.epochs = 30
    cfg.train.log_every = 10
    cfg.eval.targets = ["heldout.bin"]  # dist-face-make-bin HELDOUT_FOLDER heldout.bin ...
    cfg.eval.every = 50
    cfg.eval.select_best = True
    cfg.checkpoint.every = 50
    cfg.checkpoint.keep = 2
    return cfg
