"""The published throughputs the projection is calibrated on, re-projected by the audit.

Each :data:`~dist_face.projection.ANCHORS` entry names its hardware, model, batch and
precision; :func:`project_anchor` counts that step with the audit (:func:`~dist_face.audit.
count_step`) and projects it onto the anchor's GPU profile. The face-recognition anchor is an
iresnet50 with a Partial FC head (this package's recipe, at the anchor's classes and rate);
the ImageNet anchors are a ResNet-50 v1.5 (:func:`resnet50`), 224×224, with its 1000-way
linear layer and softmax cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_face.audit import Counted, SimulatedComm, count_step, report
from dist_face.config import load_config
from dist_face.heads import build_head
from dist_face.models import build_backbone
from dist_face.projection import ANCHORS, GPUS, Anchor


class _Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride on the 3×3 convolution."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def resnet50(num_classes: int = 1000) -> nn.Sequential:
    """ResNet-50 v1.5 (the NVIDIA anchors' model): ``[B, 3, 224, 224]`` → ``[B, classes]``."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(_Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def count_anchor(anchor: Anchor) -> Counted:
    """The anchor's step counted on meta tensors."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(anchor.precision, torch.float32)
    if anchor.model == "resnet50":  # NVIDIA's recipe: SGD momentum 0.875, weight decay 3e-5
        with torch.device("meta"):
            backbone = resnet50().to(dtype)
        optim = ("sgd", 0.256, 3.05e-5, 0.875)
        return count_step(backbone, anchor.batch, 224, anchor.precision, anchor.world, optim)
    cfg = load_config(
        "ms1mv3_r50",
        [
            f"--model.name={anchor.model}",
            f"--data.num_classes={anchor.classes}",
            f"--head.sample_rate={anchor.sample_rate}",
            f"--train.precision={anchor.precision}",
        ],
    )
    with SimulatedComm(anchor.world, lambda n: torch.zeros(n)).patched():
        with torch.device("meta"):
            backbone = build_backbone(cfg.model).to(dtype)
        head = build_head(
            cfg.head, cfg.model.embedding_size, anchor.classes, precision=anchor.precision
        ).to("meta")
        head._checked_batch = anchor.batch
    optim = (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum)
    return count_step(
        backbone, anchor.batch, 112, anchor.precision, anchor.world, optim, head, anchor.classes
    )


def project_anchor(anchor: Anchor) -> float:
    """Projected images/s per GPU of the anchor's step on its GPU profile."""
    counted = count_anchor(anchor)
    rep = report(
        counted, anchor.model, anchor.world, anchor.batch, anchor.precision, GPUS[anchor.gpu]
    )
    return rep["images_per_s"]


def calibration_table() -> str:
    """Markdown: every anchor, published against projected images/s per GPU."""
    rows = [
        "| GPU | model | B/GPU | precision | W | published img/s/GPU | projected | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in ANCHORS:
        got = project_anchor(a)
        rows.append(
            f"| {a.gpu} | {a.model} | {a.batch} | {a.precision} | {a.world} | "
            f"{a.images_per_s:.0f} | {got:.0f} | {got / a.images_per_s:.2f} |"
        )
    return "\n".join(rows)
