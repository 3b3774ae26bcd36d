"""Your own photos, walked as the documentation's ten commands run them, from a directory
outside the repository: raw, unaligned photos of real people → dlib detection → packing →
2-rank training with the ``photos_small`` recipe, which keeps its best evaluated backbone →
``score-pairs`` on raw held-out photos → ONNX.

The photos are made from real photographs that installed packages ship
(:mod:`tests.helpers.real_photos`): six people of a group photo train, two others are held out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.real_photos import make_real_photo_folder

pytest.importorskip("dlib")
pytest.importorskip("skimage")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TRAIN_PEOPLE = [f"group{k}" for k in range(6)]


def _run(work: Path, *cmd: str, **env: str) -> str:
    done = subprocess.run(
        list(cmd),
        cwd=work,
        env={
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
            "DIST_FACE_VENV": sys.prefix,
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout + done.stderr


def test_raw_photos_to_a_trained_model_a_verdict_and_onnx(tmp_path: Path) -> None:
    work = tmp_path / "work"
    make_real_photo_folder(work / "photos" / "train", per_person=4, people=TRAIN_PEOPLE)
    make_real_photo_folder(work / "photos" / "heldout", per_person=3,
                           people=["hopper", "collins"], seed=1)  # fmt: skip

    out = _run(work, "dist-face-pack", "photos/train", "packed", "--detect", "dlib",
               "--workers", "2", "--quiet")  # fmt: skip
    assert "faces found 24 (fast detector 23, fallback 1), missed 0 of 24 photos" in out
    out = _run(work, "dist-face-make-bin", "photos/heldout", "heldout.bin", "--detect", "dlib",
               "--num-pairs", "12")  # fmt: skip
    assert "wrote 12 pairs to heldout.bin" in out and (work / "heldout.csv").is_file()

    log = _run(
        work,
        "bash",
        str(REPO / "launch" / "torchrun.sh"),
        "--train.max_steps=6",  # the rest: a short run of the recipe on 24 photos
        "--data.batch_size=8",
        "--eval.every=2",
        "--checkpoint.every=3",
        CONFIG="photos_small",
        NPROC_PER_NODE="2",
        RESUME="none",
    )
    run = work / "runs" / "photos_small"
    evaluated = {int(s): float(e) for e, s in re.findall(r"EER (\d\.\d+) at step (\d+)", log)}
    assert sorted(evaluated) == [2, 4, 6], log[-3000:]
    best = min(evaluated, key=lambda s: (evaluated[s], s))
    assert re.search(rf"model.pt is the best evaluated backbone: step {best} ", log), log[-3000:]
    assert (run / "model.pt").read_bytes() == (run / "model_best.pt").read_bytes()

    out = _run(work, "dist-face-score-pairs", "--run", "runs/photos_small", "--pairs",
               "heldout.csv", "--detect", "dlib", "--out", "scores.csv")  # fmt: skip
    report = json.loads((work / "scores.json").read_text())
    assert report["num_pairs"] == 12 and 0.0 <= report["eer"] <= 1.0
    # the raw photos aligned on the fly score as the aligned .bin the run evaluated
    assert abs(report["eer"] - evaluated[best]) < 1e-6

    _run(work, "dist-face-export", "--run", "runs/photos_small", "--out", "model.onnx")
    assert (work / "model.onnx").stat().st_size > 0
