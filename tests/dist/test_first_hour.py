"""The README's "first hour", walked as written, from a directory that is not the repository.

Your folder of identity subfolders is packed; one process trains an epoch; two processes resume
it for a second epoch; the model is evaluated and exported. The alternative first step, pointing
``--data.root`` at an existing InsightFace ``train.rec``, trains too. Every command is the real
console script or launcher, every path relative to the working directory.
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

from tests.helpers.insightface import folder_items, write_insightface_rec

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
TRAIN = [
    "--data.root=packed",
    "--eval.targets=[val.bin]",
    "--name=first",
    "--data.batch_size=16",
    "--data.num_workers=0",
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

    # 2. train one epoch on one process (120 images / 16 = 7 steps)
    _run(work, "bash", torchrun_sh, *TRAIN, CONFIG="debug_cpu", NPROC_PER_NODE="1", RESUME="none")
    run = work / "runs" / "first"
    assert (run / "checkpoints" / "step_00000007").is_dir()

    # 3. resume on two processes for a second epoch: 60 images per rank / 16 = 3 steps
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
    assert "resumed at step 7 in epoch 0 (112 samples of it consumed on 1 rank)" in log, log
    assert "3 steps left (0 to finish epoch 0, then 1 more epoch of 3), ending at step 10" in log
    assert (run / "checkpoints" / "step_00000010").is_dir()

    # 4. evaluate the trained backbone on held-out pairs
    _run(work, "dist-face-evaluate", "--run", "runs/first", "--bin", "val.bin", "--quiet")
    report = json.loads((run / "eval_report.json").read_text())
    assert report  # one entry per .bin

    # 5. export it
    _run(work, "dist-face-export", "--run", "runs/first", "--out", "model.onnx", "--safetensors")
    assert (work / "model.onnx").is_file() and (work / "model.safetensors").is_file()
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
