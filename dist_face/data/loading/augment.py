"""Photometric and resolution augmentations of arcface_torch's DALI pipeline, on the CPU.

Each is applied independently with its probability from ``DataConfig``, in this order:
downscale-blur (resize to U(56, 89) px and back), Gaussian blur (σ 0.5 or 1.0 px), HSV jitter
(hue +U(0, 20)°, saturation ×U(1, 1.2)), grayscale. The DALI backend applies the same ones with
DALI operators (:mod:`dist_face.data.loading.dali_loader`).

Two more, for small sets of aligned faces (torch backend only), come last: a small crop and
shift (a square of U(0.88, 1) of the side at a random place, scaled back: the face moves by up
to 6 % of the side and grows by up to 14 %, still on the template) and colour jitter
(brightness, contrast and saturation each ×U(0.8, 1.2)).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

if TYPE_CHECKING:
    from dist_face.config.schema import DataConfig


def augment(img: Image.Image, rng: np.random.Generator, cfg: DataConfig) -> Image.Image:
    """Return ``img`` (RGB, square) with the configured augmentations drawn from ``rng``."""
    size = img.size
    if rng.random() < cfg.aug_downscale_p:
        side = int(rng.integers(56, 90))
        img = img.resize((side, side), Image.Resampling.BILINEAR).resize(
            size, Image.Resampling.BILINEAR
        )
    if rng.random() < cfg.aug_blur_p:
        img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.choice([0.5, 1.0]))))
    if rng.random() < cfg.aug_hsv_p:
        img = hsv_jitter(
            img, hue_deg=float(rng.uniform(0, 20)), saturation=float(rng.uniform(1, 1.2))
        )
    if rng.random() < cfg.aug_gray_p:
        img = img.convert("L").convert("RGB")
    if rng.random() < cfg.aug_crop_p:
        img = small_crop(img, float(rng.uniform(0.88, 1.0)), rng.uniform(0, 1, 2))
    if rng.random() < cfg.aug_color_p:
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(float(rng.uniform(0.8, 1.2)))
    return img


def small_crop(img: Image.Image, scale: float, where: np.ndarray) -> Image.Image:
    """A ``scale``-sided square of ``img`` scaled back to its size.

    Args:
        img: the square face.
        scale: side of the crop over the image's, in (0, 1].
        where: ``[2]`` in [0, 1]: the crop's place along x and y within the room left.
    """
    side = img.size[0] * scale
    x, y = (img.size[0] - side) * where[0], (img.size[1] - side) * where[1]
    box = (float(x), float(y), float(x + side), float(y + side))
    return img.resize(img.size, Image.Resampling.BILINEAR, box=box)


def hsv_jitter(img: Image.Image, hue_deg: float, saturation: float) -> Image.Image:
    """Rotate the hue by ``hue_deg`` degrees and scale the saturation by ``saturation``."""
    hsv = np.asarray(img.convert("HSV")).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + hue_deg * 256.0 / 360.0) % 256.0
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255)
    return Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
