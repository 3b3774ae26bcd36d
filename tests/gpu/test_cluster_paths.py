"""The paths a GPU cluster takes: NCCL's rules, fp16 through the trainer's own step, DALI's
mixed decoder, DeepSpeed fp16, ranks sharing a GPU, and a step that never syncs the host.

Collected everywhere, run only where CUDA is present (the conftest skips this tier otherwise);
tools/gpu_check.sh runs it on a fresh GPU node.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_face.config import load_config
from dist_face.dist import Topology, destroy_distributed, init_distributed
from dist_face.heads import MARGINS
from dist_face.metrics import InMemorySink
from dist_face.train.build import build_trainer
from dist_face.train.loop import Hook, Trainer
from tests.helpers.distributed import run_distributed

CUDA = torch.device("cuda", 0)
ROOT = Path(__file__).resolve().parents[2]
_LAUNCH_VARS = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _synthetic(tmp: Path, *extra: str) -> list[str]:
    return [
        "--data.root=synthetic",
        "--data.num_classes=200",
        "--data.synthetic_samples=4096",
        "--eval.targets=[]",
        f"--output_root={tmp}",
        "--train.log_every=1000",
        "--checkpoint.every=0",
        *extra,
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nccl_one_rank(monkeypatch: pytest.MonkeyPatch):
    """A real one-member NCCL default group, as ``dist.force_process_group`` makes."""
    for var in _LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    parallel = init_distributed(Topology(), "nccl", force_process_group=True)
    assert torch.distributed.get_backend() == "nccl"
    yield parallel
    destroy_distributed()


# -- DALI's mixed (nvJPEG) decoder inside a real training run --
def test_dali_mixed_decoder_trains_on_jpeg_shards(small_dataset: Path, tmp_path: Path) -> None:
    pytest.importorskip("nvidia.dali")
    first = next((small_dataset / "train").rglob("*.jpg"))
    assert first.read_bytes()[:2] == b"\xff\xd8"  # JPEG: nvJPEG decodes these, not PNGs
    cfg = load_config(
        "debug_cpu",
        [
            f"--data.root={small_dataset}/shards",
            "--data.backend=dali",
            "--eval.targets=[]",
            f"--output_root={tmp_path}",
            "--train.max_steps=6",
            "--train.precision=fp16",
            "--train.log_every=1",
        ],
    )
    sink = InMemorySink()
    trainer, _ = build_trainer(cfg, Topology(), CUDA, sink=sink)
    assert trainer.loader_factory.__self__.backend == "dali"  # decoder device="mixed" on CUDA
    trainer.fit()
    losses = [v for _, v in sink.series("train/loss")]
    assert len(losses) == 6 and all(v == v and v < 1e4 for v in losses)


# -- fp16 through TrainStep: loss scaling, overflow skips, the head outside autocast --
def test_fp16_trainstep_skips_overflow_and_keeps_the_head_out_of_autocast(tmp_path: Path) -> None:
    cfg = load_config(
        "debug_cpu", _synthetic(tmp_path, "--train.precision=fp16", "--train.loss_scale_init=2e30")
    )
    trainer, _ = build_trainer(cfg, Topology(), CUDA, sink=InMemorySink())
    step, head = trainer.step_fn, trainer.step_fn.loss_fn
    autocast_in_head: list[bool] = []
    head.register_forward_pre_hook(
        lambda m, a: autocast_in_head.append(torch.is_autocast_enabled())
    )
    batches = iter(trainer.loader_factory(0, 0))
    params = [p for opt in step.optimizers for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    out = step([next(batches)])  # 2e30 · loss overflows fp16 in the backbone's backward
    assert float(out["skipped"]) == 1.0
    assert all(torch.equal(a, p) for a, p in zip(before, params))  # nothing stepped
    assert float(step.scaler.scale) == pytest.approx(1e30)  # halved
    step.scaler.scale.fill_(2.0**12)
    for _ in range(3):
        out = step([next(batches)])
        assert float(out["skipped"]) == 0.0 and torch.isfinite(out["loss"])
    assert not all(torch.equal(a, p) for a, p in zip(before, params))
    assert int(step.scaler.skipped) == 1
    assert autocast_in_head == [False] * 4  # TrainStep runs the head in fp32, never autocast


# -- DeepSpeed's fp16 --
def test_deepspeed_fp16_trains(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    cfg = load_config(
        "debug_cpu",
        _synthetic(
            tmp_path,
            "--dist.engine=deepspeed",
            "--train.precision=fp16",
            "--train.max_steps=6",
            "--train.log_every=1",
        ),
    )
    sink = InMemorySink()
    try:
        trainer, _ = build_trainer(cfg, Topology(), CUDA, sink=sink)
        trainer.fit()
    finally:
        destroy_distributed()  # the engine made a one-rank group
    losses = [v for _, v in sink.series("train/loss")]
    assert len(losses) == 6 and all(v == v and v < 1e4 for v in losses)
    assert sink.series("train/loss_scale")[-1][1] > 0


# -- one rank under a real NCCL group: every collective, checkpoint and evaluation included --
def test_one_rank_run_under_a_forced_nccl_group(small_dataset: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dist_face.train",
            "--config",
            "debug_cpu",
            f"--data.root={small_dataset}/shards",
            f"--eval.targets=[{small_dataset}/val.bin]",
            "--eval.every=3",
            "--checkpoint.every=3",
            "--train.max_steps=6",
            "--train.log_every=3",
            "--dist.backend=nccl",
            "--dist.force_process_group=true",
            f"--output_root={tmp_path}",
            "--name=nccl1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "backend=nccl" in proc.stderr + proc.stdout
    run = tmp_path / "nccl1"
    assert (run / "checkpoints" / "step_00000006" / "state.pt").exists()
    records = [json.loads(line) for line in (run / "metrics-rank0.jsonl").read_text().splitlines()]
    assert any(k.startswith("eval/") for r in records for k in r)


# -- two ranks on one GPU over gloo, with CUDA tensors --
def _two_on_one_gpu(rank: int, world: int, tmp: str) -> list[float]:
    cfg = load_config(
        "debug_cpu",
        _synthetic(Path(tmp), "--train.max_steps=4", "--train.log_every=1", "--checkpoint.every=2"),
    )
    sink = InMemorySink()
    trainer, _ = build_trainer(cfg, Topology.from_env(), CUDA, sink=sink)
    trainer.fit()
    assert (Path(tmp) / cfg.name / "checkpoints" / "step_00000004").exists()
    return [v for _, v in sink.series("train/loss")]


def test_two_ranks_share_one_gpu_over_gloo(tmp_path: Path) -> None:
    losses = run_distributed(_two_on_one_gpu, 2, str(tmp_path), timeout=600)
    assert len(losses[0]) == 4 and losses[0] == losses[1]  # the global loss, on every rank


# -- the steady-state step under torch.cuda.set_sync_debug_mode("error") --
class FailOnSync(Hook):
    """Turns any host sync into an error from the third step until the one before the last."""

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        on = 2 <= trainer.state.step < trainer.total_steps - 1
        torch.cuda.set_sync_debug_mode("error" if on else "default")


@pytest.mark.parametrize("group", ["none", "nccl"])
@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_steady_state_steps_never_sync_on_cuda(tmp_path: Path, rate: float, group: str, request):
    parallel = request.getfixturevalue("nccl_one_rank") if group == "nccl" else None
    for margin in MARGINS.names():
        cfg = load_config(
            "debug_cpu",
            _synthetic(
                tmp_path,
                f"--name={margin}",
                "--train.max_steps=6",
                "--train.precision=fp16",
                f"--head.margin={margin}",
                f"--head.sample_rate={rate}",
                "--head.check_labels=true",
            ),
        )
        trainer, _ = build_trainer(cfg, Topology(), CUDA, sink=InMemorySink(), parallel=parallel)
        trainer.hooks.append(FailOnSync())
        try:
            trainer.fit()
        finally:
            torch.cuda.set_sync_debug_mode("default")
