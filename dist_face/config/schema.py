"""The typed configuration tree of a run.

One ``RunConfig`` describes a whole run. Each section belongs to one component; fields carry a
default and a one-line docstring, and ``__post_init__`` checks them. Recipes in ``configs/``
return a ``RunConfig``; ``--section.field=value`` overrides are applied by
:mod:`dist_face.config.loader`. Numbers derived from the config (global batch, total steps,
class ranges) are computed elsewhere and never written back here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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
    """Margin loss and class-center sharding.

    The margin's own options live in ``margin_args``, named as the keyword arguments of the
    margin's class (:mod:`dist_face.heads.margins.margin_args`); unset ones take the margin's paper
    defaults, and the run's ``config.yaml`` and ``--print-config`` show the resolved values.
    An argument the chosen margin does not have is an error on the command line and a warning
    (then dropped) when a recipe set it.
    """

    margin: str = "arcface"
    """Registered margin name (see ``dist_face.heads``)."""
    margin_args: dict[str, Any] = field(default_factory=dict)
    """Options of the chosen margin by name, e.g. ``--head.margin_args.scale=32``; unset ones
    take its paper defaults (each margin's arguments: listed at the end of this output)."""
    sample_rate: float = 1.0
    """Partial FC: fraction of each rank's class centers kept per step (1.0 = all; UniFace's r)."""
    interclass_filtering_threshold: float = 0.0
    """Zero non-target cosines above this value (noisy labels; 0 = off, arcface_torch uses 0.4)."""
    check_labels: bool = False
    """Verify each step that labels are in [0, C) (a device-side assertion, no host sync; the
    first batch is checked on the host with the offending row named). Off by default: shard
    sets are range-checked when opened (debugging aid)."""
    update: str | None = None
    """How the class centers learn: ``sparse`` updates only the rows used this step, from the
    kept rows' gradients the head hands over in backward (no ``[C, D]`` gradient; rows not
    sampled keep their weight and optimizer state, as in the original Partial FC); ``dense``
    steps every row every step with a plain torch optimizer (weight decay and momentum move
    unsampled rows too). Same result at sample_rate 1. Unset: ``sparse``, or ``dense`` when
    train.grad_accum > 1 (``sparse`` cannot accumulate micro-batches)."""
    chunk_size: int = 0
    """Classes per block of the fused loss; 0 = about 1M logits per block (``[N, chunk]``)."""
    keep_projections_mb: float = 512
    """Forward keeps its ``[N, chunk]`` projections for backward while all of them (``N·K``
    float32 per rank) fit in this many MiB, saving backward one GEMM per block; above it, or
    at 0, backward recomputes them (the same result). 0 bounds the head's transient memory by
    one block."""
    storage: str = "fp32"
    """Storage of the centers and their optimizer state: fp32, or bf16 (half the memory; the
    loss and the update are computed in fp32 and rounded once per step)."""
    tf32: bool = True
    """fp32 runs on CUDA: the head's float32 GEMMs may use TF32 (bf16/fp16 runs compute the
    head's GEMMs in their own precision with float32 accumulation)."""

    def __post_init__(self) -> None:
        require(
            0.0 <= self.sample_rate <= 1.0,
            "sample_rate",
            f"must be in [0, 1], got {self.sample_rate}",
        )
        from dist_face.heads.margins.margin_args import (
            check_margin_args,  # lazy: margins import torch
        )

        check_margin_args(self.margin, self.margin_args)
        require_choice(self.update, "update", [None, "sparse", "dense"])
        require_choice(self.storage, "storage", ["fp32", "bf16"])
        require(self.chunk_size >= 0, "chunk_size", f"must be >= 0, got {self.chunk_size}")
        require(
            self.keep_projections_mb >= 0,
            "keep_projections_mb",
            f"must be >= 0, got {self.keep_projections_mb}",
        )
        require(
            0.0 <= self.interclass_filtering_threshold < 1.0,
            "interclass_filtering_threshold",
            f"must be in [0, 1), got {self.interclass_filtering_threshold}",
        )


# ---------------------------------------------------------------------------------------------
# data: where samples come from (dist_face.data)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DataConfig:
    """Training data source and loader."""

    root: str = "data/quickstart/shards"
    """Directory of record shards (written by tools/pack.py); an MXNet/InsightFace .rec file, or
    a folder holding train.rec/train.idx, trained on as it is; or 'synthetic'. A relative path is
    relative to the directory the command was started in."""
    backend: str = "auto"
    """Loader backend: auto, or a registered one (dali, torch, synthetic; see
    ``dist_face.data.loading.backend``)."""
    num_classes: int = 0
    """Number of identities; 0 reads it from the shard set's metadata."""
    batch_size: int = 128
    """Samples per rank per step."""
    num_workers: int = 2
    """Loader worker processes (torch) or threads (dali) per rank."""
    image_size: int = 112
    """Side of the square, aligned face crop in pixels."""
    resize_mode: str = "crop"
    """An image of another size (torch loader, .bin evaluation): crop (scale the shorter side,
    cut the centre; keeps the aspect ratio), pad (scale the longer side, black border) or
    stretch. Aligned 112x112 crops are used as they are."""
    drop_last: bool = False
    """Per epoch, drop the last N mod W samples instead of padding every rank to ceil(N/W)."""
    on_corrupt: str = "skip"
    """A record that fails its CRC-32 or to decode: skip (count it, use another sample) or fail."""
    check_crc: bool = True
    """torch backend: compare each record's CRC-32 with the manifest before decoding it."""
    hflip: bool = True
    """Random horizontal mirror with probability 0.5."""
    synthetic_samples: int = 65536
    """Samples per epoch of the synthetic backend (its images are fixed random tensors)."""
    prefetch: int = 2
    """Batches prepared ahead, per worker and on the device."""
    timeout_s: float = 300.0
    """Seconds to wait for one batch before failing with the rank, epoch and loader worker."""
    aug_downscale_p: float = 0.0
    """Probability of downscale-blur: resize to U(56, 89) px and back (arcface_torch: 0.1)."""
    aug_blur_p: float = 0.0
    """Probability of a Gaussian blur with σ 0.5 or 1.0 px (arcface_torch: 0.2)."""
    aug_hsv_p: float = 0.0
    """Probability of HSV jitter: hue +U(0, 20)°, saturation ×U(1, 1.2) (arcface_torch: 0.2)."""
    aug_gray_p: float = 0.0
    """Probability of converting to grayscale (arcface_torch: 0.1)."""
    aug_crop_p: float = 0.0
    """Probability of a small crop and shift of an aligned face: a square of U(0.88, 1) of the
    side at a random place, scaled back (moves the face by up to 6 % of the side; torch
    backend)."""
    aug_color_p: float = 0.0
    """Probability of colour jitter: brightness, contrast and saturation each ×U(0.8, 1.2)
    (torch backend)."""

    def __post_init__(self) -> None:
        from dist_face.data.loading.loader import BACKENDS  # lazy: the loader imports torch

        require_choice(self.backend, "backend", ["auto", *BACKENDS.registered()])
        require(self.num_classes >= 0, "num_classes", f"must be >= 0, got {self.num_classes}")
        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        require(self.num_workers >= 0, "num_workers", f"must be >= 0, got {self.num_workers}")
        require(self.image_size > 0, "image_size", f"must be > 0, got {self.image_size}")
        require_choice(self.on_corrupt, "on_corrupt", ["skip", "fail"])
        require_choice(self.resize_mode, "resize_mode", ["crop", "pad", "stretch"])
        require(self.synthetic_samples > 0, "synthetic_samples", "must be > 0")
        require(self.prefetch >= 1, "prefetch", f"must be >= 1, got {self.prefetch}")
        require(self.timeout_s > 0, "timeout_s", f"must be > 0 seconds, got {self.timeout_s}")
        for name in AUGMENTATIONS:
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, name, f"must be a probability in [0, 1], got {value}")
        for name in ("aug_crop_p", "aug_color_p"):
            require(
                not (self.backend == "dali" and getattr(self, name)),
                name,
                "is applied by the torch backend only (data.backend=torch)",
            )

    @property
    def augments(self) -> bool:
        """True when any augmentation besides the mirror is enabled."""
        return any(getattr(self, name) for name in AUGMENTATIONS)


