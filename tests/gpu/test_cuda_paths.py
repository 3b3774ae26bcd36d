"""CUDA paths: loaders on the device, DALI's mixed decoder, fp16 head and training steps.

Collected everywhere, run only where CUDA is present (the conftest skips this tier otherwise).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_face.config import DataConfig, HeadConfig, load_config
from dist_face.data.loader import build_loader
from dist_face.dist import Topology
from dist_face.heads import PartialFC, build_margin
from dist_face.metrics import InMemorySink
from dist_face.train.build import build_trainer

CUDA = torch.device("cuda", 0)


def _ids(images: torch.Tensor) -> torch.Tensor:
    return ((images[:, 0, 0, 0] + 1) * 127.5).round().long()


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_loaders_deliver_on_the_device(color_shards: Path, backend: str) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    cfg = DataConfig(root=str(color_shards), backend=backend, batch_size=4, num_workers=1)
    source = build_loader(cfg, Topology(), CUDA, seed=0)
    assert source.backend == backend
    for images, labels in source.epoch(0):
        assert images.device.type == "cuda" and labels.device.type == "cuda"
        assert torch.equal(labels, _ids(images) % 7)


def test_auto_picks_dali_with_cuda(color_shards: Path) -> None:
    pytest.importorskip("nvidia.dali")
    cfg = DataConfig(root=str(color_shards), backend="auto", batch_size=4)
    assert build_loader(cfg, Topology(), CUDA, seed=0).backend == "dali"


def test_head_under_fp16_autocast_matches_fp32() -> None:
    torch.manual_seed(0)
    emb = torch.randn(64, 128)
    labels = torch.randint(0, 1000, (64,))
    cfg = HeadConfig(margin="arcface", scale=64.0, m2=0.5)
    ref = PartialFC(128, 1000, build_margin(cfg, 1000))
    gpu = PartialFC(128, 1000, build_margin(cfg, 1000)).to(CUDA)
    gpu.load_state_dict(ref.state_dict())
    expected = ref(emb, labels)
    with torch.autocast("cuda", dtype=torch.float16):
        got = gpu(emb.to(CUDA), labels.to(CUDA))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), expected, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_training_steps_on_cuda(small_dataset: Path, tmp_path: Path, precision: str) -> None:
    cfg = load_config(
        "debug_cpu",
        [
            f"--data.root={small_dataset}/shards",
            "--eval.targets=[]",
            f"--output_root={tmp_path}",
            "--train.max_steps=6",
            f"--train.precision={precision}",
            "--train.log_every=1",
        ],
    )
    sink = InMemorySink()
    trainer, _ = build_trainer(cfg, Topology(), CUDA, sink=sink)
    trainer.fit()
    losses = [v for _, v in sink.series("train/loss")]
    assert len(losses) == 6 and all(v == v and v < 1e4 for v in losses)
    scale = sink.series("train/loss_scale")[-1][1]
    assert (
        scale == (65536.0 if precision == "fp16" else 1.0)
        or sink.series("train/skipped_steps")[-1][1] > 0
    )
