"""Verification ``.bin`` files (the LFW / CFP-FP / AgeDB-30 format), loaded safely.

A ``.bin`` is a pickle of ``(images, issame)``: ``images`` is a list of 2·P encoded image files
(JPEG/PNG bytes) where images 2k and 2k+1 form pair k, and ``issame`` is a list of P bools.
Such files are downloaded from the internet, and a plain ``pickle.load`` would run any code they
contain; :func:`load_bin` therefore unpickles with an allow-list of builtin containers and
numpy's array reconstruction (some published files hold numpy bools or byte arrays). Each
allowed name resolves to a constructor that only copies data stored in the file: none takes a
size, so a few bytes cannot ask for a terabyte (``bytes(2**40)``).
"""

from __future__ import annotations

import io
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dist_face.data.loading.image_fit import DEFAULT_RESIZE_MODE, describe_mode, fit_image

logger = logging.getLogger(__name__)


class BinFormatError(ValueError):
    """A verification file is not a well-formed, safe ``(images, issame)`` pickle."""


_MAX_SCALAR_BYTES = 16  # the widest numpy scalar a .bin holds (a bool or an int is <= 8)


def _from_data(kind: type) -> Any:
    """``bytes``/``bytearray`` that only copy data already in the file.

    ``bytes(n)`` and ``bytearray(n)`` allocate n zero bytes: a 36-byte pickle asking for
    ``bytes(2**40)`` would take a terabyte. Only buffers, strings (Python 2 pickles) and
    lists of byte values are accepted, whose size the file itself bounds.
    """

    def build(*args: Any) -> Any:
        if not args:
            return kind()
        if not isinstance(args[0], bytes | bytearray | str | list | tuple):
            raise BinFormatError(
                f"refusing {kind.__name__}({type(args[0]).__name__}): only data stored in "
                "the file may become bytes (a size would allocate that many)"
            )
        return kind(*args[:2]) if isinstance(args[0], str) else kind(args[0])

    return build


