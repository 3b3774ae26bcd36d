"""Five face landmarks from a user-supplied detector ONNX model, run with onnxruntime.

The model is one of InsightFace's SCRFD / RetinaFace-style detectors (``det_10g.onnx``,
``scrfd_*_kps.onnx``...): input ``[1, 3, H, W]`` RGB normalised as ``(x - 127.5) / 128``; 9
outputs (strides 8, 16, 32; 2 anchors per cell) or 15 (strides 8…128; 1 anchor), in the order
scores ``[N, 1]``, box distances ``[N, 4]``, keypoint offsets ``[N, 10]`` per stride (a leading
batch axis of 1 is accepted). The image is scaled to fit ``H × W`` keeping its aspect ratio and
placed at the top left, as InsightFace does; a model with a dynamic input size gets 640×640.

Each cell's anchor centre is ``(column, row) · stride``; keypoint k is the centre plus
``stride · (offset_2k, offset_2k+1)``; the face with the highest score at or above the
threshold is kept (one face per photo; no NMS is needed to pick the best one).
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from dist_face.extras import require

DEFAULT_INPUT = (640, 640)
"""``(width, height)`` for a model whose input size is dynamic."""


def _layout(num_outputs: int) -> tuple[list[int], int]:
    """``(strides, anchors per cell)`` of an SCRFD/RetinaFace model with keypoints."""
    if num_outputs == 9:
        return [8, 16, 32], 2
    if num_outputs == 15:
        return [8, 16, 32, 64, 128], 1
    raise ValueError(
        f"a detector with five-point outputs has 9 or 15 outputs (scores, boxes, keypoints per "
        f"stride), this one has {num_outputs}"
    )


def anchor_centers(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    """``float32 [height·width·anchors, 2]`` (x, y) centres, row-major, anchors innermost."""
    grid = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
    return np.repeat((grid * stride).reshape(-1, 2), anchors, axis=0)


def decode(
    outputs: list[np.ndarray], input_hw: tuple[int, int], threshold: float
) -> tuple[float, np.ndarray] | None:
    """The best face of raw detector outputs: ``(score, float32 [5, 2] points)`` or None.

    Args:
        outputs: the model's outputs in its order (see the module docstring).
        input_hw: ``(height, width)`` of the model input.
        threshold: the least score a face needs.

    Returns:
        The points are in model-input pixels; None when no score reaches ``threshold``.
    """
    strides, anchors = _layout(len(outputs))
    fmc = len(strides)
    best: tuple[float, np.ndarray] | None = None
    for k, stride in enumerate(strides):
        scores = np.asarray(outputs[k]).reshape(-1)
        kps = np.asarray(outputs[k + 2 * fmc]).reshape(-1, 10) * stride
        centers = anchor_centers(input_hw[0] // stride, input_hw[1] // stride, stride, anchors)
        if centers.shape[0] != scores.shape[0] or kps.shape[0] != scores.shape[0]:
            raise ValueError(
                f"stride {stride}: {scores.shape[0]} scores and {kps.shape[0]} keypoint rows "
                f"for {centers.shape[0]} anchors of a {input_hw[1]}x{input_hw[0]} input"
            )
        i = int(np.argmax(scores))
        if scores[i] >= threshold and (best is None or scores[i] > best[0]):
            best = (float(scores[i]), centers[i] + kps[i].reshape(5, 2))
    return best


class FaceDetector:
    """An ONNX face detector: :meth:`landmarks` of the best face in an image."""

    def __init__(self, model_path: str, threshold: float = 0.5) -> None:
        require("onnxruntime", purpose="--detect")
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph... types
            raise ValueError(f"{model_path}: not a loadable ONNX model: {exc}") from None
        _layout(len(self.session.get_outputs()))
        shape = self.session.get_inputs()[0].shape
        fixed = len(shape) == 4 and all(isinstance(v, int) for v in shape[2:])
        self.input_wh = (int(shape[3]), int(shape[2])) if fixed else DEFAULT_INPUT
        self.threshold = threshold
        self.input_name = self.session.get_inputs()[0].name

    def landmarks(self, data: bytes) -> np.ndarray | None:
        """``float64 [5, 2]`` points of the best face in encoded image ``data``, or None."""
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
        w, h = self.input_wh
        scale = min(w / rgb.width, h / rgb.height)  # fit, keep the aspect ratio, top left
        size = (max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale)))
        canvas = np.zeros((h, w, 3), np.float32)
        canvas[: size[1], : size[0]] = np.asarray(rgb.resize(size, Image.Resampling.BILINEAR))
        blob = ((canvas - 127.5) / 128.0).transpose(2, 0, 1)[None]
        found = decode(self.session.run(None, {self.input_name: blob}), (h, w), self.threshold)
        if found is None:
            return None
        return found[1].astype(np.float64) / scale


def detect_landmarks(
    source: Any, model_path: str, threshold: float = 0.5, progress: bool = False
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """Run the detector on every item of ``source``.

    Returns:
        ``({where: [5, 2] points}, [(where, "no face found ...") for the others])``, keyed by
        ``source.describe(i)`` as :func:`dist_face.data.aligned.align_source` expects.
    """
    from tqdm import tqdm

    detector = FaceDetector(model_path, threshold)
    found: dict[str, np.ndarray] = {}
    missing: list[tuple[str, str]] = []
    for i in tqdm(
        range(len(source)), unit="img", desc="detect", disable=None if progress else True
    ):
        where = os.path.normpath(source.describe(i))
        points = detector.landmarks(source.read(i))
        if points is None:
            missing.append((where, f"no face found (score < {threshold})"))
        else:
            found[where] = points
    return found, missing
