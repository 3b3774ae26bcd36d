"""Face alignment: a least-squares similarity transform from 5 landmarks to the ArcFace template.

The template is the one arcface_torch aligns IJB faces with: the five points (left eye, right
eye, nose tip, left and right mouth corners) of the 96×112 crop, with x shifted by +8 for the
112×112 input. The transform is estimated in closed form (no OpenCV or scikit-image) and the
crop is sampled bilinearly with a zero border, in pixel-index coordinates as ``cv2.warpAffine``.
"""

from __future__ import annotations

import numpy as np

#: ArcFace reference landmarks in the 112×112 crop, ``[5, 2]`` (x, y) in pixels.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)
CROP_SIZE = 112


def similarity_transform(src: np.ndarray, dst: np.ndarray = ARCFACE_TEMPLATE) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` to ``dst``.

    Every similarity without reflection is ``[[a, -b, tx], [b, a, ty]]``, linear in
    ``(a, b, tx, ty)``, so the least-squares fit is one linear solve; it is the same optimum as
    Umeyama's estimate used by scikit-image.

    Args:
        src: ``[K, 2]`` points (x, y) in the source image, K ≥ 2.
        dst: ``[K, 2]`` target points.

    Returns:
        ``[2, 3]`` float64 matrix ``M`` with ``dst ≈ M @ [x, y, 1]``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    rows = np.concatenate(
        [np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)], axis=0
    )
    a, b, tx, ty = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Sample ``image`` at the inverse of ``matrix`` on a ``size × size`` grid (bilinear, 0 border).

    Args:
        image: ``uint8 [H, W, C]``.
        matrix: ``[2, 3]`` forward map from image to crop coordinates.
        size: side of the square output in pixels.

    Returns:
        ``uint8 [size, size, C]``.
    """
    inv = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))[:2]
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * u + inv[0, 1] * v + inv[0, 2]
    sy = inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]
    h, w = image.shape[:2]
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0)[..., None], (sy - y0)[..., None]
    padded = np.zeros((h + 2, w + 2, image.shape[2]), dtype=np.float64)
    padded[1:-1, 1:-1] = image
    # indices into the zero-padded image: anything outside reads the border of zeros
    xa, xb = np.clip(x0 + 1, 0, w + 1), np.clip(x0 + 2, 0, w + 1)
    ya, yb = np.clip(y0 + 1, 0, h + 1), np.clip(y0 + 2, 0, h + 1)
    out = (
        padded[ya, xa] * (1 - fx) * (1 - fy)
        + padded[ya, xb] * fx * (1 - fy)
        + padded[yb, xa] * (1 - fx) * fy
        + padded[yb, xb] * fx * fy
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Align one face to the ArcFace template.

    Args:
        image: ``uint8 [H, W, 3]`` RGB loose crop.
        landmarks: ``[5, 2]`` (x, y) pixel positions of the five points in ``image``.
        size: output side (112 for every dist_face backbone).

    Returns:
        ``uint8 [size, size, 3]`` aligned RGB face.
    """
    template = ARCFACE_TEMPLATE * (size / CROP_SIZE)
    return warp_affine(image, similarity_transform(landmarks, template), size)