def _encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 pickles bytes with protocol < 3 (latin-1 only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise BinFormatError(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _container(kind: type) -> Any:
    def build(items: Any = ()) -> Any:
        if not isinstance(items, list | tuple | bytes | bytearray):
            raise BinFormatError(f"refusing {kind.__name__}({type(items).__name__})")
        return kind(items)

    return build


def _number(kind: type) -> Any:
    def build(value: Any = 0, *rest: Any) -> Any:
        if rest or not isinstance(value, bool | int | float | str | bytes | np.generic):
            raise BinFormatError(f"refusing {kind.__name__}({type(value).__name__}, ...)")
        return kind(value)

    return build


class _ArrayClass:
    """Stands for ``numpy.ndarray`` in a pickle.

    It is usable as the class argument of ``_reconstruct``, never called:
    ``ndarray(shape)`` allocates the whole shape.
    """

    def __call__(self, *args: Any) -> Any:
        raise BinFormatError("refusing numpy.ndarray(...): a shape would allocate that many")


_ARRAY_CLASS = _ArrayClass()


def _reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
    """Start of numpy's array unpickling: an empty array that ``__setstate__`` then fills.

    numpy always pickles ``_reconstruct(ndarray, (0,), b'b')``; the state that follows
    carries the data, so its size is bounded by the file. Any other shape would allocate.
    """
    if cls is not _ARRAY_CLASS or tuple(shape) != (0,):
        raise BinFormatError(f"refusing numpy _reconstruct with shape {shape!r}")
    return np.ndarray((0,), dtype="b")


def _scalar(dtype: Any, data: Any = None) -> Any:
    """Numpy scalars (e.g. ``np.bool_``) from their bytes in the file."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise BinFormatError(f"refusing numpy scalar of dtype {dtype!r}")
    if dtype.itemsize > _MAX_SCALAR_BYTES or len(data) != dtype.itemsize:
        raise BinFormatError(f"refusing numpy scalar of {dtype} from {len(data)} bytes")
    return np.frombuffer(data, dtype=dtype)[0]


def _dtype(spec: Any, *flags: Any) -> np.dtype:
    """Plain numeric dtypes only (a void dtype can name any size)."""
    dtype = np.dtype(spec)
    if dtype.kind not in "biuf":
        raise BinFormatError(f"refusing numpy dtype {dtype}")
    return dtype


# (module, name) a .bin pickle may reference, and what it gets instead: constructors that only
# copy data stored in the file, so nothing in it can run code or ask for a size to allocate.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("builtins", "bytes"): _from_data(bytes),
    ("builtins", "bytearray"): _from_data(bytearray),
    ("__builtin__", "bytearray"): _from_data(bytearray),
    ("builtins", "list"): _container(list),
    ("builtins", "tuple"): _container(tuple),
    ("builtins", "bool"): _number(bool),
    ("__builtin__", "bool"): _number(bool),
    ("builtins", "int"): _number(int),
    ("_codecs", "encode"): _encode,  # how Python 3 pickles bytes with protocol < 3
    ("numpy", "ndarray"): _ARRAY_CLASS,
    ("numpy", "dtype"): _dtype,
    ("numpy", "bool_"): _number(np.bool_),
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "scalar"): _scalar,
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise BinFormatError(f"refusing to load {module}.{name}: not allowed in a .bin file")
        return _ALLOWED[(module, name)]


def _image_bytes(item: Any, index: int) -> bytes:
    """One encoded image of the file as bytes; anything but stored bytes is refused."""
    if isinstance(item, bytes | bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype in (np.uint8, np.int8) and item.ndim == 1:
        return item.tobytes()
    raise BinFormatError(f"image {index} is a {type(item).__name__}, expected encoded bytes")


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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, MemoryError) as exc:
        raise BinFormatError(f"{path}: not a verification pickle ({exc})") from None
    if not (isinstance(obj, tuple | list) and len(obj) == 2):
        raise BinFormatError(f"{path}: expected a pair (images, issame), got {type(obj).__name__}")
    if not isinstance(obj[0], list | tuple) or not isinstance(obj[1], list | tuple | np.ndarray):
        raise BinFormatError(f"{path}: images and issame must be sequences")
    try:
        images = [_image_bytes(b, k) for k, b in enumerate(obj[0])]
        issame = np.asarray([_flag(v, k) for k, v in enumerate(obj[1])], dtype=bool)
    except BinFormatError as exc:
        raise BinFormatError(f"{path}: {exc}") from None
    if len(images) != 2 * len(issame):
        raise BinFormatError(
            f"{path}: {len(images)} images for {len(issame)} pairs; expected {2 * len(issame)}"
        )
    return images, issame


def _flag(value: Any, index: int) -> bool:
    if not isinstance(value, bool | int | np.bool_ | np.integer) or value not in (0, 1):
        raise BinFormatError(f"issame[{index}] is {value!r:.40}, expected a bool")
    return bool(value)


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


def distinct_images(images: list[bytes]) -> tuple[list[bytes], np.ndarray]:
    """The distinct encoded images of a pair file and each pair's two of them.

    A ``.bin`` stores both images of every pair, so an image in 20 pairs is stored 20 times;
    evaluation decodes and embeds each distinct one once (identical bytes: one image).

    Args:
        images: ``2·P`` encoded images, pair k = images ``2k, 2k+1``.

    Returns:
        ``(M distinct encoded images in first-seen order, int64 [P, 2] index into them)``.
    """
    seen: dict[bytes, int] = {}
    index = np.empty(len(images), np.int64)
    for i, data in enumerate(images):
        index[i] = seen.setdefault(data, len(seen))
    return list(seen), index.reshape(-1, 2)


def decode_images(
    images: list[bytes],
    size: int = 112,
    mode: str = DEFAULT_RESIZE_MODE,
    sizes: dict[tuple[int, int], int] | None = None,
) -> np.ndarray:
    """Decode encoded images to RGB ``uint8 [N, size, size, 3]``.

    Images of another size are fitted under ``mode`` (crop, pad or stretch; see
    :mod:`dist_face.data.loading.image_fit`). Without ``sizes`` a warning says how many and which
    sizes; with it, their ``(width, height)`` counts are added to ``sizes`` (to warn once for
    several chunks, :func:`warn_sizes`).
    """
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    others: dict[tuple[int, int], int] = {} if sizes is None else sizes
    for i, data in enumerate(images):
        with Image.open(io.BytesIO(data)) as img:
            if img.size != (size, size):
                others[img.size] = others.get(img.size, 0) + 1
            out[i] = np.asarray(fit_image(img, size, mode))
    if sizes is None:
        warn_sizes(others, len(images), size, mode)
    return out


def warn_sizes(others: dict[tuple[int, int], int], total: int, size: int, mode: str) -> None:
    """Warn (once) that ``others`` images of ``total`` were not ``size × size``; none: silent."""
    if others:
        logger.warning(
            "%d of %d evaluation images are not %d×%d (%s): %s",
            sum(others.values()),
            total,
            size,
            size,
            ", ".join(f"{w}×{h} {n}" for (w, h), n in sorted(others.items())),
            describe_mode(mode, size),
        )
