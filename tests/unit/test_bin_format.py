"""The verification .bin format and its safe loader."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from dist_face.eval.bin_format import BinFormatError, decode_images, load_bin, save_bin


def _jpeg(color: tuple[int, int, int], size: int = 112) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_round_trip(tmp_path) -> None:
    images = [_jpeg((10 * i, 0, 0)) for i in range(4)]
    path = save_bin(tmp_path / "v.bin", images, [True, False])
    got, issame = load_bin(path)
    assert got == images and issame.tolist() == [True, False]
    pixels = decode_images(got)
    assert pixels.shape == (4, 112, 112, 3) and abs(int(pixels[3, 5, 5, 0]) - 30) <= 2


def test_numpy_and_python2_style_files_load(tmp_path) -> None:
    images = [bytearray(_jpeg((0, 0, 0), size=96)) for _ in range(2)]
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps((images, np.array([True])), protocol=2))
    got, issame = load_bin(path)
    assert issame.tolist() == [True] and decode_images(got).shape == (2, 112, 112, 3)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_code_in_a_bin_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([_Evil()], [True])))
    with pytest.raises(BinFormatError, match=r"evil\.bin: refusing to load .*system"):
        load_bin(path)


def test_wrong_structure_is_named(tmp_path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(BinFormatError, match=r"bad\.bin: 3 images for 1 pairs"):
        load_bin(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(BinFormatError, match="not a verification pickle"):
        load_bin(path)
