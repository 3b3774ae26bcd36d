"""Step time on a GPU from the audit's counts: calibrated per-op-class efficiencies, collectives.

Projection, not measurement: no GPU has run this code. The model, stated:

* **Kernels run one after another.** Every device op the audit saw is one kernel; its time is
  its own roofline at the achieved (not peak) rates of its class, at least the per-kernel
  floor, and the kernels' times are summed (nothing overlaps inside a phase; the phases are
  summed too):

  - GEMM/convolution: ``max(FLOPs / (peak(dtype) · η_gemm), bytes / (HBM · η_mem))``; the
    bytes are the operands and the result (counted);
  - elementwise: ``bytes / (HBM · η_mem)``; reductions (norms, softmax, BatchNorm
    statistics, top-k...): ``bytes / (HBM · η_red)``;
  - launches: every kernel takes at least ``kernel_us`` (launch, tail and the host's
    dispatch of a small eager-mode kernel).

* **Collectives** (:func:`collective_ms`): NCCL's ring for all-gather and reduce-scatter,
  ring or tree (the faster) for all-reduce, ``α`` per step of the algorithm and the bus
  bytes at ``η_link`` of the link: NVLink within a node (W ≤ 8), InfiniBand across nodes
  (one NIC per GPU; the ring is then limited by it). DDP's gradient all-reduce is counted
  serially after backward (an upper bound: DDP overlaps it).

* **The host label path** (:func:`label_path_ms`): the gloo all-gather of the ``N = W·B``
  int64 labels, a ring of ``W − 1`` TCP hops at ``GLOO_HOP_US`` each plus the bytes at
  ``GLOO_GBS``, and Partial FC's sample, timed on this CPU. It runs one step ahead on a worker
  thread (:mod:`dist_face.heads.sharded.label_path`): only what exceeds the step is exposed.

The efficiencies come from published training throughputs with named hardware
(:data:`ANCHORS`): the per-class rates were chosen so that the audit of each anchor's step
lands on its published images/s; ``tests/unit/test_projection.py`` re-projects them
(±25 %). V100 and A100 are calibrated. H100 and H200 have no published eager-mode anchor
here yet: their efficiencies are A100's scaled by :data:`HOPPER_SCALE` (an assumption), and
their band is wider. Every projection carries :data:`CALIBRATED` and its band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CALIBRATED = "2026-12-07"
"""When the efficiencies were last fitted to :data:`ANCHORS`."""

GPUS_PER_NODE = 8

GLOO_HOP_US = (15.0, 30.0, 50.0)
"""One TCP hop of gloo's ring between hosts, µs: low, central, high (kernel TCP stack)."""
GLOO_GBS = 2.5
"""Host-to-host TCP throughput a gloo ring reaches, GB/s (a 25 GbE host network)."""


@dataclass(frozen=True)
class Anchor:
    """A published training throughput the projection reproduces (per GPU)."""

    gpu: str
    model: str
    batch: int  # per GPU
    precision: str
    world: int
    images_per_s: float  # per GPU
    source: str
    classes: int = 0  # face recognition: identities (0: ImageNet's 1000-way linear layer)
    sample_rate: float = 1.0


ANCHORS = (
    Anchor(
        "v100",
        "iresnet50",
        128,
        "fp16",
        8,
        5004 / 8,
        "deepinsight/insightface recognition/arcface_torch docs/speed_benchmark.md: "
        "8x Tesla V100 32GB, r50, fp16, batch 1024 (128 per GPU), Partial FC 0.1, "
        "125,000 identities: 5004 samples/s",
        classes=125_000,
        sample_rate=0.1,
    ),
    Anchor(
        "a100",
        "resnet50",
        256,
        "fp16",
        1,
        2470.0,
        "NVIDIA/DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/README.md "
        "(pytorch-21.03 NGC container): DGX A100 80GB, 1 GPU, mixed precision, batch 256, "
        "224x224: 2470 img/s",
    ),
    Anchor(
        "v100",
        "resnet50",
        256,
        "fp16",
        1,
        1156.0,
        "NVIDIA/DeepLearningExamples PyTorch/Classification/ConvNets/resnet50v1.5/README.md "
        "(pytorch-21.03 NGC container): DGX-1 32GB, 1x V100 32GB, mixed precision, batch 256, "
        "224x224: 1156 img/s",
    ),
)


