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


def ten_commands() -> list[str]:
    """The README's "your own photos in ten commands" block, one command a line, no comments."""
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\ncd ~/my_photos", 1)[1].split("```", 1)[0]
    lines = ("cd ~/my_photos" + block).splitlines()
    return [line.split("  #")[0].strip() for line in lines if line.strip()]


SHORT_RUN = [
    "--train.max_steps=6",  # for 24 photos in a test, not in the README
    "--data.batch_size=8",
    "--eval.every=2",
    "--checkpoint.every=3",
]


def _run(work: Path, line: str) -> str:
    line = line.replace("~/dist_face", str(REPO)).replace("$HOME/dist_face", str(REPO))
    if "torchrun.sh" in line:
        line = " ".join([line, *SHORT_RUN])
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", line],
        cwd=work,
        env={
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "PYTHONPATH": str(REPO),
            "DIST_FACE_VENV": sys.prefix,
            "NPROC_PER_NODE": "2",
            "RESUME": "none",
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-4000:])
    return done.stdout + done.stderr


def test_the_ten_commands_take_raw_photos_to_a_model_a_verdict_and_onnx(tmp_path: Path) -> None:
    work = tmp_path / "my_photos"  # outside the repository
    make_real_photo_folder(work / "train", per_person=4, people=TRAIN_PEOPLE)
    make_real_photo_folder(work / "heldout", per_person=3, people=["hopper", "collins"], seed=1)
    commands = ten_commands()
    assert len(commands) == 10 and commands[0] == "cd ~/my_photos", commands
    assert commands[1].startswith("pip install -e")  # the environment has the extras already
    out = {c.split()[0] if "=" not in c.split()[0] else "train": _run(work, c)
           for c in commands[2:]}  # fmt: skip

    assert "faces found 24 (fast detector 23, fallback 1), missed 0 of 24 photos" in out["head"]
    assert "# landmark order: eye on the image-left, eye on the image-right" in out["head"]
    made = re.search(r"wrote (\d+) pairs to heldout.bin", out["dist-face-make-bin"])
    assert made and (work / "heldout.csv").is_file()

    log, run = out["train"], work / "runs" / "photos_small"
    evaluated = {int(s): float(e) for e, s in re.findall(r"EER (\d\.\d+) at step (\d+)", log)}
    assert sorted(evaluated) == [2, 4, 6], log[-3000:]
    best = min(evaluated, key=lambda s: (evaluated[s], s))
    assert re.search(rf"model.pt is the best evaluated backbone: step {best} ", log), log[-3000:]
    assert (run / "model.pt").read_bytes() == (run / "model_best.pt").read_bytes()

    report = json.loads((work / "scores.json").read_text())
    assert report["num_pairs"] == int(made.group(1))
    # the raw photos, aligned on the fly, score as the aligned .bin the run selected on
    assert abs(report["eer"] - evaluated[best]) < 1e-6
    assert (work / "identify" / "report.json").is_file()
    assert (work / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (work / "model.onnx").stat().st_size > 0 and (work / "model.safetensors").is_file()
