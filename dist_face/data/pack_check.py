"""Check every image of a source before packing; skip (and report) or refuse the bad ones.

Packing would otherwise store whatever bytes a file holds (a text file named ``.jpg``, a
truncated download), to be found only by ``verify`` or by the loader mid-training. Each image
is decoded by Pillow (``decode``), or only its header is parsed (``header``: format and size,
about 10x faster). Bad images are left out; identities left without an image lose their class
and the remaining labels are renumbered contiguously, in order.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dist_face.data.sources import Source

logger = logging.getLogger(__name__)

CHECKS = ("decode", "header", "none")
"""How thoroughly :func:`check_source` looks at each image."""
REPORT_NAME = "pack_report.txt"
"""The report written beside the packed shards."""


class BadImagesError(ValueError):
    """``--strict``: the source holds images that do not pass the check."""


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """What :func:`check_source` found."""

    bad: list[tuple[str, str]]
    """``(where, why)`` of each image left out, in source order."""
    dropped_classes: int
    """Classes left without an image, whose labels were removed."""


def image_problem(data: bytes, check: str) -> str | None:
    """Why ``data`` is not a usable image under ``check``, or None when it is.

    Args:
        data: The encoded image bytes.
        check: ``decode`` (decode every pixel) or ``header`` (format and a positive size).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.width <= 0 or im.height <= 0:
                return f"image size {im.width}x{im.height}"
            if check == "decode":
                im.load()
    except UnidentifiedImageError:
        return f"not an image Pillow can identify (starts with {data[:8].hex()})"
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
        return f"does not decode: {type(err).__name__}: {err}"
    return None


def check_source(
    source: Source, check: str = "decode", workers: int = 1, progress: bool = False
) -> tuple[Source, CheckResult]:
    """Check every image of ``source``; return the source without the bad ones.

    Args:
        source: What is about to be packed.
        check: One of :data:`CHECKS`; ``none`` returns ``source`` unchanged.
        workers: Threads reading and decoding (Pillow releases the GIL while decoding).
        progress: Show a tqdm progress bar (on a terminal).

    Returns:
        ``(source to pack, result)``; the source is ``source`` itself when nothing was left
        out, else a :class:`CheckedSource` with contiguous labels.
    """
    if check not in CHECKS:
        raise ValueError(f"--check must be one of {', '.join(CHECKS)}, got {check!r}")
    if check == "none":
        return source, CheckResult([], 0)
    from tqdm import tqdm

    def problem(i: int) -> str | None:
        try:
            return image_problem(source.read(i), check)
        except OSError as err:
            return f"cannot be read: {err}"

    n = len(source)
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        results = pool.map(problem, range(n), chunksize=64)
        bar = tqdm(results, total=n, unit="img", desc="check", disable=None if progress else True)
        problems = list(bar)
    bad = [i for i, p in enumerate(problems) if p is not None]
    if not bad:
        return source, CheckResult([], 0)
    report = [(source.describe(i), problems[i] or "") for i in bad]
    keep = np.setdiff1d(np.arange(n), bad)
    checked = CheckedSource(source, keep)
    dropped = source.num_classes - checked.num_classes
    if dropped:
        logger.warning("%d class(es) lost every image and were removed; labels renumbered", dropped)
    return checked, CheckResult(report, dropped)


class CheckedSource:
    """``source`` restricted to the items ``keep``, with labels renumbered contiguously."""

    def __init__(self, source: Source, keep: np.ndarray) -> None:
        self.source = source
        self.keep = np.asarray(keep, dtype=np.int64)
        old = np.asarray(source.labels)[self.keep]
        present = np.unique(old)  # sorted: the classes' relative order is kept
        self.labels = np.searchsorted(present, old).astype(np.int64)
        self.num_classes = int(present.size)

    def __len__(self) -> int:
        return int(self.keep.size)

    def read(self, i: int) -> bytes:
        """Encoded image bytes of kept item ``i``."""
        return self.source.read(int(self.keep[i]))

    def describe(self, i: int) -> str:
        """Where kept item ``i`` came from."""
        return self.source.describe(int(self.keep[i]))


def write_report(out_dir: str, result: CheckResult, other_files: dict[str, int]) -> str:
    """Write :data:`REPORT_NAME` in ``out_dir``: counts, then one ``where<TAB>why`` per image.

    Returns:
        The report's path.
    """
    path = os.path.join(out_dir, REPORT_NAME)
    lines = [
        f"# {len(result.bad)} image(s) skipped: they failed the check",
        f"# {result.dropped_classes} class(es) removed: every image of them was skipped",
        f"# {sum(other_files.values())} file(s) without an image extension ignored: "
        + (", ".join(f"{ext} {n}" for ext, n in sorted(other_files.items())) or "none"),
        *(f"{where}\t{why}" for where, why in result.bad),
    ]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
