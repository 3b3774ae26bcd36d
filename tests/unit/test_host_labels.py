"""Labels travel on the host: the loader delivers them there, the step hands them to the head as
they are (Partial FC's exact sample size on CUDA), and the auxiliary losses get a device copy.

The ``meta`` device stands for the GPU: images go there, labels must not.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from dist_face.config import DataConfig
from dist_face.data.loading.loader import build_loader
from dist_face.dist import Topology
from dist_face.heads.auxiliary.aux_losses import WeightedSum
from dist_face.train.step import screen_refused

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("root", ["synthetic", "shards"])
def test_the_loader_delivers_images_on_the_device_and_labels_on_the_host(
    color_shards: Path, root: str
) -> None:
    kw = {"num_classes": 7, "synthetic_samples": 8} if root == "synthetic" else {}
    cfg = DataConfig(
        root="synthetic" if root == "synthetic" else str(color_shards),
        backend="synthetic" if root == "synthetic" else "torch",
        batch_size=4,
        num_workers=0,
        **kw,
    )
    source = build_loader(cfg, Topology(), torch.device("meta"), seed=0)
    images, labels = next(iter(source.epoch(0)))
    assert images.device.type == "meta" and images.shape == (4, 3, 112, 112)
    assert labels.device.type == "cpu" and labels.dtype == torch.int64
    assert ((labels >= 0) & (labels < 7)).all()


def test_valid_host_labels_reach_the_loss_as_they_are() -> None:
    flag = torch.zeros(1, device="meta")
    labels = torch.tensor([3, 1])
    assert screen_refused(labels, flag) is labels  # no copy, no device
    refused = screen_refused(torch.tensor([3, -1]), torch.zeros(1))
    assert refused.tolist() == [3, 0]


class _Seen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.devices: list[str] = []

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.devices.append(y.device.type)
        return x.sum()


def test_the_head_gets_host_labels_and_auxiliary_losses_device_labels() -> None:
    head, aux = _Seen(), _Seen()
    loss = WeightedSum(head, {"aux": aux}, [0.5])
    loss(torch.empty(2, 4, device="meta"), torch.tensor([3, 1]))
    assert head.devices == ["cpu"] and aux.devices == ["meta"]
