"""``.bin`` evaluation embeds each distinct image once and scores as ``score-pairs`` does."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dist_face.eval.bin_format import distinct_images


class CountingTiny(torch.nn.Module):
    """The real ``tiny`` backbone, counting the images it embeds."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += len(x)
        return self.inner(x)


def test_distinct_images_index_each_pair() -> None:
    images = [b"a", b"b", b"a", b"c", b"b", b"b"]
    distinct, pairs = distinct_images(images)
    assert distinct == [b"a", b"b", b"c"]
    assert pairs.tolist() == [[0, 1], [0, 2], [1, 1]]


def test_the_bin_embeds_each_image_once_and_scores_as_score_pairs(tmp_path: Path) -> None:
    from dist_face.cli import evaluate, score_pairs
    from dist_face.eval.verification import evaluate_model
    from dist_face.models import create, save_backbone

    rng = np.random.default_rng(0)
    names = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (112, 112, 3), np.uint8)).save(tmp_path / f"{i}.png")
        names.append(f"{i}.png")
    pairs = [(int(a), int(b)) for a, b in rng.integers(0, 12, (40, 2))]
    issame = [bool(rng.random() < 0.5) for _ in pairs]
    rows = [f"{names[a]},{names[b]},{int(s)}" for (a, b), s in zip(pairs, issame)]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    data = [(tmp_path / names[k]).read_bytes() for pair in pairs for k in pair]
    with open(tmp_path / "pairs.bin", "wb") as f:
        pickle.dump((data, issame), f)
    torch.manual_seed(0)
    ckpt = save_backbone(create("tiny", embedding_size=16), tmp_path / "m.pt", "tiny",
                         embedding_size=16)  # fmt: skip
    common = ["--backbone", str(ckpt)]
    assert score_pairs.main([*common, "--pairs", str(tmp_path / "pairs.csv"),
                             "--out", str(tmp_path / "s.csv")]) == 0  # fmt: skip
    assert evaluate.main([*common, "--bin", str(tmp_path / "pairs.bin"),
                          "--out", str(tmp_path / "e.json"), "--quiet"]) == 0  # fmt: skip
    ours = json.loads((tmp_path / "e.json").read_text())["pairs/trained"]
    reference = json.loads((tmp_path / "s.json").read_text())
    assert abs(ours["eer"] - reference["eer"]) < 1e-9
    assert abs(ours["accuracy"] - reference["accuracy"]) < 1e-9

    from dist_face.eval.bin_format import decode_images

    distinct, index = distinct_images(data)
    counting = CountingTiny(create("tiny", embedding_size=16))
    evaluate_model(counting, decode_images(distinct), np.array(issame), 8, pairs=index)
    assert counting.seen == 2 * len(set(k for pair in pairs for k in pair))  # image + mirror
