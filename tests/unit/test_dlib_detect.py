"""``--detect dlib`` on real photos: the five points where a person put them by eye, the CNN
fallback for a face the fast detector misses, parallel workers, the counts in the pack report,
model files found without ``pkg_resources``; and the eye-order warning for a landmark file."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dist_face.data.format.shards import ShardSet
from dist_face.eval.align import ARCFACE_TEMPLATE, similarity_transform
from tests.helpers.pgm_faces import make_pgm_faces, write_landmarks
from tests.helpers.real_photos import cameraman, make_real_photo_folder, no_face, source_photos

pytest.importorskip("dlib")
pytest.importorskip("skimage")

HOPPER_BY_EYE = np.array([[224, 192], [305, 189], [267, 238], [233, 281], [300, 277]], float)
"""Grace Hopper's pupils, nose tip and mouth corners in ``grace_hopper.jpg``, placed by eye."""


def test_the_five_points_are_where_a_person_puts_them_in_template_order() -> None:
    from dist_face.data.packing.dlib_detect import DlibDetector, five_points

    photo, _ = source_photos()["hopper"]
    found = DlibDetector().detect(photo.read_bytes())
    assert found.how == "fast"
    assert np.abs(found.points - HOPPER_BY_EYE).max() < 8  # the face is 187 px wide

    # 68 → 5: the eye centres are the means of the six points around each eye
    shape = np.arange(136, dtype=float).reshape(68, 2)
    expected = [shape[36:42].mean(0), shape[42:48].mean(0), shape[30], shape[48], shape[54]]
    assert np.array_equal(five_points(shape), np.stack(expected))


def test_pack_detects_in_parallel_falls_back_to_the_cnn_and_counts_in_the_report(
    tmp_path: Path, capsys
) -> None:
    from dist_face.cli.pack import main

    root = tmp_path / "photos"
    make_real_photo_folder(root, per_person=2, people=["hopper", "collins", "group1"])
    (root / "cameraman").mkdir()
    shutil.copy(cameraman(), root / "cameraman" / "0.png")
    shutil.copy(no_face(), root / "cameraman" / "1.png")
    out = tmp_path / "packed"
    assert main([str(root), str(out), "--detect", "dlib", "--workers", "2", "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "faces found 7 (fast detector 6, fallback 1), missed 1 of 8 photos" in stdout
    assert "photos/s/worker (2 worker(s)" in stdout
    report = (out / "pack_report.txt").read_text()
    assert "# detection (dlib): faces found 7 (fast detector 6, fallback 1), missed 1" in report
    assert "# landmark order: eye on the image-left, eye on the image-right" in report
    assert "cameraman/1.png\tno face found (fast detector and CNN fallback)" in report

    shards = ShardSet.open(out)
    assert len(shards) == 7
    for i in range(len(shards)):  # every face lands on the template: eyes level, mouth below
        with Image.open(io.BytesIO(shards.read_image(i)[0])) as im:
            assert im.size == (112, 112)
    # each detected face's 5 points fit the template by a similarity transform with a small
    # residual (points in the wrong order would not)
    from dist_face.data.packing.detect import detect_landmarks
    from dist_face.data.packing.sources import open_source

    shutil.rmtree(root / "cameraman")
    found = detect_landmarks(open_source(str(root)), "dlib")
    assert found.counts == {"fast": 6, "fallback": 0, "missed": 0}
    for where, points in found.found.items():
        m = similarity_transform(points)
        mapped = points @ m[:, :2].T + m[:, 2]
        # a turned head moves the nose tip ~11 px; mirrored or shuffled points miss by > 30
        assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 14, where


def test_the_model_files_are_found_without_pkg_resources() -> None:
    code = (
        "import sys; sys.modules['pkg_resources'] = None\n"  # as with setuptools >= 81
        "from dist_face.data.packing.dlib_detect import DlibDetector\n"
        "DlibDetector()\n"
        "assert 'face_recognition_models' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_an_unknown_detector_name_is_one_line(tmp_path: Path, capsys) -> None:
    from dist_face.cli.pack import main

    root = tmp_path / "faces"
    make_pgm_faces(root, people=2, per_person=1)
    assert main([str(root), str(tmp_path / "out"), "--detect", "mtcnn", "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "dist-face-pack: error: --detect mtcnn: neither 'dlib' nor an ONNX detector file "
        "(no such file)"
    )


def test_a_landmark_file_in_the_subjects_order_is_warned_naming_its_rows(
    tmp_path: Path, capsys
) -> None:
    from dist_face.cli.pack import main

    root = tmp_path / "faces"
    points = make_pgm_faces(root, people=3, per_person=2)
    mirrored = {k: p[[1, 0, 2, 4, 3]] for k, p in points.items()}  # subject's left eye first
    mirrored["s1/1.pgm"] = points["s1/1.pgm"]  # one row right
    csv = write_landmarks(tmp_path / "points.csv", mirrored)
    assert main([str(root), str(tmp_path / "out"), "--landmarks", str(csv), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "5 of 6 landmark rows have the first eye to the image-right of the second" in err
    assert "s1/2.pgm, s2/1.pgm, s2/2.pgm, s3/1.pgm, s3/2.pgm" in err
    report = (tmp_path / "out" / "pack_report.txt").read_text()
    assert "# WARNING: " in report and "s3/2.pgm" in report

    write_landmarks(csv, points)  # the template's order: no warning
    assert main([str(root), str(tmp_path / "out2"), "--landmarks", str(csv), "--quiet"]) == 0
    assert "image-right of the second" not in capsys.readouterr().err


def test_a_source_that_cannot_be_sent_to_the_workers_is_read_by_the_packer(tmp_path: Path) -> None:
    from dist_face.data.packing.detect import detect_landmarks

    class OpenFile:  # holds an open file, as a .rec reader does: it cannot be pickled
        def __init__(self, path: Path) -> None:
            self.file = open(path, "rb")

        def __len__(self) -> int:
            return 2

        def read(self, i: int) -> bytes:
            self.file.seek(0)
            return self.file.read()

        def describe(self, i: int) -> str:
            return f"copy{i}.jpg"

    photo, _ = source_photos()["hopper"]
    source = OpenFile(photo)
    try:
        found = detect_landmarks(source, "dlib", workers=2)
    finally:
        source.file.close()
    assert found.counts == {"fast": 2, "fallback": 0, "missed": 0}
    assert np.abs(found.found["copy1.jpg"] - HOPPER_BY_EYE).max() < 8
