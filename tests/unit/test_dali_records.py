"""DALI's MXNet reader (CPU) reads our shards: same labels and pixels as Pillow.

DALI's CPU decoder is libjpeg-turbo, like Pillow's, but the two may pick different IDCT or
chroma-upsampling paths, so pixels are compared with a max-abs tolerance of 2 (of 255) and a
mean-abs tolerance of 0.5 (on this machine they match exactly); labels must match exactly.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_face.data.format.recordio import RecordWriter, pack_record
from dist_face.data.format.shards import ShardSet
from dist_face.data.packing.pack import PackOptions, pack
from dist_face.data.packing.sources import FolderSource
from tests.helpers.images import make_image_folder

dali = pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (extra 'dali')")
fn = pytest.importorskip("nvidia.dali.fn")
types = pytest.importorskip("nvidia.dali.types")

MAX_ABS, MEAN_ABS = 2, 0.5


def read_with_dali(rec: list[str], idx: list[str], count: int) -> tuple[list, list]:
    pipe = dali.Pipeline(batch_size=count, num_threads=1, device_id=None, seed=0)
    with pipe:
        jpegs, labels = fn.readers.mxnet(
            path=rec, index_path=idx, random_shuffle=False, name="reader"
        )
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        pipe.set_outputs(images, labels)
    pipe.build()
    images, labels = pipe.run()
    return [np.array(images[i]) for i in range(count)], [np.array(labels[i]) for i in range(count)]


def pillow(image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))


@pytest.mark.timeout(120)
def test_dali_reads_our_shards_like_pillow(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "img", classes=4, per_class=3, size=24)
    pack(FolderSource(str(tmp_path / "img")), str(tmp_path / "s"), PackOptions(num_shards=2), False)
    shards = ShardSet.open(tmp_path / "s")
    for s in range(shards.num_shards):
        rows = np.flatnonzero(shards.shard_ids == s)
        images, labels = read_with_dali([shards.rec_path(s)], [shards.idx_path(s)], rows.size)
        for i, image, label in zip(rows, images, labels):
            assert label.tolist() == [float(shards.labels[i])]
            expected = pillow(shards.read_image(int(i))[0])
            assert image.shape == expected.shape == (24, 24, 3)
            diff = np.abs(image.astype(np.int16) - expected)
            assert diff.max() <= MAX_ABS and diff.mean() <= MEAN_ABS


@pytest.mark.timeout(120)
def test_dali_stitches_split_records_and_reads_label_arrays(tmp_path: Path) -> None:
    # A PNG whose bytes hold the magic at aligned offsets after the 24+8-byte header, so the
    # record is written in parts; DALI must stitch it back like our reader does.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    png = buf.getvalue()
    magic = bytes.fromhex("0a23d7ce")
    pad = (-(24 + 8 + len(png)) % 4) * b"\0"
    payload = pack_record([3.0, 1.0], png + pad + magic * 3)  # trailing bytes after IEND
    assert payload.count(magic) == 3
    with RecordWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
        w.write(0, payload)
        w.write(1, pack_record(5, png))
    raw = (tmp_path / "x.rec").read_bytes()
    assert raw.count(magic) == 4 + 1  # record 0 in 4 parts, record 1 in one
    images, labels = read_with_dali([str(tmp_path / "x.rec")], [str(tmp_path / "x.idx")], 2)
    assert labels[0].tolist() == [3.0, 1.0] and labels[1].tolist() == [5.0]
    for image in images:
        np.testing.assert_array_equal(image, pixels)  # PNG is lossless: exact
