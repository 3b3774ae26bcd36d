"""arcface_torch's augmentations on both CPU backends: each one acts, deterministically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_face.config import ConfigError, DataConfig, RunConfig, apply_overrides
from dist_face.data.loading.augment import hsv_jitter
from dist_face.data.loading.loader import build_loader
from dist_face.dist import Topology

AUGS = ["aug_downscale_p", "aug_blur_p", "aug_hsv_p", "aug_gray_p"]


def _first_batch(root: Path, backend: str, **kw: float) -> torch.Tensor:
    cfg = DataConfig(
        **{
            "root": f"{root}/shards",
            "backend": backend,
            "batch_size": 8,
            "num_workers": 1,
            "hflip": False,
            **kw,
        }
    )
    images, _ = next(iter(build_loader(cfg, Topology(), torch.device("cpu"), seed=1).epoch(0)))
    return images


@pytest.mark.parametrize("backend", ["torch", "dali"])
@pytest.mark.parametrize("aug", AUGS)
def test_each_augmentation_changes_images_deterministically(
    small_dataset: Path, backend: str, aug: str
) -> None:
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    plain = _first_batch(small_dataset, backend)
    augmented = _first_batch(small_dataset, backend, **{aug: 1.0})
    again = _first_batch(small_dataset, backend, **{aug: 1.0})
    assert augmented.shape == plain.shape and augmented.dtype == torch.float32
    assert augmented.min() >= -1 and augmented.max() <= 1
    assert (augmented - plain).abs().mean() > 1e-3  # it did something to every batch
    assert torch.equal(augmented, again)  # and the same thing for the same (seed, epoch)
    if aug == "aug_gray_p":
        assert (augmented[:, 0] - augmented[:, 1]).abs().max() <= 1.01 / 127.5
        assert (augmented[:, 1] - augmented[:, 2]).abs().max() <= 1.01 / 127.5


def test_hsv_jitter_identity_and_hue_rotation() -> None:
    img = Image.new("RGB", (8, 8), (200, 40, 40))
    same = np.asarray(hsv_jitter(img, 0.0, 1.0)).astype(int)
    assert np.abs(same - np.asarray(img)).max() <= 2
    turned = np.asarray(hsv_jitter(img, 20.0, 1.0))[0, 0]
    assert turned[1] > 40  # red moves toward orange: green rises


def test_probabilities_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"data\.aug_blur_p: must be a probability"):
        apply_overrides(RunConfig(), ["--data.aug_blur_p=1.5"])


@pytest.mark.parametrize("aug", ["aug_crop_p", "aug_color_p"])
def test_the_small_data_augmentations_change_images_deterministically(
    tiny_dataset: Path, aug: str
) -> None:
    plain = _first_batch(tiny_dataset, "torch")
    once = _first_batch(tiny_dataset, "torch", **{aug: 1.0})
    again = _first_batch(tiny_dataset, "torch", **{aug: 1.0})
    assert torch.equal(once, again)
    assert not torch.equal(once, plain)
    # small: the face stays where it was (mean difference well under a tenth of the range)
    assert (once.float() - plain.float()).abs().mean() < 0.1 * 255


def test_a_small_crop_is_the_part_of_the_face_it_names() -> None:
    from dist_face.data.loading.augment import small_crop

    pixels = np.zeros((100, 100, 3), np.uint8)
    pixels[:, 50:] = 255  # left half black, right half white
    img = Image.fromarray(pixels)
    assert np.array_equal(np.asarray(small_crop(img, 1.0, np.zeros(2))), pixels)
    # the rightmost 90 % scaled back: the edge moves from x = 50 to (50 - 10) / 0.9 ≈ 44.4
    shifted = np.asarray(small_crop(img, 0.9, np.array([1.0, 0.0])))[50, :, 0]
    assert shifted[43] < 128 < shifted[45]


def test_the_small_data_augmentations_are_the_torch_backends() -> None:
    with pytest.raises(ValueError, match=r"aug_crop_p.*torch backend only"):
        DataConfig(root="x", backend="dali", aug_crop_p=0.5)
