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
from typing import Any

import numpy as np

from dist_face.data.packing.sources import Source

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
    sizes: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)
    """``(width, height)`` → images of that size, over the images checked (empty: not checked)."""
    modes: dict[str, int] = dataclasses.field(default_factory=dict)
    """Pillow mode (``L`` grayscale, ``RGB``, ``P`` palette...) → images of that mode."""


def image_problem(data: bytes, check: str) -> str | None:
    """Why ``data`` is not a usable image under ``check``, or None when it is.

    Args:
        data: The encoded image bytes.
        check: ``decode`` (decode every pixel) or ``header`` (format and a positive size).
    """
    problem, _ = inspect_image(data, check)
    return problem


def inspect_image(data: bytes, check: str) -> tuple[str | None, tuple[int, int, str] | None]:
    """``(problem or None, (width, height, Pillow mode) or None)`` of encoded image bytes."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty file (0 bytes)", None
    try:
        with Image.open(io.BytesIO(data)) as im:
            info = (im.width, im.height, im.mode)
            if im.width <= 0 or im.height <= 0:
                return f"image size {im.width}x{im.height}", None
            if check == "decode":
                im.load()
    except UnidentifiedImageError:
        return f"not an image Pillow can identify (starts with {data[:8].hex()})", None
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... on bad data
        return f"does not decode: {type(err).__name__}: {err}", None
    return None, info


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

    def problem(i: int) -> tuple[str | None, tuple[int, int, str] | None]:
        try:
            return inspect_image(source.read(i), check)
        except OSError as err:
            return f"cannot be read: {err}", None

    n = len(source)
    with ThreadPoolExecutor(max(workers, 1)) as pool:
        results = pool.map(problem, range(n), chunksize=64)
        bar = tqdm(results, total=n, unit="img", desc="check", disable=None if progress else True)
        found = list(bar)
    sizes: dict[tuple[int, int], int] = {}
    modes: dict[str, int] = {}
    for _, info in found:
        if info is not None:
            sizes[info[:2]] = sizes.get(info[:2], 0) + 1
            modes[info[2]] = modes.get(info[2], 0) + 1
    bad = [i for i, (p, _) in enumerate(found) if p is not None]
    if not bad:
        return source, CheckResult([], 0, sizes, modes)
    report = [(source.describe(i), found[i][0] or "") for i in bad]
    checked, dropped = restrict(source, np.setdiff1d(np.arange(n), bad))
    return checked, CheckResult(report, dropped, sizes, modes)


def restrict(source: Source, keep: np.ndarray) -> tuple[Source, int]:
    """``source`` limited to the items ``keep`` (labels renumbered) and the classes it lost."""
    if keep.size == len(source):
        return source, 0
    checked = CheckedSource(source, keep)
    dropped = source.num_classes - checked.num_classes
    if dropped:
        logger.warning("%d class(es) lost every image and were removed; labels renumbered", dropped)
    return checked, dropped


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


@dataclasses.dataclass(frozen=True)
class PackReport:
    """Everything the packer tells about its input, written to :data:`REPORT_NAME`."""

    check: CheckResult
    """Images that failed the check, and the sizes and modes of those checked."""
    skipped_files: dict[tuple[str, str], int]
    """``(extension, reason)`` → files that are not images of an identity folder."""
    empty_folders: list[str]
    """Identity folders without an image (no class)."""
    unaligned: list[tuple[str, str]]
    """``(where, why)`` of images left out by alignment: no landmarks, no face found."""
    single_image_classes: int
    """Identities with one image: they train a class but give no genuine pair."""
    aligned: bool
    """Images were aligned to the 112×112 template (``--landmarks`` / ``--detect``)."""
    notes: list[str] = dataclasses.field(default_factory=list)
    """Lines about the alignment: detection counts and speed, the landmark order, warnings."""


def counted(items: dict[Any, int], limit: int = 8) -> str:
    """``"92×112 400, 112×112 3"``-style text of a count map, largest first."""
    ranked = sorted(items.items(), key=lambda kv: (-kv[1], str(kv[0])))
    text = ", ".join(f"{_name(k)} {n}" for k, n in ranked[:limit])
    return text + (f", ... ({len(ranked) - limit} more)" if len(ranked) > limit else "")


def _name(key: Any) -> str:
    if isinstance(key, tuple) and len(key) == 2 and all(isinstance(v, int) for v in key):
        return f"{key[0]}×{key[1]}"
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key)
    return str(key)


MODE_NAMES = {"L": "grayscale", "RGB": "RGB", "RGBA": "RGB+alpha", "P": "palette", "CMYK": "CMYK"}


def size_warning(
    sizes: dict[tuple[int, int], int], aligned: bool, resize: int | None, mode: str, side: int = 112
) -> str | None:
    """One line when packed images are not ``side × side``: what was found, what training does.

    None when every image is ``side × side``, or the images are aligned or resized at packing.
    """
    from dist_face.data.loading.image_fit import describe_mode

    other = {k: n for k, n in sizes.items() if k != (side, side)}
    if not other or aligned or resize is not None:
        return None
    return (
        f"{sum(other.values())} of {sum(sizes.values())} images are not {side}×{side} "
        f"(width×height: {counted(sizes, 4)}); training will use them "
        f"{describe_mode(mode, side)} (data.resize_mode={mode}), but a face recognizer expects "
        f"faces aligned to its template: pack with --landmarks FILE (5 points per image) or "
        f"--detect DETECTOR.onnx"
    )


def by_reason(files: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    """``{(extension, reason): n}`` regrouped as ``{reason: {extension: n}}``, sorted."""
    out: dict[str, dict[str, int]] = {}
    for (ext, why), n in sorted(files.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out.setdefault(why, {})[ext] = n
    return out


def write_report(out_dir: str, report: PackReport) -> str:
    """Write :data:`REPORT_NAME` in ``out_dir``: counts, then one ``where<TAB>why`` per image.

    Returns:
        The report's path.
    """
    path = os.path.join(out_dir, REPORT_NAME)
    result, files = report.check, report.skipped_files
    modes = {MODE_NAMES.get(m, m): n for m, n in result.modes.items()}
    lines = [
        f"# {len(result.bad)} image(s) skipped: they failed the check",
        f"# {result.dropped_classes} class(es) removed: every image of them was skipped",
        f"# {sum(files.values())} file(s) ignored"
        + "".join(f"; {why}: {counted(exts)}" for why, exts in by_reason(files).items()),
        f"# {len(report.empty_folders)} identity folder(s) without images (no class)"
        + (f": {', '.join(report.empty_folders[:20])}" if report.empty_folders else ""),
        f"# {len(report.unaligned)} image(s) left out by alignment (no landmarks / no face found)",
        f"# {report.single_image_classes} identities with a single image (a class, but no "
        "genuine pair)",
        "# sizes before packing (width×height): " + (counted(result.sizes) or "not checked"),
        "# channels: " + (counted(modes) or "not checked"),
        f"# aligned to the 112×112 ArcFace template: {'yes' if report.aligned else 'no'}",
        *(f"# {note}" for note in report.notes),
        *(f"{where}\t{why}" for where, why in [*result.bad, *report.unaligned]),
    ]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path
