"""Sub-center ArcFace's cleaning tool: dominant sub-centers, outliers, the cleaned shard set."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from dist_face.checkpoint import save_checkpoint
from dist_face.cli.subcenter_clean import dominant_subcenters, embed_shard_set, main
from dist_face.data.format.shards import ShardSet
from dist_face.data.packing.sources import ShardSetSource
from dist_face.dist import Topology
from dist_face.heads import PartialFC
from dist_face.heads.sharded.row_optim import build_row_optimizer
from dist_face.models import create
from dist_face.models.checkpoint import save_backbone
from tests.helpers.datasets import color_coded_shards


def test_dominant_subcenter_is_the_one_most_samples_are_closest_to() -> None:
    e = torch.eye(3)
    centers = torch.stack([torch.stack([e[0], e[1], e[2]]), torch.stack([e[2], e[1], e[0]])])
    x = torch.stack([e[1], e[1] + 0.1 * e[0], e[0], e[2], e[0] + 0.2 * e[2]])
    y = torch.tensor([0, 0, 0, 1, 1])
    dominant, cos = dominant_subcenters(x, y, centers)
    # class 0: two samples nearest sub-center 1, one nearest 0; class 1: both nearest its 0
    assert dominant.tolist() == [1, 0]
    expected = [1.0, 1 / math.sqrt(1.01), 0.0, 1.0, 0.2 / math.sqrt(1.04)]
    torch.testing.assert_close(cos, torch.tensor(expected, dtype=torch.float64))


def test_cleaning_drops_the_samples_far_from_the_dominant_subcenter(tmp_path: Path) -> None:
    classes = 4
    shards = color_coded_shards(tmp_path / "data", records=24, classes=classes, shards=2)
    run = tmp_path / "run"
    torch.manual_seed(0)
    model = create("tiny", embedding_size=16)
    save_backbone(model, run / "model.pt", "tiny", embedding_size=16)
    source = ShardSetSource(str(shards))
    emb = embed_shard_set(model, source, batch=8).double()
    labels = torch.from_numpy(np.array(source.labels, dtype=np.int64))
    # sub-center 0 of each class: its samples' mean; the others point away from all of them
    means = torch.stack([emb[labels == j].mean(0) for j in range(classes)])
    head = PartialFC(16, classes, "subcenter_arcface")
    with torch.no_grad():
        head.weight.copy_(torch.stack([means, -means, -means], dim=1).float())
    opt = build_row_optimizer(head, "sgd", 0.1, 0.0, 0.9)
    topology = Topology(rank=0, world_size=1, local_rank=0, local_world_size=1)
    save_checkpoint(
        run, 1, topology, replicated={}, head=head, head_optimizer=opt,
        class_range=(0, classes), num_classes=classes, keep=1,
    )  # fmt: skip
    angles = torch.rad2deg(torch.acos(torch.nn.functional.cosine_similarity(emb, means[labels])))
    middle = angles.sort().values[len(angles) // 2 - 1 : len(angles) // 2 + 1]
    threshold = float(middle.mean())  # half the samples beyond it, none near it
    out = tmp_path / "clean"
    args = ["--run", str(run), "--data", str(shards), "--out", str(out)]
    assert main([*args, "--threshold-deg", str(threshold)]) == 0
    kept = np.flatnonzero((angles <= threshold).numpy())
    clean = ShardSet.open(str(out))
    assert len(clean) == len(kept) < len(source)
    for new, old in enumerate(kept):  # same bytes, same labels, same order
        assert clean.read_image(new) == source.shard_set.read_image(int(old))
    report = json.loads((out / "dropped.json").read_text())
    assert sorted(d["index"] for d in report["dropped"]) == sorted(
        set(range(len(source))) - set(kept.tolist())
    )
    assert all(d["angle_deg"] > threshold for d in report["dropped"])
    dominant = torch.load(out / "dominant_centers.pt")
    torch.testing.assert_close(dominant, means.float())
    # a run with one center per class is refused in one line
    plain = tmp_path / "plain"
    head1 = PartialFC(16, classes, "arcface")
    opt1 = build_row_optimizer(head1, "sgd", 0.1, 0.0, 0.9)
    save_checkpoint(
        plain, 1, topology, replicated={}, head=head1, head_optimizer=opt1,
        class_range=(0, classes), num_classes=classes, keep=1,
    )  # fmt: skip
    save_backbone(model, plain / "model.pt", "tiny", embedding_size=16)
    assert main(["--run", str(plain), "--data", str(shards), "--out", str(tmp_path / "x")]) == 2
