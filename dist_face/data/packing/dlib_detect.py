"""Five face landmarks from dlib's detectors, which install from PyPI with their weights.

The ``detect`` extra installs ``dlib-bin`` (dlib's prebuilt wheels) and
``face-recognition-models`` (dlib's trained model files). Each photo is searched by dlib's
HOG frontal-face detector (fast, one pass with the image upsampled once); a photo where it finds
no face is searched again by dlib's MMOD CNN detector (slower, finds turned and small faces),
the *fallback*. Of several faces the largest (box area) is kept. dlib's 68-point shape predictor
then places the landmarks, reduced to the five of the ArcFace template, in its order:

====  ===========================  ==========================
row   template point               68-point source
====  ===========================  ==========================
1     eye on the image-left        mean of points 36–41
2     eye on the image-right       mean of points 42–47
3     nose tip                     point 30
4     mouth corner, image-left     point 48
5     mouth corner, image-right    point 54
====  ===========================  ==========================

(image-left is the smaller x; for a frontal face it is the subject's right eye). The model
files are found on disk from the installed package's location without importing it:
``face_recognition_models/__init__.py`` imports ``pkg_resources``, which setuptools 81 removed.
"""

from __future__ import annotations

import importlib.util
import io
import os
from typing import Any

import numpy as np

from dist_face.data.packing.detection import Detection
from dist_face.extras import MissingExtraError, missing_message

MODELS_PACKAGE = "face_recognition_models"
SHAPE_MODEL = "shape_predictor_68_face_landmarks.dat"
CNN_MODEL = "mmod_human_face_detector.dat"
MAX_SIDE = 1600
"""Photos larger than this (pixels, longer side) are searched scaled down to it."""
CNN_MAX_SIDE = 800
"""The CNN fallback searches at most this size (longer side; ~2 s a 512×512 photo, one core)."""

#: 68-point indices averaged into each of the five template points, in the template's order.
FIVE_FROM_68 = (tuple(range(36, 42)), tuple(range(42, 48)), (30,), (48,), (54,))


def model_dir() -> str:
    """The folder holding dlib's model files, found without importing their package.

    Raises:
        MissingExtraError: ``face-recognition-models`` (or ``dlib-bin``) is not installed.
    """
    for module in ("dlib", MODELS_PACKAGE):
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(missing_message(module, "--detect dlib"))
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    for folder in spec.submodule_search_locations or []:
        models = os.path.join(folder, "models")
        if os.path.isfile(os.path.join(models, SHAPE_MODEL)):
            return models
    raise MissingExtraError(
        f"{MODELS_PACKAGE} is installed but holds no models/{SHAPE_MODEL}: reinstall it"
    )


def five_points(shape68: np.ndarray) -> np.ndarray:
    """``float64 [5, 2]`` template points of ``[68, 2]`` (x, y) dlib landmarks."""
    return np.stack([shape68[list(idx)].mean(axis=0) for idx in FIVE_FROM_68])


class DlibDetector:
    """dlib's HOG detector, the CNN fallback and the 68-point predictor (see the module doc)."""

    def __init__(self, fallback: bool = True) -> None:
        import dlib

        models = model_dir()
        self.hog = dlib.get_frontal_face_detector()
        self.shape = dlib.shape_predictor(os.path.join(models, SHAPE_MODEL))
        self.cnn = dlib.cnn_face_detection_model_v1(os.path.join(models, CNN_MODEL))
        self.fallback = fallback

    def detect(self, data: bytes) -> Detection:
        """The largest face of encoded photo ``data``."""
        import dlib
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
        pixels, scale = _fit(rgb, MAX_SIDE)
        boxes = list(self.hog(pixels, 1))
        how = "fast"
        if not boxes and self.fallback:
            small, cnn_scale = _fit(rgb, CNN_MAX_SIDE)
            boxes = [_scaled(d.rect, scale / cnn_scale) for d in self.cnn(small, 0)]
            how = "fallback"
        if not boxes:
            return Detection(None, "missed")
        box = max(boxes, key=lambda r: r.width() * r.height())
        shape = self.shape(pixels, dlib.rectangle(box.left(), box.top(), box.right(), box.bottom()))
        points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
        return Detection(five_points(points) / scale, how)


def _fit(image: Any, side: int) -> tuple[np.ndarray, float]:
    """``(uint8 [H, W, 3] pixels at most side × side, the scale applied)``."""
    from PIL import Image

    scale = min(1.0, side / max(image.width, image.height))
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.ascontiguousarray(np.asarray(image)), scale


def _scaled(rect: Any, factor: float) -> Any:
    import dlib

    return dlib.rectangle(
        round(rect.left() * factor),
        round(rect.top() * factor),
        round(rect.right() * factor),
        round(rect.bottom() * factor),
    )
