"""CUDA paths: images on the device and labels on the host, DALI on CUDA, training steps.

Collected everywhere, run only where CUDA is present (the conftest skips this tier otherwise).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dist_face.config import DataConfig, load_config
from dist_face.data.loading.loader import build_loader
from dist_face.dist import Topology
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
        # labels stay on the host, pinned: the head gathers and samples them there
        assert images.device.type == "cuda" and labels.device.type == "cpu"
        assert labels.is_pinned()
        assert torch.equal(labels, _ids(images).cpu() % 7)


def test_auto_picks_dali_with_cuda(color_shards: Path) -> None:
    pytest.importorskip("nvidia.dali")
    cfg = DataConfig(root=str(color_shards), backend="auto", batch_size=4)
    assert build_loader(cfg, Topology(), CUDA, seed=0).backend == "dali"


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