# ---------------------------------------------------------------------------------------------
# optim: optimizer and learning-rate schedule (dist_face.train)
# ---------------------------------------------------------------------------------------------
AUGMENTATIONS = (
    "aug_downscale_p",
    "aug_blur_p",
    "aug_hsv_p",
    "aug_gray_p",
    "aug_crop_p",
    "aug_color_p",
)
"""The probabilities of :class:`DataConfig`'s augmentations."""


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
    """Weight decay (not applied to biases, norm parameters or UniFace's bias, unless
    ``decay_norm_and_bias``)."""
    decay_norm_and_bias: bool = False
    """Weight-decay every parameter of the backbone and of a dense head, biases, BatchNorm and
    PReLU included, as arcface_torch does (off: those are not decayed)."""
    warmup_epochs: float = 0.0
    """Linear warm-up length in epochs."""
    schedule: str = "poly"
    """Decay after warm-up: poly or cosine (warm-up from lr/warmup_steps at the first step), or
    arcface_poly: arcface_torch's PolynomialLRWarmup, warm-up from 0 (lr·t/w at step t), then
    lr·(1 − (t − w)/(T − w))^poly_power (poly_power 2 is its old PolyScheduler)."""
    poly_power: float = 1.0
    """Power of the polynomial decay (1.0 = linear)."""
    head_lr: float = 0.0
    """Peak learning rate of the class-center head (0 = same as ``lr``)."""
    head_weight_decay: float = -1.0
    """Weight decay of the class centers (negative = same as ``weight_decay``)."""

    def __post_init__(self) -> None:
        require_choice(self.name, "name", ["sgd", "adamw"])
        require_choice(self.schedule, "schedule", ["poly", "cosine", "arcface_poly"])
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
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = train all epochs)."""
    log_every: int = 10
    """Steps between log lines (the only steps that synchronise with the host)."""
    seed: int = 2048
    """Base random seed; each rank derives its own."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    clip_grad_norm: float = 5.0
    """Clip the backbone's gradient to this global L2 norm (0 = off)."""
    loss_scale_init: float = 65536.0
    """Initial dynamic loss scale (fp16 only)."""
    loss_scale_growth_interval: int = 2000
    """Steps without overflow before the fp16 loss scale doubles."""
    max_skipped_steps: int = 50
    """Stop the run with an error after this many consecutive steps skipped for inf/NaN
    gradients (0 = never)."""
    max_nonfinite_logs: int = 20
    """Stop the run with an error when the loss is inf/NaN on this many consecutive log steps
    (0 = never)."""

    def __post_init__(self) -> None:
        require(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        require(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        require(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        require(self.clip_grad_norm >= 0, "clip_grad_norm", "must be >= 0")
        require(self.loss_scale_init > 0, "loss_scale_init", "must be > 0")
        require_choice(self.precision, "precision", ["fp32", "bf16", "fp16"])
        require(self.log_every > 0, "log_every", f"must be > 0, got {self.log_every}")
        require(self.max_skipped_steps >= 0, "max_skipped_steps", "must be >= 0")
        require(self.max_nonfinite_logs >= 0, "max_nonfinite_logs", "must be >= 0")


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
    fp16_grad_compression: bool = False
    """All-reduce backbone gradients in fp16 (DDP communication hook)."""
    engine: str = "ddp"
    """ddp (torch DistributedDataParallel) or deepspeed (the backbone in a DeepSpeed engine;
    the sharded head stays outside it). ``--engine deepspeed`` on the command line."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage of the backbone: 0, 1 (optimizer state partitioned) or 2
    (gradients too). Stage 3 would partition the weights, which the head's gradient contract
    does not need and the per-step gathers would slow down."""
    force_process_group: bool = False
    """Create a process group and run every collective even with one rank, so that a
    one-GPU run meets NCCL's rules (device of every tensor, control group) like a cluster."""

    def __post_init__(self) -> None:
        require_choice(self.backend, "backend", ["auto", "nccl", "gloo"])
        require_choice(self.engine, "engine", ["ddp", "deepspeed"])
        require(
            self.zero_stage in (0, 1, 2), "zero_stage", f"must be 0, 1 or 2, got {self.zero_stage}"
        )
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
    timeout_s: float = 3600.0
    """How long the other ranks wait for rank 0's evaluation (over a gloo group of its own, so
    ``dist.timeout_s`` does not bound it)."""
    select_best: bool = False
    """Keep the evaluated backbone with the lowest EER on the first target as
    ``model_best.pt`` and make it the run's ``model.pt`` (the log names its step); off:
    ``model.pt`` is the last checkpoint's backbone. Without targets it has no effect."""

    def __post_init__(self) -> None:
        require(self.every >= 0, "every", f"must be >= 0, got {self.every}")

        require(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        require(self.timeout_s > 0, "timeout_s", f"must be > 0 seconds, got {self.timeout_s}")


# ---------------------------------------------------------------------------------------------
# checkpoint: saving and resuming (dist_face.checkpoint)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class CheckpointConfig:
    """When to save and what to resume from."""

    every: int = 1000
    """Optimizer steps between checkpoints (0 = only at the end)."""
    keep: int = 3
    """Complete checkpoints kept; older ones are deleted after a new one is complete."""
    resume: str = ""
    """Empty: start fresh; 'auto': latest checkpoint of this run if any; else a checkpoint dir."""
    overwrite: bool = False
    """Start fresh in a run directory that holds an earlier run, wiping that run's checkpoints,
    model, metrics and reports first (``--overwrite``). Without it such a run is refused unless
    it resumes."""
    allow_changes: list[str] = field(default_factory=list)
    """Config keys (or prefixes) a resume may change although they change what is trained
    (``--resume.allow_changes=head.margin``; ``head.margin`` covers the margin's arguments);
    without them such a resume is refused (``dist_face.checkpoint.drift``)."""

    def __post_init__(self) -> None:
        require(self.every >= 0, "every", f"must be >= 0, got {self.every}")
        require(self.keep >= 1, "keep", f"must be >= 1, got {self.keep}")


# aux: pair and metric losses on the global batch, added to the margin head (dist_face.heads)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class AuxLossConfig:
    """Auxiliary losses on the all-gathered batch, weighted and added to the head's loss."""

    losses: list[str] = field(default_factory=list)
    """Names of the auxiliary losses (contrastive, triplet, center, npair, circle, supcon)."""
    weights: list[float] = field(default_factory=list)
    """Weight of each entry of ``losses`` (same length; for center it is λ, 0.003 in the paper)."""
    head_weight: float = 1.0
    """Weight of the margin head's loss in the total."""
    contrastive_margin: float = 1.0
    """Contrastive: margin m on the Euclidean distance of normalised embeddings, in [0, 2]."""
    triplet_margin: float = 0.2
    """Triplet: margin α on squared distances of normalised embeddings."""
    triplet_mining: str = "batch_hard"
    """Triplet: batch_hard or semi_hard."""
    center_alpha: float = 0.5
    """Center loss: center update rate α in [0, 1]."""
    npair_l2_reg: float = 0.002
    """N-pair: weight λ of the embedding-norm regulariser (λ/2)·mean‖x‖²."""
    circle_m: float = 0.25
    """Circle loss: relaxation margin m."""
    circle_gamma: float = 256.0
    """Circle loss: scale γ."""
    supcon_temperature: float = 0.1
    """SupCon: temperature τ."""

    def __post_init__(self) -> None:
        from dist_face.heads.auxiliary.pair_losses import (
            PAIR_LOSSES,  # lazy: keeps torch out of config
        )

        for name in self.losses:
            require(
                name in PAIR_LOSSES,
                "losses",
                f"unknown loss {name!r}; known: {', '.join(PAIR_LOSSES.names())}",
            )
        require(
            len(set(self.losses)) == len(self.losses),
            "losses",
            f"each loss may appear once, got {self.losses}",
        )
        require(
            len(self.weights) == len(self.losses),
            "weights",
            f"needs one weight per loss: {len(self.losses)} losses, {len(self.weights)} weights",
        )
        for w in self.weights:
            require(w >= 0, "weights", f"must be >= 0, got {w}")
        require(self.head_weight >= 0, "head_weight", f"must be >= 0, got {self.head_weight}")
        require(
            0.0 <= self.contrastive_margin <= 2.0,
            "contrastive_margin",
            f"must be in [0, 2], got {self.contrastive_margin}",
        )
        require(
            self.triplet_margin >= 0, "triplet_margin", f"must be >= 0, got {self.triplet_margin}"
        )
        require_choice(self.triplet_mining, "triplet_mining", ["batch_hard", "semi_hard"])
        require(
            0.0 <= self.center_alpha <= 1.0,
            "center_alpha",
            f"must be in [0, 1], got {self.center_alpha}",
        )
        require(self.npair_l2_reg >= 0, "npair_l2_reg", f"must be >= 0, got {self.npair_l2_reg}")
        require(self.circle_m >= 0, "circle_m", f"must be >= 0, got {self.circle_m}")
        require(self.circle_gamma > 0, "circle_gamma", f"must be > 0, got {self.circle_gamma}")
        require(
            self.supcon_temperature > 0,
            "supcon_temperature",
            f"must be > 0, got {self.supcon_temperature}",
        )


# ---------------------------------------------------------------------------------------------
# metrics: Prometheus exposition (dist_face.metrics)
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class MetricsConfig:
    """Where the metrics of each rank are exposed."""

    prometheus: bool = False
    """Serve Prometheus metrics on ``host:base_port + local_rank`` while training."""
    host: str = "127.0.0.1"
    """Bind address of the exporter; 0.0.0.0 to let a cluster's Prometheus scrape it."""
    base_port: int = 9400
    """Port of local rank 0; local rank r serves on base_port + r."""
    pushgateway: str = ""
    """host:port of a Prometheus Pushgateway to push the final values to (empty: none)."""
    push_every_s: float = 0.0
    """Also push to the Pushgateway every this many seconds while training (0: only at the end)."""
    job: str = ""
    """Value of the ``job`` label (empty: the run name)."""
    tensorboard: bool = False
    """Write every logged scalar to ``<run dir>/tensorboard`` on rank 0 (extra ``tensorboard``)."""
    step_phases: bool = True
    """Time forward, head collectives, backward and optimizer of every step (device events,
    read on log steps only; see ``tools/bench_metrics.py`` for the cost)."""

    def __post_init__(self) -> None:
        require(
            0 < self.base_port < 65536, "base_port", f"must be a TCP port, got {self.base_port}"
        )
        require(bool(self.host), "host", "must not be empty (127.0.0.1 keeps the exporter local)")
        require(self.push_every_s >= 0, "push_every_s", f"must be >= 0, got {self.push_every_s}")


# ---------------------------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RunConfig:
    """Everything that defines one training run."""

    name: str = "run"
    """Run name; the run directory is ``<output_root>/<name>``."""
    output_root: str = "runs"
    """Parent directory of run directories (relative: to the directory the command was started
    in)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    aux: AuxLossConfig = field(default_factory=AuxLossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    @property
    def head_update(self) -> str:
        """``head.update`` resolved: ``sparse`` unless set, or unless micro-batches accumulate."""
        if self.head.update is not None:
            return self.head.update
        return "sparse" if self.train.grad_accum == 1 else "dense"

    def __post_init__(self) -> None:
        require(bool(self.name), "name", "must not be empty")
        require(
            self.head.update != "sparse" or self.train.grad_accum == 1,
            "head.update",
            f"sparse updates the class centers from each backward's kept rows, so it cannot "
            f"accumulate train.grad_accum={self.train.grad_accum} micro-batches; "
            "use head.update=dense",
        )
