"""Optional dependencies: a missing one is one line naming the extra that installs it.

The core install is lean; ONNX export, plots, TensorBoard, DALI, DeepSpeed and the reference
face aligner come with extras. Every tool checks what it will need *before* it writes anything,
with :func:`require`, so a missing package leaves no half-written output.
"""

from __future__ import annotations

import importlib

EXTRA_OF = {
    "onnx": "export",
    "onnxruntime": "export",
    "safetensors": "export",
    "matplotlib": "report",
    "tensorboard": "tensorboard",
    "nvidia.dali": "dali",
    "deepspeed": "deepspeed",
    "insightface": "dev",
    "dlib": "detect",
    "face_recognition_models": "detect",
}
"""Import name → the ``pyproject.toml`` extra that installs it."""


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra to install."""


def missing_message(module: str, purpose: str) -> str:
    """``"<purpose> needs <module>, which is not installed: pip install 'dist_face[<extra>]'"``."""
    return (
        f"{purpose} needs {module}, which is not installed: "
        f"pip install 'dist_face[{EXTRA_OF[module]}]'"
    )


def require(*modules: str, purpose: str) -> None:
    """Import each of ``modules`` (keys of :data:`EXTRA_OF`) or raise :class:`MissingExtraError`.

    Args:
        modules: import names, e.g. ``"onnx", "onnxruntime"``.
        purpose: what needs them, for the message (``--safetensors``).
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            raise MissingExtraError(missing_message(module, purpose)) from None
