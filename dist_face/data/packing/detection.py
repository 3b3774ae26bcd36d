"""What a face detector found in one photo (the ONNX and the dlib detectors)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One photo's result: the five points (None when no face) and which detector found it."""

    points: np.ndarray | None
    """``float64 [5, 2]`` (x, y) pixels of the original photo, template order."""
    how: str
    """``"fast"`` (HOG), ``"fallback"`` (CNN) or ``"missed"``."""
