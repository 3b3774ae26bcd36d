"""``dist-face-unpack``: write the images of a shard set (or ``.rec``) back to a folder."""

from __future__ import annotations

import argparse
import os
import sys

from dist_face.cli.common import closed_pipe_is_quiet
from dist_face.data.format.recordio import CorruptRecordError
from dist_face.data.packing.sources import open_source


def extension(image: bytes) -> str:
    """File extension for encoded image bytes, from their signature."""
    if image.startswith(b"\xff\xd8"):
        return ".jpg"
    if image.startswith(b"\x89PNG"):
        return ".png"
    if image.startswith(b"BM"):
        return ".bmp"
    if image[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


def unpack(src: str, out_dir: str, progress: bool = True) -> int:
    """Write every image of ``src`` to ``out_dir/<label>/<index>.<ext>``; returns the count.

    Folder names are zero-padded labels, so sorted folder order equals label order and
    packing the folder again gives back the same labels.
    """
    from tqdm import tqdm

    source = open_source(src)
    width = len(str(max(source.num_classes - 1, 0)))
    digits = len(str(max(len(source) - 1, 0)))
    for label in sorted(set(source.labels.tolist())):
        os.makedirs(os.path.join(out_dir, f"{label:0{width}d}"), exist_ok=True)
    for i in tqdm(
        range(len(source)), unit="img", disable=None if progress else True, desc="unpack"
    ):
        image = source.read(i)
        name = f"{int(source.labels[i]):0{width}d}/{i:0{digits}d}{extension(image)}"
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(image)
    return len(source)


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``dist-face-unpack``."""
    p = argparse.ArgumentParser(
        prog="dist-face-unpack",
        description="Write every image of a shard set or .rec to OUT_DIR/<label>/<index>.<ext> "
        "(bytes unchanged; folder names are zero-padded labels).",
    )
    p.add_argument("src", help="shard set directory or .rec file")
    p.add_argument("out_dir", help="output image folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


@closed_pipe_is_quiet
def main(argv: list[str] | None = None) -> int:
    """Run the unpacker; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        count = unpack(args.src, args.out_dir, progress=not args.quiet)
    except (OSError, ValueError, CorruptRecordError) as err:
        print(f"dist-face-unpack: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {count} images to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
