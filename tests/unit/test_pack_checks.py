"""Packing checks its input: bad images skipped and reported (or fatal), odd files counted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dist_face.data.format.shards import ShardSet
from tests.helpers.images import make_image_folder

PACK = str(Path(sys.executable).parent / "dist-face-pack")


@pytest.fixture
def messy(tmp_path: Path) -> tuple[Path, dict]:
    """5 identities; a text file named .jpg, a truncated JPEG, notes, an empty identity."""
    root = tmp_path / "img"
    files = make_image_folder(root, classes=5, per_class=4)
    (root / "id_001" / "fake.jpg").write_text("this is not an image\n")
    whole = (root / "id_003" / "00.jpg").read_bytes()
    (root / "id_003" / "00.jpg").write_bytes(whole[:-40])  # headers whole, scan data cut
    del files["id_003/00.jpg"]
    (root / "id_002" / "notes.txt").write_text("who is this\n")
    (root / "README.md").write_text("my dataset\n")
    (root / "id_000a_empty").mkdir()  # sorts between id_000 and id_001
    return root, files


def _pack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PACK, *args, "--quiet"], capture_output=True, text=True)


def test_bad_images_are_skipped_and_reported_and_labels_stay_contiguous(messy, tmp_path) -> None:
    root, files = messy
    out = tmp_path / "shards"
    done = _pack(str(root), str(out), "--shards", "2")
    assert done.returncode == 0, done.stderr
    assert "skipped 2 image(s) that failed the decode check" in done.stdout
    assert "ignored 1 file(s) outside the identity folders (.md 1)" in done.stdout
    assert "ignored 1 file(s) not an image Pillow recognises (by content) (.txt 1)" in done.stdout
    assert "skipped 1 identity folder(s) without images" in done.stdout
    assert "id_000a_empty" in done.stderr  # the warning names the folder
    report = (out / "pack_report.txt").read_text().splitlines()
    assert report[0] == "# 2 image(s) skipped: they failed the check"
    listed = dict(line.split("\t", 1) for line in report if not line.startswith("#"))
    assert set(listed) == {"id_001/fake.jpg", "id_003/00.jpg"}
    assert "not an image" in listed["id_001/fake.jpg"]
    shards = ShardSet.open(out)
    assert shards.num_classes == 5  # the empty folder is no class
    assert np.array_equal(np.unique(shards.labels), np.arange(5))
    sources = shards.manifest.column("source").to_pylist()
    assert sorted(sources) == sorted(files)  # every good image, nothing else
    for source, label in zip(sources, shards.labels.tolist()):
        assert files[source][1] == label  # id_00c keeps label c: the empty folder took none


def test_strict_refuses_and_writes_nothing(messy, tmp_path) -> None:
    root, _ = messy
    out = tmp_path / "strict"
    done = _pack(str(root), str(out), "--strict")
    assert done.returncode == 2
    assert "2 image(s) fail the decode check (--strict)" in done.stderr
    assert "id_001/fake.jpg" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_header_check_catches_a_text_file_but_not_a_truncated_image(messy, tmp_path) -> None:
    root, _ = messy
    done = _pack(str(root), str(tmp_path / "h"), "--check", "header")
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "h" / "pack_report.txt").read_text()
    assert "id_001/fake.jpg" in report and "id_003/00.jpg" not in report


def test_a_class_whose_every_image_is_bad_is_removed(tmp_path) -> None:
    root = tmp_path / "img"
    files = make_image_folder(root, classes=3, per_class=2)
    for name in [f for f in files if f.startswith("id_001/")]:
        (root / name).write_bytes(b"\0" * 100)
    done = _pack(str(root), str(tmp_path / "s"))
    assert done.returncode == 0, done.stderr
    assert "removed 1 class(es) whose every image was skipped" in done.stdout
    shards = ShardSet.open(tmp_path / "s")
    assert shards.num_classes == 2
    by_source = dict(zip(shards.manifest.column("source").to_pylist(), shards.labels.tolist()))
    assert {s.split("/")[0]: lab for s, lab in by_source.items()} == {"id_000": 0, "id_002": 1}
