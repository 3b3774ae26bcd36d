"""How an image that is not a square of the network's input size becomes one.

One policy for every path that feeds a backbone (packing with ``--resize``, the training loader,
``.bin`` evaluation, pair lists): ``crop`` (default) scales the shorter side to the target and
cuts the centre, ``pad`` scales the longer side and fills the rest with black, ``stretch`` scales
each side on its own (the aspect ratio is lost; the old behaviour). Grayscale and palette images
become RGB by repeating the grey level (Pillow's ``convert("RGB")``).
"""

from __future__ import annotations

import io

from PIL import Image

RESIZE_MODES = ("crop", "pad", "stretch")
"""The accepted values of ``--resize-mode`` / ``data.resize_mode``."""
DEFAULT_RESIZE_MODE = "crop"


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`RESIZE_MODES`, else ``ValueError`` naming the choices."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {mode!r}")
    return mode


def fit_image(img: Image.Image, size: int, mode: str = DEFAULT_RESIZE_MODE) -> Image.Image:
    """Return ``img`` as an RGB ``size × size`` image under ``mode`` (unchanged if already so).

    Args:
        img: Any Pillow image (grayscale, palette, RGBA, RGB...).
        size: Side of the square output in pixels.
        mode: ``crop``, ``pad`` or ``stretch`` (see the module docstring).
    """
    img = img.convert("RGB")
    w, h = img.size
    if (w, h) == (size, size):
        return img
    check_mode(mode)
    resample = Image.Resampling.BILINEAR
    if mode == "stretch":
        return img.resize((size, size), resample)
    scale = size / min(w, h) if mode == "crop" else size / max(w, h)
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    scaled = img.resize((sw, sh), resample)
    if mode == "crop":
        left, top = (sw - size) // 2, (sh - size) // 2
        return scaled.crop((left, top, left + size, top + size))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(scaled, ((size - sw) // 2, (size - sh) // 2))
    return canvas


def decode_fit(data: bytes, size: int, mode: str = DEFAULT_RESIZE_MODE) -> Image.Image:
    """Decode encoded image bytes and :func:`fit_image` them."""
    with Image.open(io.BytesIO(data)) as img:
        return fit_image(img, size, mode)


def describe_mode(mode: str, size: int = 112) -> str:
    """What ``mode`` does to a non-square or other-sized image, in words (for warnings)."""
    return {
        "crop": f"scaled so the shorter side is {size} px and centre-cropped to {size}×{size}",
        "pad": f"scaled so the longer side is {size} px and padded with black to {size}×{size}",
        "stretch": f"stretched to {size}×{size} (the aspect ratio is lost)",
    }[check_mode(mode)]
