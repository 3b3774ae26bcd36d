"""The loss study's scores, rows and results.json interface (the training itself: tests/dist)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dist_face.cli.loss_study import format_table
from dist_face.cli.loss_study import main as study_main
from dist_face.study.faces import FaceSet
from dist_face.study.losses import by_name, study_losses, with_scale
from dist_face.study.run import summarise
from dist_face.study.scores import pair_scores, rank1, score

ROW_KEYS = {
    "loss",
    "accuracy",
    "accuracy_std",
    "eer",
    "eer_std",
    "tar_at_far_1e-3",
    "tar_at_far_1e-3_std",
    "rank1",
    "rank1_std",
    "seeds",
}


def _clusters(ids: int, per: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(ids, 16))
    labels = np.repeat(np.arange(ids), per)
    emb = centers[labels] + noise * rng.normal(size=(len(labels), 16))
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), labels


def test_separated_identities_score_perfectly_and_random_ones_at_chance() -> None:
    emb, labels = _clusters(20, 5, noise=0.01)
    s = score(emb, labels)
    assert (s.accuracy, s.eer, s.tar_at_far_1e_3, s.rank1) == (1.0, 0.0, 1.0, 1.0)
    rng = np.random.default_rng(1)
    noise = rng.normal(size=emb.shape)
    s = score(noise / np.linalg.norm(noise, axis=1, keepdims=True), labels)
    assert 0.4 < s.eer < 0.6 and s.rank1 < 0.2


def test_pairs_are_every_unordered_pair_once() -> None:
    emb, labels = _clusters(3, 2, noise=0.0)
    s, same = pair_scores(emb, labels)
    assert len(s) == 15 and same.sum() == 3
    assert s[same] == pytest.approx(1.0)


def test_rank1_uses_the_first_image_of_each_identity_as_gallery() -> None:
    # identity 0: gallery (1, 0), probe (0, 1) is nearer identity 1's gallery (0, 1): a miss
    emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    labels = np.array([0, 0, 1, 1])
    assert rank1(emb, labels) == 0.5


def test_rows_cover_every_head_and_pair_loss() -> None:
    from dist_face.heads import MARGINS
    from dist_face.heads.auxiliary.pair_losses import PAIR_LOSSES

    names = [s.name for s in study_losses()]
    assert set(MARGINS.names()) <= set(names)
    assert {n for n in PAIR_LOSSES.names() if n != "center"} <= set(names)
    assert "softmax+center" in names
    assert all(s.aux.get("head_weight") == 0 for s in by_name(["triplet", "supcon"]))


def test_with_scale_sets_s_only_where_the_margin_has_one() -> None:
    cos, soft, trip = (with_scale(s, 30.0) for s in by_name(["cosface", "softmax", "triplet"]))
    assert cos.head == {"margin": "cosface", "margin_args": {"scale": 30.0}}
    assert soft.head == {"margin": "softmax"} and trip.head == {"margin": "softmax"}


def test_results_json_rows_have_the_interface_keys(tmp_path: Path) -> None:
    runs = [
        {
            "loss": "arcface",
            "seed": s,
            "accuracy": a,
            "eer": 1 - a,
            "tar_at_far_1e_3": 0.5,
            "rank1": 0.7,
            "target_gap": 0.3,
            "final_loss": 2.0,
            "wall_s": 1.0,
        }
        for s, a in enumerate((0.8, 0.9))
    ]
    (tmp_path / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    emb, labels = _clusters(5, 4, noise=0.5)
    rows = summarise(tmp_path, {0: emb}, FaceSet(np.zeros((20, 1, 1, 3), np.uint8), labels))
    assert [r["loss"] for r in rows] == ["arcface", "untrained"]
    assert all(ROW_KEYS <= set(r) for r in rows)
    arc = rows[0]
    assert arc["accuracy"] == pytest.approx(0.85) and arc["accuracy_std"] == pytest.approx(0.05)
    assert arc["seeds"] == [0, 1] and arc["target_gap"] == pytest.approx(0.3)
    assert "| arcface | 0.850 ± 0.050 |" in format_table(rows)


def test_unknown_loss_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert study_main(["--out", str(tmp_path), "--losses", "arcface,arcfce"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown loss 'arcfce'" in err[0]
