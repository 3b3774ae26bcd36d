"""``dist-face-pack --detect``: SCRFD-style outputs of a tiny ONNX model with known outputs.

No real detector weights can be downloaded here, so the model is built by the test: a graph
whose outputs are fixed tensors in the SCRFD layout (9 outputs: scores, box distances and
keypoint offsets for strides 8, 16, 32, two anchors per cell), with the face scores switched
off for a dark image. The decoded points are checked against the points the test encoded and
against InsightFace's own SCRFD decoder run on the same model.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dist_face.data.format.shards import ShardSet
from dist_face.data.packing.aligned import align_image
from dist_face.data.packing.detect import FaceDetector, anchor_centers
from tests.helpers.pgm_faces import make_pgm_faces

pytest.importorskip("onnxruntime")
SIDE = 64  # model input 64×64: 8×8, 4×4 and 2×2 cells
STRIDES = (8, 16, 32)


class FixedDetector(nn.Module):
    """Returns fixed SCRFD outputs; every score is zeroed when the image is nearly black."""

    def __init__(self, outputs: list[np.ndarray]) -> None:
        super().__init__()
        for k, value in enumerate(outputs):
            self.register_buffer(f"out{k}", torch.from_numpy(value))
        self.count = len(outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        lit = (x.mean() > -0.9).float()  # normalised mean above -0.9: pixels above ~12
        outs = [getattr(self, f"out{k}") for k in range(self.count)]
        return tuple(o * lit if k < 3 else o + 0 * lit for k, o in enumerate(outs))


def _outputs(points_in_input: np.ndarray) -> list[np.ndarray]:
    """Scores 0.1 everywhere, the face at stride 16 cell (row 1, col 2) anchor 1 with 0.9,
    a weaker decoy (0.6) at stride 8; keypoint offsets that decode to ``points_in_input``."""
    scores, boxes, kps = [], [], []
    for stride in STRIDES:
        n = (SIDE // stride) ** 2 * 2
        scores.append(np.full((n, 1), 0.1, np.float32))
        boxes.append(np.ones((n, 4), np.float32))
        kps.append(np.zeros((n, 10), np.float32))
    face = (1 * 4 + 2) * 2 + 1
    center = anchor_centers(4, 4, 16, 2)[face]
    assert center.tolist() == [32.0, 16.0]
    scores[1][face] = 0.9
    kps[1][face] = ((points_in_input - center) / 16).ravel()
    scores[0][5] = 0.6
    kps[0][5] = 3.0
    return scores + boxes + kps


@pytest.fixture
def model_and_photos(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    root = tmp_path / "faces"
    points = make_pgm_faces(root, people=2, per_person=1)
    Image.fromarray(np.full((112, 92), 3, np.uint8)).save(root / "s2" / "dark.pgm")
    truth = points["s1/1.pgm"]
    scale = SIDE / 112  # a 92×112 photo fits 64×64 as 52×64 at the top left
    model = FixedDetector(_outputs((truth * scale).astype(np.float32)))
    path = tmp_path / "det.onnx"
    dummy = torch.zeros(1, 3, SIDE, SIDE)
    names = [f"{kind}_{s}" for kind in ("score", "bbox", "kps") for s in STRIDES]
    torch.onnx.export(model, (dummy,), str(path), input_names=["input.1"], output_names=names,
                      opset_version=17, dynamo=False)  # fmt: skip
    return path, root, truth


def test_the_decoded_points_are_the_encoded_ones_and_insightfaces(model_and_photos) -> None:
    path, root, truth = model_and_photos
    data = (root / "s1" / "1.pgm").read_bytes()
    ours = FaceDetector(str(path)).landmarks(data)
    assert ours is not None and np.allclose(ours, truth, atol=1e-3)  # the 0.9 face, not 0.6
    assert FaceDetector(str(path), threshold=0.95).landmarks(data) is None
    dark = (root / "s2" / "dark.pgm").read_bytes()
    assert FaceDetector(str(path)).landmarks(dark) is None

    scrfd = pytest.importorskip("insightface.model_zoo.scrfd")
    reference = scrfd.SCRFD(model_file=str(path))
    with Image.open(io.BytesIO(data)) as im:
        bgr = np.asarray(im.convert("RGB"))[..., ::-1].copy()
    _, kpss = reference.detect(bgr, input_size=(SIDE, SIDE), det_thresh=0.5)
    assert np.allclose(ours, kpss[0], atol=1e-3)


def test_pack_with_a_detector_aligns_and_reports_faces_not_found(
    model_and_photos, tmp_path, capsys
) -> None:
    from dist_face.cli.pack import main

    path, root, truth = model_and_photos
    out = tmp_path / "packed"
    assert main([str(root), str(out), "--detect", str(path), "--quiet"]) == 0
    assert "left out 1 image(s) without landmarks or a detected face" in capsys.readouterr().out
    report = (out / "pack_report.txt").read_text()
    assert "s2/dark.pgm\tno face found (score < 0.5)" in report
    shards = ShardSet.open(out)
    sources = shards.manifest.column("source").to_pylist()
    assert sorted(sources) == ["s1/1.pgm", "s2/1.pgm"]
    i = sources.index("s1/1.pgm")
    with Image.open(io.BytesIO(shards.read_image(i)[0])) as im:
        packed = np.asarray(im).astype(int)
    expected = align_image((root / "s1" / "1.pgm").read_bytes(), truth).astype(int)
    assert np.abs(packed - expected).max() <= 1


def test_a_model_without_five_point_outputs_is_refused(tmp_path) -> None:
    class One(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    path = tmp_path / "cls.onnx"
    torch.onnx.export(One(), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(ValueError, match=r"has 9 or 15 outputs .* this one has 1"):
        FaceDetector(str(path))
