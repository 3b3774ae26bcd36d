"""Which files are images: Pillow's registered formats, recognised by extension or content.

Light on purpose (Pillow and the standard library only): the launcher's start-up check and the
packer both use it.
"""

from __future__ import annotations

import os


def image_extensions() -> frozenset[str]:
    """Every file extension Pillow registers a decoder for (``.jpg``, ``.pgm``, ``.tif``...)."""
    from PIL import Image

    Image.init()
    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def is_image_file(path: str, extensions: frozenset[str]) -> bool:
    """True when Pillow recognises ``path`` as an image: by extension, else by its first bytes.

    A file with an image extension is taken here and decoded by the pack check (which skips
    it, with the reason, if its content is not that image); any other file is identified by
    content, so photos without an extension or with an unusual one are packed too.
    """
    if os.path.splitext(path)[1].lower() in extensions:
        return True
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def is_image_folder(root: str, probe: int = 8) -> bool:
    """True when ``root`` looks like raw photos: images in (some of) its first subfolders.

    Only the first ``probe`` entries of the first ``probe`` subfolders are looked at, so the
    answer is quick on a folder of millions of photos.
    """
    extensions = image_extensions()
    try:
        with os.scandir(root) as entries:
            folders = [e.path for e in entries if e.is_dir()][:probe]
        for folder in folders:
            with os.scandir(folder) as files:
                for _, entry in zip(range(probe), files):
                    if os.path.splitext(entry.name)[1].lower() in extensions:
                        return True
    except OSError:
        return False
    return False
