"""CSV pair lists and the identification command on a folder of aligned generated faces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_face.cli.identify import main as identify_main
from dist_face.cli.score_pairs import main as score_main
from dist_face.data.synthetic.faces import sample_jpeg
from dist_face.eval.verification import equal_error_rate
from dist_face.models import create, load_backbone, save_backbone


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("faces")
    for s in range(6):
        (root / f"s{s}").mkdir()
        for i in range(3):
            (root / f"s{s}" / f"{i}.jpg").write_bytes(sample_jpeg(9, 5_000_000 + s, i))
    torch.manual_seed(0)
    ckpt = save_backbone(
        create("tiny", embedding_size=16), root / "model.pt", "tiny", embedding_size=16
    )
    return root, ckpt


def _pairs(root: Path, labels: bool) -> Path:
    rows = []
    for s in range(6):
        rows.append((f"s{s}/0.jpg", f"s{s}/1.jpg", 1))
        rows.append((f"s{s}/2.jpg", f"s{(s + 1) % 6}/0.jpg", 0))
    path = root / ("labelled.csv" if labels else "plain.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if labels:
            w.writerow(["img1", "img2", "label"])
        for a, b, y in rows:
            w.writerow([a, b, y] if labels else [a, b])
    return path


def _embedding(ckpt: Path, file: Path) -> np.ndarray:
    from PIL import Image

    model = load_backbone(ckpt).eval()
    x = torch.from_numpy(np.asarray(Image.open(file).convert("RGB")).copy()).permute(2, 0, 1)
    x = x[None].float() / 127.5 - 1
    with torch.no_grad():
        e = model(x) + model(torch.flip(x, dims=[3]))
    return torch.nn.functional.normalize(e, dim=1)[0].numpy()


def test_scores_are_cosines_of_flip_embeddings_and_metrics_follow(faces, tmp_path) -> None:
    root, ckpt = faces
    pairs = _pairs(root, labels=True)
    out = tmp_path / "scores.csv"
    assert score_main(["--backbone", str(ckpt), "--pairs", str(pairs), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 12 and rows[0]["img1"] == "s0/0.jpg"
    a, b = _embedding(ckpt, root / "s0/0.jpg"), _embedding(ckpt, root / "s0/1.jpg")
    assert float(rows[0]["score"]) == pytest.approx(float(a @ b), abs=1e-5)
    report = json.loads(out.with_suffix(".json").read_text())
    scores = np.array([float(r["score"]) for r in rows])
    labels = np.array([r["label"] == "1" for r in rows])
    assert report["eer"] == pytest.approx(equal_error_rate(scores, labels), abs=1e-5)
    assert report["num_pairs"] == 12 and set(report["tar_at_far"]) == {
        "0.0001",
        "0.001",
        "0.01",
        "0.1",
    }


def test_unlabelled_list_gets_scores_only(faces, tmp_path) -> None:
    root, ckpt = faces
    out = tmp_path / "s.csv"
    assert (
        score_main(
            ["--backbone", str(ckpt), "--pairs", str(_pairs(root, False)), "--out", str(out)]
        )
        == 0
    )
    assert next(csv.reader(open(out))) == ["img1", "img2", "score"]
    assert not out.with_suffix(".json").exists()


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("s0/0.jpg,s0/1.jpg,maybe", "bad.csv:3: label 'maybe' is not 0/1"),
        ("s0/0.jpg,s9/9.jpg,1", "s9/9.jpg ("),
        ("s0/0.jpg", "bad.csv:3: expected img1,img2[,label]"),
    ],
)
def test_bad_rows_and_images_name_file_and_line(faces, tmp_path, capsys, row, expected) -> None:
    root, ckpt = faces
    bad = root / "bad.csv"
    bad.write_text(f"img1,img2,label\ns0/0.jpg,s1/0.jpg,0\n{row}\n")
    assert (
        score_main(["--backbone", str(ckpt), "--pairs", str(bad), "--out", str(tmp_path / "o.csv")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_identify_reports_open_set_and_the_distractor_curve(faces, tmp_path) -> None:
    root, ckpt = faces
    out = tmp_path / "ident"
    argv = [
        "--backbone",
        str(ckpt),
        "--probes",
        str(root),
        "--distractors",
        "20",
        "--out",
        str(out),
    ]
    assert identify_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    open_set = report["open_set"]
    # 3 of 6 subjects enrolled with their first image: 3 x 2 mated, 3 x 3 non-mated probes
    assert open_set["num_mated"] == 6 and open_set["num_non_mated"] == 9
    assert list(report["megaface_rank1"]) == ["10", "20"]
    assert (out / "megaface.png").is_file()
