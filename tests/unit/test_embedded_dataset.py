"""The embedded synthetic face dataset: deterministic, well-formed, hard for an untrained net."""

from __future__ import annotations

import io
import json

import numpy as np
import torch
from PIL import Image
from torch import nn

from dist_face.data.synthetic.embedded import EmbeddedSpec, generate_embedded_dataset
from dist_face.data.synthetic.faces import sample_jpeg
from dist_face.eval.bin_format import decode_images, load_bin
from dist_face.eval.verification import evaluate_model


def test_samples_are_deterministic_and_vary() -> None:
    a, b = sample_jpeg(0, 3, 1), sample_jpeg(0, 3, 1)
    assert a == b
    assert sample_jpeg(0, 3, 2) != a and sample_jpeg(1, 3, 1) != a
    img = Image.open(io.BytesIO(a))
    assert (img.format, img.size, img.mode) == ("JPEG", (112, 112), "RGB")


def test_layout_and_metadata(tmp_path) -> None:
    spec = EmbeddedSpec(identities=3, images_per_identity=2, val_identities=4, val_pairs=10)
    out = generate_embedded_dataset(tmp_path / "ds", spec, workers=1)
    folders = sorted(p.name for p in (out / "train").iterdir())
    assert folders == ["00000", "00001", "00002"]
    assert sorted(p.name for p in (out / "train" / "00001").iterdir()) == ["000.jpg", "001.jpg"]
    assert (out / "train/00001/001.jpg").read_bytes() == sample_jpeg(0, 1, 1)
    images, issame = load_bin(out / "val.bin")
    assert len(images) == 20 and issame.sum() == 5
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["num_classes"] == 3 and meta["num_images"] == 6


def _random_cnn() -> nn.Module:
    layers: list[nn.Module] = []
    c = 3
    for width in (32, 64, 128, 128):
        layers += [nn.Conv2d(c, width, 3, 2, 1), nn.BatchNorm2d(width), nn.PReLU(width)]
        c = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(c * 49, 128))


def test_untrained_network_is_near_chance(tmp_path) -> None:
    spec = EmbeddedSpec(identities=2, images_per_identity=1, val_identities=40, val_pairs=300)
    out = generate_embedded_dataset(tmp_path / "ds", spec, workers=2)
    images, issame = load_bin(out / "val.bin")
    x = decode_images(images)
    accs = []
    for seed in range(2):
        torch.manual_seed(seed)
        net = _random_cnn()
        with torch.no_grad():  # BN statistics of the data, as after a first training batch
            net(torch.from_numpy(x[:128]).permute(0, 3, 1, 2).float().sub(127.5).div(127.5))
        accs.append(evaluate_model(net, x, issame).accuracy)
    # chance is 0.5; colour and layout cues leave a random net a little above it
    assert np.mean(accs) < 0.7, accs
