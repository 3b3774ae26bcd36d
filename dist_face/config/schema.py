"""The typed configuration tree of a run.

One ``RunConfig`` describes a whole run. Each section belongs to one component; fields carry a
default and a one-line docstring, and ``__post_init__`` checks them. Recipes in ``configs/``
return a ``RunConfig``; ``--section.field=value`` overrides are applied by
:mod:`dist_face.config.loader`. Numbers derived from the config (global batch, total steps,
class ranges) are computed elsewhere and never written back here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dist_face.config.base import require, require_choice


# ---------------------------------------------------------------------------------------------
# model: the backbone (dist_face.models)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class ModelConfig:
    """Backbone choice and options."""

    name: str = "iresnet50"
    """Registered backbone name (see ``dist_face.models``)."""
    embedding_size: int = 512
    """Dimension D of the face embedding."""
    dropout: float = 0.0
    """Dropout before the embedding FC layer."""
    channels_last: bool = False
    """Run convolutions in channels-last memory format."""
    grad_checkpointing: bool = False
    """Recompute activations in backward to save memory (large backbones)."""
    init_backbone: str = ""
    """Path of a backbone-only checkpoint to start from (fine-tuning); empty for random init."""
    drop_path: float | None = None
    """Stochastic-depth rate of the last block (ViT, ConvNeXt); None keeps the backbone's 0.1."""
    mask_ratio: float | None = None
    """Fraction of patches dropped in training (ViT); None keeps the backbone's 0.1."""

    def __post_init__(self) -> None:
        require(
            self.embedding_size > 0, "embedding_size", f"must be > 0, got {self.embedding_size}"
        )
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        require(
            self.drop_path is None or 0.0 <= self.drop_path < 1.0,
            "drop_path",
            f"must be in [0, 1) or None, got {self.drop_path}",
        )
        require(
            self.mask_ratio is None or 0.0 <= self.mask_ratio < 1.0,
            "mask_ratio",
            f"must be in [0, 1) or None, got {self.mask_ratio}",
        )


# ---------------------------------------------------------------------------------------------
# head: the sharded class-center head and its margin (dist_face.heads)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class HeadConfig:
    """Margin loss and class-center sharding."""

    margin: str = "arcface"
    """Registered margin name (see ``dist_face.heads``)."""
    scale: float = 64.0
    """Logit scale s."""
    m1: float = 1.0
    """Multiplicative angular margin (SphereFace / combined margin)."""
    m2: float = 0.5
    """Additive angular margin (ArcFace / combined margin)."""
    m3: float = 0.0
    """Additive cosine margin (CosFace / combined margin)."""
    sample_rate: float = 1.0
    """Partial FC: fraction of each rank's class centers kept per step (1.0 = all)."""

    def __post_init__(self) -> None:
        require(self.scale > 0, "scale", f"must be > 0, got {self.scale}")
        require(
            0.0 <= self.sample_rate <= 1.0,
            "sample_rate",
            f"must be in [0, 1], got {self.sample_rate}",
        )


# ---------------------------------------------------------------------------------------------
# data: where samples come from (dist_face.data)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DataConfig:
    """Training data source and loader."""

    root: str = "data/quickstart/shards"
    """Directory of record shards (written by tools/pack.py), or 'synthetic'."""
    backend: str = "auto"
    """Loader backend: auto, dali, torch or synthetic."""
    num_classes: int = 0
    """Number of identities; 0 reads it from the shard set's metadata."""
    batch_size: int = 128
    """Samples per rank per step."""
    num_workers: int = 2
    """Loader worker processes (torch) or threads (dali) per rank."""
    image_size: int = 112
    """Side of the square, aligned face crop in pixels."""

    def __post_init__(self) -> None:
        require_choice(self.backend, "backend", ["auto", "dali", "torch", "synthetic"])
        require(self.num_classes >= 0, "num_classes", f"must be >= 0, got {self.num_classes}")
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.image_size > 0, "image_size", f"must be > 0, got {self.image_size}")


# ---------------------------------------------------------------------------------------------
# optim: optimizer and learning-rate schedule (dist_face.train)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class OptimConfig:
    """Optimizer and per-iteration learning-rate schedule."""

    name: str = "sgd"
    """sgd or adamw."""
    lr: float = 0.1
    """Peak learning rate of the backbone."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 5e-4
    """Weight decay (not applied to biases, norm parameters or UniFace's bias)."""
    warmup_epochs: float = 0.0
    """Linear warm-up length in epochs."""
    schedule: str = "poly"
    """Decay after warm-up: poly or cosine."""
    poly_power: float = 1.0
    """Power of the polynomial decay (1.0 = linear)."""

    def __post_init__(self) -> None:
        require_choice(self.name, "name", ["sgd", "adamw"])
        require_choice(self.schedule, "schedule", ["poly", "cosine"])
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(self.warmup_epochs >= 0, "warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")


# ---------------------------------------------------------------------------------------------
# train: the loop (dist_face.train)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class TrainConfig:
    """Length, precision and cadence of the training loop."""

    epochs: int = 20
    """Number of passes over the training set."""
    precision: str = "fp32"
    """fp32, bf16 or fp16 (fp16 needs CUDA)."""
    log_every: int = 10
    """Steps between log lines (the only steps that synchronise with the host)."""
    seed: int = 2048
    """Base random seed; each rank derives its own."""

    def __post_init__(self) -> None:
        require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        require_choice(self.precision, "precision", ["fp32", "bf16", "fp16"])
        require(self.log_every > 0, "log_every", f"must be > 0, got {self.log_every}")


# ---------------------------------------------------------------------------------------------
# dist: process group (dist_face.dist)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DistConfig:
    """Process-group settings."""

    backend: str = "auto"
    """auto (nccl with CUDA, else gloo), nccl or gloo."""
    timeout_s: float = 600.0
    """Collective timeout in seconds; a dead rank turns into an error after this long."""

    def __post_init__(self) -> None:
        require_choice(self.backend, "backend", ["auto", "nccl", "gloo"])
        require(self.timeout_s > 0, "timeout_s", f"must be > 0, got {self.timeout_s}")


# ---------------------------------------------------------------------------------------------
# eval: verification (dist_face.eval)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class EvalConfig:
    """Verification during and after training."""

    targets: list[str] = field(default_factory=list)
    """Verification .bin files (paths) evaluated every ``every`` steps."""
    every: int = 2000
    """Steps between evaluations; 0 disables evaluation during training."""
    batch_size: int = 64
    """Images per forward pass during evaluation."""

    def __post_init__(self) -> None:
        require(self.every >= 0, "every", f"must be >= 0, got {self.every}")
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RunConfig:
    """Everything that defines one training run."""

    name: str = "run"
    """Run name; the run directory is ``<output_root>/<name>``."""
    output_root: str = "runs"
    """Parent directory of run directories."""
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must not be empty")
