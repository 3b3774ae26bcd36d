"""The projection (dist_face/projection.py) against published throughputs and its own model.

The calibration anchors are published measurements with named hardware: the audit counts
each anchor's step on meta tensors and the projection must land within ±25 % of the
published images/s per GPU.
"""

from __future__ import annotations

import math

import pytest

from dist_face.audit import audit_step
from dist_face.calibration import project_anchor
from dist_face.projection import ANCHORS, CALIBRATED, GPUS, collective_ms, label_path_ms

pytestmark = pytest.mark.unit

SMALL = ("--data.num_classes=4000",)


def _anchor(gpu: str, model: str):
    (anchor,) = [a for a in ANCHORS if a.gpu == gpu and a.model == model]
    return anchor


@pytest.mark.parametrize(
    ("gpu", "model", "batch", "precision", "published"),
    [
        # arcface_torch docs/speed_benchmark.md: 8x Tesla V100 32GB, r50, fp16, 128 per GPU,
        # Partial FC 0.1, 125k identities: 5004 samples/s for the 8 GPUs
        ("v100", "iresnet50", 128, "fp16", 5004 / 8),
        # NVIDIA DeepLearningExamples ResNet-50 v1.5 (PyTorch, NGC 21.03): 1x A100 80GB,
        # mixed precision, batch 256, 224x224: 2470 img/s
        ("a100", "resnet50", 256, "fp16", 2470.0),
        # the same README: 1x V100 32GB, mixed precision, batch 256: 1156 img/s
        pytest.param("v100", "resnet50", 256, "fp16", 1156.0, marks=pytest.mark.matrix),
    ],
)
def test_projection_reproduces_published_throughput(
    gpu: str, model: str, batch: int, precision: str, published: float
) -> None:
    anchor = _anchor(gpu, model)
    assert (anchor.batch, anchor.precision, anchor.images_per_s) == (batch, precision, published)
    projected = project_anchor(anchor)
    assert 0.75 * published <= projected <= 1.25 * published, (projected, published)


def test_collectives_follow_the_ring_and_tree_model() -> None:
    gpu = GPUS["h100"]
    mib = 2**20
    # within a node: (W - 1) NVLink steps and (W - 1)/W of the bytes at 80 % of 450 GB/s
    expected = (7 * 2.0e-6 + 7 / 8 * 64 * mib / (450e9 * 0.8)) * 1e3
    assert collective_ms("all_gather", 64 * mib, 8, gpu) == pytest.approx(expected)
    # across nodes the NIC (50 GB/s) and InfiniBand's latency take over
    across = collective_ms("all_gather", 64 * mib, 64, gpu)
    assert across == pytest.approx((63 * 5.0e-6 + 63 / 64 * 64 * mib / (50e9 * 0.8)) * 1e3)
    # a small all-reduce at W = 512 takes the tree: 2·log2(512) steps, not 2·511
    small = collective_ms("all_reduce", 8, 512, gpu)
    assert small == pytest.approx((2 * 9 * 5.0e-6 + 2 * 8 / (50e9 * 0.8)) * 1e3)
    assert collective_ms("all_reduce", 8, 1, gpu) == 0.0


@pytest.mark.parametrize("world", [8, 64, 512])
def test_host_label_gather_is_a_ring_of_tcp_hops(world: int) -> None:
    lp = label_path_ms(world, 128, sample_ms=1.0)
    moved = (world - 1) * 128 * 8 / 2.5e9 * 1e3
    assert lp["gather_ms"] == pytest.approx((world - 1) * 30e-3 + moved)
    assert lp["gather_low_ms"] < lp["gather_ms"] < lp["gather_high_ms"]
    assert lp["total_ms"] == pytest.approx(lp["gather_ms"] + 1.0)


def test_report_sums_phases_counts_gemm_bytes_host_collectives_and_carries_its_band() -> None:
    report = audit_step("debug_cpu", 64, 8, "bf16", "a100", (*SMALL, "--head.sample_rate=0.1"))
    ms = report["projected_ms"]
    assert ms["step"] == pytest.approx(sum(v for k, v in ms.items() if k != "step"))
    # each phase is the sum of its op classes (kernels one after another, no max)
    for phase, classes in report["by_class"].items():
        assert ms[phase] == pytest.approx(sum(classes.values())), phase
    assert report["gemm_bytes"]["backbone"] > 0 and report["gemm_bytes"]["head"] > 0
    assert report["collectives"]["host_calls"] == 1  # the labels' gather over gloo
    lp = report["label_path"]
    assert lp["gather_ms"] == pytest.approx(label_path_ms(64, 8, 0)["gather_ms"])
    assert lp["exposed_ms"] == max(0.0, lp["total_ms"] - ms["step"])
    low, high = report["projected_band_ms"]
    assert low == pytest.approx(0.75 * ms["step"]) and high == pytest.approx(1.25 * ms["step"])
    assert report["calibrated"] == CALIBRATED and "calibrated" in report["basis"]
    assert report["images_per_s"] == pytest.approx(8 / ms["step"] * 1e3)
    assert math.isclose(report["images_per_s_band"][0], 8 / high * 1e3)
