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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dist_face.data.packing.detection import Detection
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

    def detect(self, data: bytes) -> Detection:
        """:meth:`landmarks` as a :class:`Detection`."""
        points = self.landmarks(data)
        return Detection(points, "missed" if points is None else "fast")


def open_detector(name: str, threshold: float = 0.5) -> Any:
    """``--detect NAME``: ``"dlib"`` (the ``detect`` extra) or the path of an ONNX model."""
    if name == "dlib":
        from dist_face.data.packing.dlib_detect import DlibDetector

        return DlibDetector()
    if not os.path.isfile(name):
        raise ValueError(
            f"--detect {name}: neither 'dlib' nor an ONNX detector file (no such file)"
        )
    return FaceDetector(name, threshold)


@dataclass
class Detections:
    """Landmarks found in a source and what the detector did for each photo."""

    found: dict[str, np.ndarray] = field(default_factory=dict)
    """``source.describe(i)`` (normalised) → ``float64 [5, 2]`` points in template order."""
    missing: list[tuple[str, str]] = field(default_factory=list)
    """``(where, why)`` of the photos without a face."""
    counts: dict[str, int] = field(default_factory=lambda: {"fast": 0, "fallback": 0, "missed": 0})
    """Photos whose face the fast detector found, the fallback found, neither found."""
    seconds: float = 0.0
    """Wall time of the detection."""
    workers: int = 1

    def summary(self) -> str:
        """``"faces found 98 (fast 95, fallback 3), missed 2; 12.3 photos/s/worker"``."""
        total = sum(self.counts.values())
        rate = total / max(self.seconds, 1e-9) / max(self.workers, 1)
        return (
            f"faces found {self.counts['fast'] + self.counts['fallback']} (fast detector "
            f"{self.counts['fast']}, fallback {self.counts['fallback']}), missed "
            f"{self.counts['missed']} of {total} photos; {rate:.2f} photos/s/worker "
            f"({self.workers} worker(s), {self.seconds:.1f} s)"
        )


_WORKER: dict[str, Any] = {}


def _start_worker(source: Any, name: str, threshold: float) -> None:
    _WORKER["source"] = source
    _WORKER["detector"] = open_detector(name, threshold)


def _detect_one(item: int | tuple[int, bytes]) -> tuple[int, np.ndarray | None, str]:
    i, data = item if isinstance(item, tuple) else (item, _WORKER["source"].read(item))
    found = _WORKER["detector"].detect(data)
    return i, found.points, found.how


def _picklable(source: Any) -> bool:
    import pickle

    try:
        pickle.dumps(source)
    except Exception:  # open files, memory maps, locks: whatever a source holds
        return False
    return True


def detect_landmarks(
    source: Any,
    name: str,
    threshold: float = 0.5,
    workers: int = 1,
    progress: bool = False,
) -> Detections:
    """Run the detector ``name`` (see :func:`open_detector`) on every item of ``source``.

    Args:
        source: what is being packed (``read``/``describe``/``len``).
        name: ``"dlib"`` or an ONNX model path.
        threshold: the least score an ONNX detection needs.
        workers: processes detecting in parallel, each with its own detector.
        progress: show a progress bar.

    Returns:
        :class:`Detections` keyed by ``source.describe(i)`` as
        :func:`dist_face.data.packing.aligned.align_source` expects.
    """
    import multiprocessing
    import time

    from tqdm import tqdm

    start = time.perf_counter()
    out = Detections(workers=max(1, workers))
    bar = tqdm(total=len(source), unit="photo", desc="detect", disable=None if progress else True)
    if workers > 1:
        # each worker gets the source once and reads its own photos: only indices and points
        # cross the pipes, so a large folder is never held in memory
        # (a source that cannot be sent, e.g. one holding an open file, is read here instead)
        context = multiprocessing.get_context("spawn")  # dlib and onnxruntime are not fork-safe
        sent = _picklable(source)
        pool = context.Pool(workers, _start_worker, (source if sent else None, name, threshold))
        items = range(len(source)) if sent else ((i, source.read(i)) for i in range(len(source)))
        results = pool.imap_unordered(_detect_one, items, chunksize=2)
    else:
        pool = None
        _start_worker(source, name, threshold)
        results = map(_detect_one, range(len(source)))
    why = (
        "no face found (fast detector and CNN fallback)"
        if name == "dlib"
        else f"no face found (score < {threshold})"
    )
    try:
        for i, points, how in results:
            where = os.path.normpath(source.describe(i))
            out.counts[how] += 1
            if points is None:
                out.missing.append((where, why))
            else:
                out.found[where] = points
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    out.missing.sort()
    out.seconds = time.perf_counter() - start
    return out
