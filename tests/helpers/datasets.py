"""Small embedded datasets packed into record shards, shared by the training tests."""

from __future__ import annotations

from pathlib import Path

from dist_face.cli.pack import main as pack_main
from dist_face.data.synthetic.embedded import EmbeddedSpec, generate_embedded_dataset

SMALL = EmbeddedSpec(identities=60, images_per_identity=12, val_identities=30, val_pairs=300)
# 120 training images: a whole epoch takes seconds, for tests of what a user runs end to end
TINY = EmbeddedSpec(identities=20, images_per_identity=6, val_identities=4, val_pairs=20)


def embedded_shards(root: Path, spec: EmbeddedSpec = SMALL, shards: int = 2) -> Path:
    """Generate ``spec`` under ``root`` and pack it into ``root/shards``; returns ``root``."""
    if not (root / "shards" / "meta.json").exists():
        generate_embedded_dataset(root, spec, workers=2)
        code = pack_main(
            [
                str(root / "train"),
                str(root / "shards"),
                "--shards",
                str(shards),
                "--shuffle",
                "--seed",
                "0",
            ]
        )
        assert code == 0
    return root


def color_coded_shards(root: Path, records: int, classes: int, shards: int = 3) -> Path:
    """Solid-colour PNG records whose red channel is the record number, label ``number % classes``.

    PNG is lossless and a flip leaves a solid colour unchanged, so any decoder and any
    augmentation give back the record number from one pixel.
    """
    from PIL import Image

    for i in range(records):
        folder = root / "train" / f"{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (112, 112), (i, 255 - i, 7)).save(folder / f"{i:03d}.png")
    code = pack_main(
        [str(root / "train"), str(root / "shards"), "--shards", str(shards), "--shuffle"]
    )
    assert code == 0
    return root / "shards"