@dataclass(frozen=True)
class GPU:
    """One GPU's published peaks (SXM) and the efficiencies achieved on them.

    Attributes:
        name: the product.
        tflops: dense peak by input dtype; float32 GEMMs/convolutions at the TF32 peak where
            there is one (cuDNN's default for convolutions, ``head.tf32`` for the head).
        hbm_gbs: memory bandwidth, GB/s.
        nvlink_gbs: NVLink bandwidth per GPU and direction, GB/s (within a node).
        ib_gbs: InfiniBand per GPU (one NIC each), GB/s (across nodes).
        eta_gemm: achieved share of the tensor peak by eager convolutions and GEMMs.
        eta_mem: achieved share of HBM bandwidth by elementwise kernels.
        eta_red: achieved share of HBM bandwidth by reductions. Both are effective values
            against the audit's byte count (one read of each input, one write of each
            output): BatchNorm's statistics pass, which reads its input once more, is in them.
        kernel_us: the least a kernel takes (launch, tail, eager dispatch).
        alpha_nvlink_us: NCCL latency per algorithm step over NVLink.
        alpha_ib_us: NCCL latency per algorithm step over InfiniBand.
        eta_link: achieved share of the link bandwidth by NCCL's ring.
        band: relative uncertainty of a projection (± this fraction).
        basis: where the efficiencies come from.
    """

    name: str
    tflops: dict[str, float]
    hbm_gbs: float
    nvlink_gbs: float
    ib_gbs: float
    eta_gemm: float
    eta_mem: float
    eta_red: float
    kernel_us: float
    alpha_nvlink_us: float
    alpha_ib_us: float
    eta_link: float
    band: float
    basis: str


HOPPER_SCALE = 0.7
"""H100/H200 efficiencies = A100's × this (assumed: Hopper's larger tensor-core tiles are
harder to fill at face-recognition shapes in eager mode; no published anchor yet)."""

# A100: η_gemm fitted to NVIDIA's ResNet-50 (0.33 alone), times V100's ratio between the fit
# of both V100 anchors and the fit of its ResNet-50 alone (0.28 / 0.40 = 0.70): the face
# anchor's backbone runs further below its FLOP roofline than an ImageNet ResNet-50, and the
# projection is for face backbones
_A100 = {"eta_gemm": 0.23, "eta_mem": 0.9, "eta_red": 0.9, "kernel_us": 5.0}

GPUS = {
    "v100": GPU(
        "NVIDIA V100 SXM2 32GB",
        {"bfloat16": 125.0, "float16": 125.0, "float32": 15.7, "float64": 7.8},
        900.0,
        150.0,  # NVLink 2: 6 links x 25 GB/s per direction
        6.25,  # DGX-1: 4x 100 Gb/s EDR for 8 GPUs
        # fitted to both V100 anchors at once (their ratios then 1.17 and 0.80): no single
        # value fits both better, the face backbone runs further below its FLOP roofline
        eta_gemm=0.28,
        eta_mem=0.9,
        eta_red=0.9,
        kernel_us=6.0,
        alpha_nvlink_us=3.0,
        alpha_ib_us=8.0,
        eta_link=0.75,
        band=0.25,
        basis="calibrated: arcface_torch r50 on 8x V100, NVIDIA ResNet-50 on 1x V100",
    ),
    "a100": GPU(
        "NVIDIA A100 SXM4 80GB",
        {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0, "float64": 19.5},
        2039.0,
        300.0,  # NVLink 3: 12 links x 25 GB/s
        25.0,  # 200 Gb/s HDR per GPU
        **_A100,
        alpha_nvlink_us=2.5,
        alpha_ib_us=6.0,
        eta_link=0.8,
        band=0.25,
        basis="calibrated: NVIDIA ResNet-50 on 1x A100 80GB",
    ),
    "h100": GPU(
        "NVIDIA H100 SXM",
        {"bfloat16": 989.0, "float16": 989.0, "float32": 494.7, "float64": 66.9},
        3350.0,
        450.0,  # NVLink 4: 18 links x 25 GB/s
        50.0,  # 400 Gb/s NDR per GPU
        eta_gemm=_A100["eta_gemm"] * HOPPER_SCALE,
        eta_mem=_A100["eta_mem"] * HOPPER_SCALE,
        eta_red=_A100["eta_red"] * HOPPER_SCALE,
        kernel_us=_A100["kernel_us"],
        alpha_nvlink_us=2.0,
        alpha_ib_us=5.0,
        eta_link=0.8,
        band=0.5,
        basis=f"extrapolated: A100's efficiencies x {HOPPER_SCALE} (no H100 anchor yet)",
    ),
    "h200": GPU(
        "NVIDIA H200 SXM",
        {"bfloat16": 989.0, "float16": 989.0, "float32": 494.7, "float64": 66.9},
        4800.0,
        450.0,
        50.0,
        eta_gemm=_A100["eta_gemm"] * HOPPER_SCALE,
        eta_mem=_A100["eta_mem"] * HOPPER_SCALE,
        eta_red=_A100["eta_red"] * HOPPER_SCALE,
        kernel_us=_A100["kernel_us"],
        alpha_nvlink_us=2.0,
        alpha_ib_us=5.0,
        eta_link=0.8,
        band=0.5,
        basis=f"extrapolated: A100's efficiencies x {HOPPER_SCALE} (no H200 anchor yet)",
    ),
}


