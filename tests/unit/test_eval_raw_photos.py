"""score-pairs, evaluate --pairs and identify on raw photos, aligned on the fly by --landmarks or
--detect dlib: the same scores as on the same faces aligned beforehand."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dist_face.data.packing.aligned import align_image, read_landmarks
from tests.helpers.pgm_faces import make_pgm_faces, write_landmarks


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    from dist_face.models import create, save_backbone

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return save_backbone(create("tiny", embedding_size=16), path, "tiny", embedding_size=16)


def _pairs(root: Path, names: list[str]) -> Path:
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            rows.append(f"{a},{b},{int(a.split('/')[0] == b.split('/')[0])}")
    (root / "pairs.csv").write_text("img1,img2,label\n" + "\n".join(rows) + "\n")
    return root / "pairs.csv"


def _aligned_copy(raw: Path, points: dict[str, np.ndarray], out: Path) -> None:
    for name, p in points.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        face = align_image((raw / name).read_bytes(), p)
        Image.fromarray(face).convert("RGB").save((out / name).with_suffix(".png"))


def _scores(path: Path) -> list[str]:
    with open(path) as f:
        return [row["score"] for row in csv.DictReader(f)]


def test_raw_photos_with_landmarks_score_as_the_same_faces_aligned_beforehand(
    tmp_path: Path, backbone: Path
) -> None:
    from dist_face.cli import evaluate, identify, score_pairs

    raw = tmp_path / "raw"
    points = make_pgm_faces(raw, people=3, per_person=2)
    marks = write_landmarks(tmp_path / "points.csv", points)
    points = read_landmarks(str(marks), str(raw))  # as written: 3 decimals
    names = sorted(points)
    pairs = _pairs(raw, names)
    aligned = tmp_path / "aligned"
    _aligned_copy(raw, points, aligned)
    _pairs(aligned, [n.replace(".pgm", ".png") for n in names])

    common = ["--backbone", str(backbone)]
    assert score_pairs.main([*common, "--pairs", str(pairs), "--out", str(tmp_path / "raw.csv"),
                             "--landmarks", str(marks)]) == 0  # fmt: skip
    assert score_pairs.main([*common, "--pairs", str(aligned / "pairs.csv"),
                             "--out", str(tmp_path / "ref.csv")]) == 0  # fmt: skip
    assert _scores(tmp_path / "raw.csv") == _scores(tmp_path / "ref.csv")

    assert evaluate.main([*common, "--pairs", str(pairs), "--landmarks", str(marks),
                          "--out", str(tmp_path / "e.json"), "--quiet"]) == 0  # fmt: skip
    ours = json.loads((tmp_path / "e.json").read_text())["pairs/trained"]
    assert ours["eer"] == json.loads((tmp_path / "raw.json").read_text())["eer"]

    assert identify.main([*common, "--probes", str(raw), "--landmarks", str(marks),
                          "--out", str(tmp_path / "id_raw")]) == 0  # fmt: skip
    assert identify.main([*common, "--probes", str(aligned),
                          "--out", str(tmp_path / "id_ref")]) == 0  # fmt: skip
    raw_report = json.loads((tmp_path / "id_raw" / "report.json").read_text())["open_set"]
    ref_report = json.loads((tmp_path / "id_ref" / "report.json").read_text())["open_set"]
    assert raw_report == ref_report


def test_a_pair_list_of_raw_real_photos_is_scored_with_the_dlib_detector(
    tmp_path: Path, backbone: Path, capfd
) -> None:
    pytest.importorskip("dlib")
    pytest.importorskip("skimage")
    import shutil

    from dist_face.cli import score_pairs
    from dist_face.data.packing.dlib_detect import DlibDetector
    from tests.helpers.real_photos import make_real_photo_folder, no_face

    raw = tmp_path / "raw"
    made = make_real_photo_folder(raw, per_person=2, people=["hopper", "group4"])
    shutil.copy(no_face(), raw / "hopper" / "cup.png")
    names = [str(p.relative_to(raw)) for ps in made.values() for p in ps] + ["hopper/cup.png"]
    pairs = _pairs(raw, names)
    assert score_pairs.main(["--backbone", str(backbone), "--pairs", str(pairs), "--out",
                             str(tmp_path / "raw.csv"), "--detect", "dlib"]) == 0  # fmt: skip
    detector = DlibDetector()
    points = {n: detector.detect((raw / n).read_bytes()).points for n in names[:-1]}
    aligned = tmp_path / "aligned"
    _aligned_copy(raw, points, aligned)
    _pairs(aligned, [n.replace(".jpg", ".png") for n in names[:-1]])
    assert score_pairs.main(["--backbone", str(backbone), "--pairs", str(aligned / "pairs.csv"),
                             "--out", str(tmp_path / "ref.csv")]) == 0  # fmt: skip
    ours = _scores(tmp_path / "raw.csv")
    assert [s for s in ours if s] == _scores(tmp_path / "ref.csv")
    assert ours.count("") == 4  # the cup is in 4 pairs: no face, no score
    err = capfd.readouterr().err
    assert "1 of 5 photos left out (no face found): hopper/cup.png" in err
    assert "faces found 4 (fast detector 3, fallback 1), missed 1 of 5 photos" in err
    report = json.loads((tmp_path / "raw.json").read_text())
    assert report["pairs_without_score"] == 4 and report["num_pairs"] == 6
