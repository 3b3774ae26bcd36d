"""pack / inspect / verify / reshard / unpack / make_bin through their main(argv)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from dist_face.cli import inspect as inspect_cli
from dist_face.cli import make_bin, pack, reshard, unpack, verify
from dist_face.data.format.recordio import RecordWriter, pack_record
from dist_face.data.format.shards import ShardSet
from tests.helpers.images import make_image_folder


@pytest.fixture
def packed(tmp_path: Path) -> tuple[Path, dict[str, tuple[bytes, int]]]:
    files = make_image_folder(tmp_path / "images", classes=6, per_class=3)
    argv = [str(tmp_path / "images"), str(tmp_path / "shards"), "--shards", "3", "--seed", "2"]
    assert pack.main([*argv, "--quiet"]) == 0
    return tmp_path / "shards", files


def contents(root: Path) -> list[tuple[bytes, int]]:
    shards = ShardSet.open(root)
    return [shards.read_image(i) for i in range(len(shards))]


def test_pack_and_inspect(packed, capsys) -> None:
    root, files = packed
    assert sorted(contents(root)) == sorted(files.values())
    capsys.readouterr()
    assert inspect_cli.main([str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == 21 and summary["num_classes"] == 6
    assert summary["images_per_class"]["histogram"] == {"2-4": 6}
    assert summary["records_per_shard"] == [7, 7, 7] and summary["image_shape"] == [16, 16, 3]
    assert summary["record_bytes"]["total"] == sum(len(b) + 24 for b, _ in files.values())
    assert inspect_cli.main([str(root)]) == 0
    assert "num_images: 21" in capsys.readouterr().out


def test_pack_errors_are_reported(tmp_path: Path, capsys) -> None:
    assert pack.main([str(tmp_path / "nope.rec"), str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    make_image_folder(tmp_path / "img", classes=2, per_class=1)
    assert pack.main([str(tmp_path / "img"), str(tmp_path / "o"), "--shards", "9"]) == 2
    assert "non-empty shards" in capsys.readouterr().err


def test_pack_reencode(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "img", classes=2, per_class=2, size=20)
    argv = [str(tmp_path / "img"), str(tmp_path / "o"), "--resize", "8", "--quality", "80"]
    assert pack.main([*argv, "--quiet"]) == 0
    assert ShardSet.open(tmp_path / "o").meta.image_shape == [8, 8, 3]


def test_verify_reports_each_bad_record(packed, capsys) -> None:
    root, _ = packed
    assert verify.main([str(root)]) == 0
    assert "21 records scanned, 0 problems" in capsys.readouterr().out
    shards = ShardSet.open(root)
    path = shards.rec_path(1)
    rows = np.flatnonzero(shards.shard_ids == 1)
    # key 1: zero the JPEG's tables (same length, framing intact)
    at = int(shards.offsets[rows[1]]) + 8 + 24 + 20
    data = bytearray(Path(path).read_bytes())
    data[at : at + 200] = bytes(200)
    # key 4: overwrite the JPEG signature -> not an image
    sig = int(shards.offsets[rows[4]]) + 8 + 24
    data[sig : sig + 4] = b"RIFX"
    Path(path).write_bytes(bytes(data))
    assert verify.main([str(root)]) == 1
    out = capsys.readouterr().out
    name = Path(path).as_posix()
    assert f"BAD {name} key=4 offset={shards.offsets[rows[4]]}: not a recognised image" in out
    assert f"BAD {name} key=1 offset={shards.offsets[rows[1]]}: not a recognised image" in out
    assert "shard checksum differs from meta.json" in out and "payload CRC-32 differs" in out


def test_verify_reports_manifest_labels_out_of_range(packed, capsys) -> None:
    root, _ = packed
    meta = root / "meta.json"
    meta.write_text(meta.read_text().replace('"num_classes": 6', '"num_classes": 5'))
    assert verify.main([str(root), "--no-decode"]) == 1
    out = capsys.readouterr().out
    assert out.count("label 5 out of range [0, 5)") == 4  # class 5 has 4 images


def test_verify_plain_rec_framing_and_labels(tmp_path: Path, capsys) -> None:
    good = make_image_folder(tmp_path / "img", classes=1, per_class=2)
    images = [b for b, _ in good.values()]
    with RecordWriter(tmp_path / "x.rec", tmp_path / "x.idx") as w:
        w.write(0, pack_record(0, images[0]))
        w.write(1, pack_record(9, images[1]))  # label out of range
        w.write(2, pack_record(0, images[0][:400]))  # truncated JPEG
    with open(tmp_path / "x.rec", "ab") as f:
        f.write(b"\x0a\x23\xd7\xce\x40\x00\x00\x00ab")  # length past end of file
    assert verify.main([str(tmp_path / "x.rec"), "--num-classes", "2"]) == 1
    out = capsys.readouterr().out
    assert "key=1" in out and "label 9 out of range [0, 2)" in out
    assert "key=2" in out and "undecodable image: OSError" in out
    assert "key=None" in out and "runs past the end of the file" in out


def test_verify_skips_insightface_header_records(tmp_path: Path, capsys) -> None:
    good = make_image_folder(tmp_path / "img", classes=1, per_class=2)
    images = [b for b, _ in good.values()]
    with RecordWriter(tmp_path / "i.rec", tmp_path / "i.idx") as w:
        w.write(0, pack_record([3, 4], b""))
        w.write(1, pack_record([0, 1], images[0]))
        w.write(2, pack_record([0, 1], images[1]))
        w.write(3, pack_record([1, 3], b""))
    assert verify.main([str(tmp_path / "i.rec"), "--num-classes", "1"]) == 0
    assert "4 records scanned, 0 problems" in capsys.readouterr().out


def test_reshard_keeps_order_and_unpack_repacks(packed, tmp_path: Path) -> None:
    root, files = packed
    assert reshard.main([str(root), str(tmp_path / "r"), "--shards", "2", "--quiet"]) == 0
    assert contents(tmp_path / "r") == contents(root)
    assert ShardSet.open(tmp_path / "r").num_shards == 2
    assert unpack.main([str(tmp_path / "r"), str(tmp_path / "u"), "--quiet"]) == 0
    written = sorted((tmp_path / "u").rglob("*.jpg"))
    assert len(written) == 21 and written[0].parent.name == "0"
    argv = [str(tmp_path / "u"), str(tmp_path / "again"), "--no-shuffle", "--quiet"]
    assert pack.main(argv) == 0
    assert sorted(contents(tmp_path / "again")) == sorted(files.values())


def test_make_bin(tmp_path: Path, capsys) -> None:
    files = make_image_folder(tmp_path / "img", classes=2, per_class=2)
    names = sorted(files)
    pairs = tmp_path / "img" / "pairs.txt"
    pairs.write_text(f"# a comment\n{names[0]} {names[1]} 1\n{names[0]}\t{names[2]}\t0\n")
    assert make_bin.main([str(pairs), str(tmp_path / "lfw.bin")]) == 0
    with open(tmp_path / "lfw.bin", "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    assert issame == [True, False]
    assert bins == [files[names[0]][0], files[names[1]][0], files[names[0]][0], files[names[2]][0]]
    pairs.write_text("a b maybe\n")
    assert make_bin.main([str(pairs), str(tmp_path / "x.bin")]) == 2
    assert "pairs.txt:1" in capsys.readouterr().err
