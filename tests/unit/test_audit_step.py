"""The step audit (dist_face/audit.py, tools/audit_step.py): what it counts, on cheap setups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dist_face.audit import (
    SimulatedComm,
    StepAudit,
    audit_step,
    gemm_share,
    meta_autocast,
)
from dist_face.cli.audit_step import main
from dist_face.heads import PartialFC

pytestmark = pytest.mark.unit

SMALL = ("--data.num_classes=4000",)  # the CI recipe's backbone (tiny), 4,000 classes


def _head_flops(gemm: torch.dtype | None) -> dict[str, int]:
    """One forward/backward of a 2-rank head (rank 0, simulated) under the audit."""
    sim = SimulatedComm(2, lambda n: torch.randint(0, 64, (n,)))
    audit = StepAudit()
    with sim.patched(), meta_autocast():
        head = PartialFC(16, 64, "arcface", gemm_dtype=gemm).to("meta")
        head._checked_batch = 4
        x = torch.empty(4, 16, device="meta", requires_grad=True)
        with audit, audit.in_phase("head"):
            head(x, torch.tensor([0, 5, 40, 63])).backward()
    assert audit.syncs == {}
    assert [c.kind for c in sim.calls].count("reduce_scatter") == 1  # the embeddings' gradient
    return dict(audit.flops["head"])


def test_catches_float32_head_gemms_under_bf16() -> None:
    assert set(_head_flops(torch.bfloat16)) == {"bfloat16"}
    fp32 = _head_flops(None)
    assert set(fp32) == {"float32"} and fp32["float32"] == 3 * 2 * 8 * 32 * 16  # 3 GEMMs


def test_counts_host_syncs_of_device_tensors_only() -> None:
    audit = StepAudit()
    host = torch.tensor([1.0, 2.0])
    with audit, audit.in_phase("head"):
        x = torch.ones(3, device="meta")
        bool(x.sum() > 0)  # a device value read by the host
        torch.nonzero(x)
        float(host.sum())  # host work: free
    assert audit.syncs == {"head:_local_scalar_dense": 1, "head:nonzero": 1}


def test_recipe_step_in_bf16_has_no_sync_and_bf16_head(tmp_path: Path) -> None:
    out = tmp_path / "audit.json"
    args = ["--config", "debug_cpu", "--world-size", "8", "--batch-size", "8"]
    assert main([*args, "--precision", "bf16", "--gpu", "h100", "--json", str(out), *SMALL]) == 0
    report = json.loads(out.read_text())
    assert report["host_syncs"] == 0
    assert set(report["projected_ms"]) == {"data", "backbone", "head", "comm", "optimizer", "step"}
    for key in ("flops", "bytes", "ops"):
        assert set(report[key]) == {"data", "backbone", "head", "comm", "optimizer"}
    assert gemm_share(report, "head", "bfloat16") == 1.0
    # ArcFace, SGD row update, one class block (as ms1mv3_r50 at W = 8, B = 128): 185 kernels
    # per step before the head's op reduction, 117 after (≤ 25 % of iresnet50's 471)
    assert report["ops"]["head"] <= 117
    assert report["gpu"] == "NVIDIA H100 SXM" and report["sampled_fraction"] == 1.0
    total = sum(report["projected_ms"][p] for p in report["flops"])
    assert report["projected_ms"]["step"] == pytest.approx(total)


def test_sampled_fraction_follows_partial_fc_rule() -> None:
    """r = 0.1, 500 classes per rank, 64 gathered rows: ~8 positives, so 50 kept (0.1)."""
    report = audit_step("debug_cpu", 8, 8, "fp32", "h200", (*SMALL, "--head.sample_rate=0.1"))
    assert report["sampled_fraction"] == pytest.approx(0.1)
    assert gemm_share(report, "head", "float32") == 1.0


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--config", "nosuch", "--world-size", "8"], "unknown recipe 'nosuch'"),
        (["--config", "ms1mv3_r50", "--world-size", "0"], "--world-size: must be >= 1, got 0"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], says: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*args, "--batch-size", "128", "--precision", "bf16"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