@dataclass(frozen=True)
class Kernel:
    """One device op as the audit saw it."""

    kind: str  # gemm, elementwise, reduction
    dtype: str  # input dtype (GEMMs)
    flops: int
    bytes: int


def kernel_ms(k: Kernel, gpu: GPU) -> float:
    """Milliseconds of one kernel on ``gpu`` (module doc), the floor included."""
    if k.kind == "gemm":
        t = max(
            k.flops / (gpu.tflops[k.dtype] * 1e12 * gpu.eta_gemm),
            k.bytes / (gpu.hbm_gbs * 1e9 * gpu.eta_mem),
        )
    else:
        eta = gpu.eta_red if k.kind == "reduction" else gpu.eta_mem
        t = k.bytes / (gpu.hbm_gbs * 1e9 * eta)
    return max(t, gpu.kernel_us * 1e-6) * 1e3


def by_class_ms(kernels: list[Kernel], gpu: GPU) -> dict[str, float]:
    """Milliseconds per op class: the rooflines, and what the per-kernel floor adds to them."""
    out = {"gemm": 0.0, "elementwise": 0.0, "reduction": 0.0, "launches": 0.0}
    for k in kernels:
        total = kernel_ms(k, gpu)
        bare = kernel_ms(k, _no_floor(gpu))
        out[k.kind] += bare
        out["launches"] += total - bare
    return out


def _no_floor(gpu: GPU) -> GPU:
    return GPU(**{**gpu.__dict__, "kernel_us": 0.0})


def collective_ms(kind: str, nbytes: int, world: int, gpu: GPU) -> float:
    """Milliseconds of one NCCL collective of ``nbytes`` (the full tensor) over ``world`` GPUs.

    Ring: ``(W − 1)`` steps (all-gather, reduce-scatter) or ``2(W − 1)`` (all-reduce), each
    ``α``, and ``(W − 1)/W`` of the bytes (twice for all-reduce) at ``η_link`` of the link;
    all-reduce may take the tree instead: ``2·⌈log2 W⌉`` steps and twice the bytes. Within a
    node the link is NVLink, across nodes the GPU's InfiniBand NIC (the slowest hop of the
    ring, and NCCL's inter-node latency).
    """
    if world <= 1:
        return 0.0
    one_node = world <= GPUS_PER_NODE
    alpha = (gpu.alpha_nvlink_us if one_node else gpu.alpha_ib_us) * 1e-6
    link = (gpu.nvlink_gbs if one_node else gpu.ib_gbs) * 1e9 * gpu.eta_link
    share = (world - 1) / world
    if kind == "all_reduce":
        ring = 2 * (world - 1) * alpha + 2 * share * nbytes / link
        tree = 2 * math.ceil(math.log2(world)) * alpha + 2 * nbytes / link
        return min(ring, tree) * 1e3
    return ((world - 1) * alpha + share * nbytes / link) * 1e3


def label_path_ms(world: int, batch: int, sample_ms: float) -> dict[str, float]:
    """The host label path at ``world`` ranks: the gloo gather (low, central, high) + sample.

    Args:
        world: ranks W.
        batch: B per rank (``N = W·B`` int64 labels gathered).
        sample_ms: Partial FC's sample on this host (the audit times it).

    Returns:
        ``gather_ms`` and its ``gather_low_ms``/``gather_high_ms``, ``sample_ms``, ``total_ms``.
    """
    if world <= 1:
        low = mid = high = 0.0
    else:
        moved = (world - 1) / world * world * batch * 8 / (GLOO_GBS * 1e9) * 1e3
        low, mid, high = ((world - 1) * hop * 1e-3 + moved for hop in GLOO_HOP_US)
    return {
        "gather_low_ms": low,
        "gather_ms": mid,
        "gather_high_ms": high,
        "sample_ms": sample_ms,
        "total_ms": mid + sample_ms,
    }
