"""Verification ``.bin`` files (the LFW / CFP-FP / AgeDB-30 format), loaded safely.

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` is a list of 2·P encoded image files
(JPEG/PNG bytes) where images 2k and 2k+1 form pair k, and ``issame`` is a list of P bools.
Such files are downloaded from the internet, and a plain ``pickle.load`` would run any code they
contain; :func:`load_bin` therefore unpickles with an allow-list of builtin containers and
numpy's array reconstruction (some published files hold numpy bools or byte arrays).
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# (module, name) pairs a .bin pickle may reference; nothing else is resolved.
_ALLOWED = {
    ("builtins", "bytes"),
    ("builtins", "bytearray"),
    ("builtins", "list"),
    ("builtins", "tuple"),
    ("builtins", "bool"),
    ("builtins", "int"),
    ("__builtin__", "bytearray"),
    ("__builtin__", "bool"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes with protocol < 3
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy", "bool_"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
}


class BinFormatError(ValueError):
    """A verification file is not a well-formed, safe ``(images, issame)`` pickle."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise BinFormatError(f"refusing to load {module}.{name}: not allowed in a .bin file")
        return super().find_class(module, name)


def load_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], np.ndarray]:
    """Load a verification file without running code from it.

    Returns:
        ``(images, issame)``: 2·P encoded images and a bool array ``[P]``.

    Raises:
        BinFormatError: the file references anything beyond plain data, or its structure is
            wrong; the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        try:
            obj = _SafeUnpickler(io.BytesIO(raw)).load()
        except UnicodeDecodeError:  # Python 2 pickles of str
            obj = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except BinFormatError as exc:
        raise BinFormatError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
        raise BinFormatError(f"{path}: not a verification pickle ({exc})") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise BinFormatError(f"{path}: expected a pair (images, issame), got {type(obj).__name__}")
    images = [bytes(b) for b in obj[0]]
    issame = np.asarray(obj[1], dtype=bool).reshape(-1)
    if len(images) != 2 * len(issame):
        raise BinFormatError(
            f"{path}: {len(images)} images for {len(issame)} pairs; expected {2 * len(issame)}"
        )
    return images, issame


def save_bin(path: str | os.PathLike[str], images: list[bytes], issame: list[bool]) -> Path:
    """Write a verification file (atomically): 2·P encoded images and P bools."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs; expected 2 per pair")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(([bytes(b) for b in images], [bool(s) for s in issame]), f, protocol=4)
    tmp.replace(path)
    return path


def decode_images(images: list[bytes], size: int = 112) -> np.ndarray:
    """Decode encoded images to RGB ``uint8 [N, size, size, 3]``, resizing those of other sizes."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(img)
    return out
