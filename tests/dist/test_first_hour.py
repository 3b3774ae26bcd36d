"""The first hour (docs/getting-started.md), walked as written, from outside the repository.

Your folder of identity subfolders is packed; one process trains and stops mid-epoch; two
processes resume it to the end of a second epoch, running exactly the steps they announce; the
model is evaluated and exported, and its training curves are drawn from its own metrics
files. The alternative first step, pointing ``--data.root`` at an
existing InsightFace ``train.rec``, trains too. Every command is the real console script or
launcher, every path relative to the working directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import torch
import yaml

from tests.helpers.insightface import folder_items, write_insightface_rec

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
BATCH = 16
TRAIN = [
    "--data.root=packed",
    "--eval.targets=[val.bin]",
    "--name=first",
    f"--data.batch_size={BATCH}",  # this and the rest: for 120 images, not in the docs
    "--data.num_workers=0",
    "--train.log_every=1",
]


def _run(cwd: Path, *cmd: str, **env: str) -> str:
    """Run ``cmd`` in ``cwd`` as a user would; returns its standard error (the log)."""
    argv = list(cmd)
    if cmd[0] in SCRIPTS:
        if (BIN / cmd[0]).exists():
            argv[0] = str(BIN / cmd[0])
        else:  # declared after this environment was installed: what pip's wrapper runs
            module, func = SCRIPTS[cmd[0]].split(":")
            code = f"import sys; from {module} import {func}; sys.exit({func}())"
            argv[:1] = [sys.executable, "-c", code]
    start = time.perf_counter()
    done = subprocess.run(
        argv,
        cwd=cwd,
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
    print(f"{time.perf_counter() - start:6.1f} s  {' '.join(cmd)}")
    assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-3000:])
    return done.stderr


def test_the_first_hour_from_any_directory(tiny_dataset: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(tiny_dataset / "train", work / "faces")  # 20 identities x 6 images
    shutil.copy(tiny_dataset / "val.bin", work / "val.bin")
    torchrun_sh = str(REPO / "launch" / "torchrun.sh")

    # 1. pack your folder
    _run(work, "dist-face-pack", "faces", "packed", "--shards", "2")
    assert (work / "packed" / "meta.json").is_file()

    # 2. train on one process; --train.max_steps=4 stands in for a run stopped mid-epoch
    _run(
        work,
        "bash",
        torchrun_sh,
        *TRAIN,
        "--train.max_steps=4",
        CONFIG="debug_cpu",
        NPROC_PER_NODE="1",
        RESUME="none",
    )
    run = work / "runs" / "first"
    assert (run / "checkpoints" / "step_00000004").is_dir()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    # relative to where the launcher was started, and saved absolute
    assert saved["data"]["root"] == str(work / "packed")
    assert saved["eval"]["targets"] == [str(work / "val.bin")]
    assert saved["output_root"] == str(work / "runs")

    # 3. resume on two processes and train to the end of a second epoch
    log = _run(
        work,
        "bash",
        torchrun_sh,
        *TRAIN,
        "--train.epochs=2",
        CONFIG="debug_cpu",
        NPROC_PER_NODE="2",
        RESUME="auto",
    )
    # the schedule, from the dataset size alone: 4 steps x 16 samples of epoch 0 are consumed;
    # the rest of it, dealt over 2 ranks (padded to equal shares), gives each rank
    # ceil(rest / 2) // 16 batches; epoch 1 is ceil(N / 2) // 16 steps
    n = json.loads((work / "packed" / "meta.json").read_text())["num_images"]
    first, per_epoch = -(-(n - 4 * BATCH) // 2) // BATCH, -(-n // 2) // BATCH
    end = 4 + first + per_epoch
    assert (
        f"resumed at step 4 in epoch 0 ({4 * BATCH} samples of it consumed on 1 rank): "
        f"{first + per_epoch} steps left ({first} to finish epoch 0, then 1 more epoch of "
        f"{per_epoch}), ending at step {end}"
    ) in log, log
    # it then runs exactly those steps, and the progress counters agree with the plan
    records = [json.loads(line) for line in (run / "metrics-rank0.jsonl").read_text().splitlines()]
    resumed = [r for r in records if "train/loss" in r and r["progress/total_steps"] == end]
    assert [r["step"] for r in resumed] == list(range(5, end + 1))
    assert [r["progress/epoch"] for r in resumed] == [0] * first + [1] * per_epoch
    assert f"step {end}/{end} epoch 1 " in log
    last = torch.load(run / "checkpoints" / f"step_{end:08d}" / "state.pt", weights_only=True)
    assert (last["step"], last["epoch"], last["consumed"]) == (end, 1, per_epoch * 2 * BATCH)

    # 4. evaluate the trained backbone on held-out pairs
    _run(work, "dist-face-evaluate", "--run", "runs/first", "--bin", "val.bin", "--quiet")
    report = json.loads((run / "eval_report.json").read_text())
    assert report  # one entry per .bin

    # 5. export it
    _run(work, "dist-face-export", "--run", "runs/first", "--out", "model.onnx", "--safetensors")
    assert (work / "model.onnx").is_file() and (work / "model.safetensors").is_file()

    # 6. its training curves, from the run's own metrics files (no Prometheus)
    _run(work, "dist-face-report", "--run", "runs/first", "--out", "curves.png")
    assert (work / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (REPO / "runs" / "first").exists()


def test_the_first_hour_on_an_existing_insightface_rec(tiny_dataset: Path, tmp_path: Path) -> None:
    """The other first step: no packing, ``--data.root`` names the folder of ``train.rec``."""
    work = tmp_path / "work"
    write_insightface_rec(work / "ms1m", folder_items(tiny_dataset / "train"))
    _run(
        work,
        "dist-face-train",
        "--config",
        "debug_cpu",
        "--data.root=ms1m",
        "--eval.targets=[]",
        "--name=rec",
        "--train.max_steps=2",
        "--data.batch_size=16",
        "--data.num_workers=0",
    )
    assert (work / "runs" / "rec" / "model.pt").is_file()


def _run_failing(cwd: Path, *cmd: str, **env: str) -> subprocess.CompletedProcess:
    """Like :func:`_run` for a command expected to fail: the finished process."""
    return subprocess.run(
        list(cmd),
        cwd=cwd,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_first_hour_with_grayscale_photos_and_landmarks(tmp_path: Path) -> None:
    """A classic face database: 92×112 grayscale PGM photos, a folder per person, 5 points each."""
    from tests.helpers.pgm_faces import make_pgm_faces, write_landmarks

    work = tmp_path / "work"
    points = make_pgm_faces(work / "faces", people=8, per_person=4)
    write_landmarks(work / "landmarks.csv", points)
    torchrun_sh = str(REPO / "launch" / "torchrun.sh")

    # the raw folder given to training: one line that says to pack it
    done = _run_failing(work, "bash", torchrun_sh, "--data.root=faces", CONFIG="debug_cpu")
    assert done.returncode == 2 and "pack it first: dist-face-pack" in done.stderr
    assert "Traceback" not in done.stderr

    # packed as it is: one warning naming the size, what training does, how to align
    log = _run(work, "dist-face-pack", "faces", "raw", "--quiet")
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "92×112 32" in warnings[0] and "--landmarks" in warnings[0]

    # packed aligned: 112×112 crops, no warning, the report says so
    log = _run(work, "dist-face-pack", "faces", "packed", "--landmarks", "landmarks.csv", "--quiet")
    assert "WARNING" not in log
    report = (work / "packed" / "pack_report.txt").read_text()
    assert "# aligned to the 112×112 ArcFace template: yes" in report
    assert "# sizes before packing (width×height): 92×112 32" in report
    assert json.loads((work / "packed" / "meta.json").read_text())["image_shape"] == [112, 112, 1]

    # two ranks, a few steps
    _run(
        work,
        "bash",
        torchrun_sh,
        "--data.root=packed",
        "--eval.targets=[]",
        "--name=pgm",
        "--train.max_steps=3",
        "--data.batch_size=8",
        "--data.num_workers=0",
        CONFIG="debug_cpu",
        NPROC_PER_NODE="2",
        RESUME="none",
    )
    assert (work / "runs" / "pgm" / "model.pt").is_file()

    # a pair list of the raw photos, every genuine pair first: both get a warning
    names = sorted(points)
    genuine = [(names[4 * p], names[4 * p + k], 1) for p in range(8) for k in (1, 2)]
    impostor = [(names[4 * p], names[4 * ((p + 1) % 8) + 1], 0) for p in range(8)] * 2
    (work / "pairs.csv").write_text(
        "".join(f"faces/{a},faces/{b},{same}\n" for a, b, same in genuine + impostor)
    )
    log = _run(
        work, "dist-face-score-pairs", "--run", "runs/pgm", "--pairs", "pairs.csv",
        "--root", ".", "--out", "scores.csv",
    )  # fmt: skip
    assert "32 images of pairs.csv are not 112×112" not in log  # only those the list uses
    assert "are not 112×112 (92×112" in log and "centre-cropped" in log
    assert "the pair list is sorted by label (every genuine pair on one side)" in log
    assert len((work / "scores.csv").read_text().splitlines()) == 1 + 32
    assert 0.0 <= json.loads((work / "scores.json").read_text())["accuracy"] <= 1.0
