"""Relative paths are relative to where the user started; a missing input is one line at start-up.

Everything here runs the real launcher and console script from a directory that is not the
repository root.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from tests.helpers import slurm

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "DIST_FACE_VENV": sys.prefix,
        "CONFIG": "debug_cpu",
        "RESUME": "none",
        "NPROC_PER_NODE": "2",
        **extra,
    }


def _torchrun_sh(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(REPO / "launch" / "torchrun.sh"), *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_missing_input_is_one_line_naming_its_key_and_absolute_path(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    """The launcher under torchrun for data.root; the console script for the other inputs."""
    work = tmp_path / "work"
    work.mkdir()
    base = [
        f"--data.root={tiny_dataset}/shards",
        "--eval.targets=[]",
        "--output_root=runs",
        "--train.max_steps=1",
    ]
    cases = {
        "data.root": ["--data.root=packed"],
        "eval.targets": ["--eval.targets=[lfw.bin]"],
        "checkpoint.resume": ["--resume=runs/old/checkpoints/step_00000010"],
        "model.init_backbone": ["--init-backbone=r50.pt"],
    }
    missing = {
        "data.root": work / "packed",
        "eval.targets": work / "lfw.bin",
        "checkpoint.resume": work / "runs/old/checkpoints/step_00000010",
        "model.init_backbone": work / "r50.pt",
    }

    def run(key: str) -> tuple[str, subprocess.CompletedProcess]:
        if key == "data.root":  # the reported case: the launcher, two ranks
            return key, _torchrun_sh(work, *base, *cases[key])
        script = [str(BIN / "dist-face-train"), "--config", "debug_cpu"]
        return key, subprocess.run(
            [*script, *base, *cases[key]],
            cwd=work,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    with ThreadPoolExecutor(2) as pool:
        results = dict(pool.map(run, cases))
    for key, done in results.items():
        expected = f"bad configuration: {key}: {missing[key]} does not exist"
        lines = [line for line in done.stderr.splitlines() if "bad configuration" in line]
        # the launcher checks once before starting the ranks: one line there too
        assert len(lines) == 1 and all(line.endswith(expected) for line in lines), (
            key,
            done.stderr[-3000:],
        )
        assert "packing may not have finished" not in done.stderr
        frames = [line for line in done.stderr.splitlines() if line.strip().startswith('File "')]
        assert not any("dist_face" in line for line in frames), done.stderr  # no traceback
        assert done.returncode != 0
    assert not (work / "runs").exists()  # refused before anything was written


def test_the_debug_recipe_names_its_cached_data_from_any_directory(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = subprocess.run(
        [str(BIN / "dist-face-train"), "--config", "debug_cpu", "--print-config"],
        cwd=tmp_path,
        env=_env(DIST_FACE_CACHE=str(cache)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load(done.stdout)
    # in the cache, never in the checkout (a clone's data/ folder shadowed the package)
    assert cfg["data"]["root"] == str(cache / "debug_cpu" / "shards")
    assert cfg["eval"]["targets"] == [str(cache / "debug_cpu" / "val.bin")]
    assert cfg["output_root"] == str(tmp_path / "runs")  # what a user runs writes where they are


def test_the_launchers_start_their_workers_where_they_were_started(tmp_path: Path) -> None:
    """Stand-ins for torchrun and deepspeed print the directory they were started in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("torchrun", "deepspeed"):
        (bin_dir / tool).write_text('#!/bin/sh\necho "cwd=$PWD"\n')
        (bin_dir / tool).chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    for script in ("torchrun.sh", "deepspeed.sh"):
        done = subprocess.run(
            ["bash", str(REPO / "launch" / script)],
            cwd=work,
            env=_env(PATH=f"{bin_dir}:{BIN}:{os.environ['PATH']}", PREFLIGHT="0"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (script, done.stderr[-2000:])
        assert done.stdout.strip() == f"cwd={work}", (script, done.stdout)


def test_the_quickstart_reads_a_relative_run_directory_where_it_was_started(
    tmp_path: Path,
) -> None:
    (tmp_path / "runs" / "mine" / "checkpoints").mkdir(parents=True)  # an earlier run, here
    done = subprocess.run(
        ["bash", str(REPO / "launch" / "quickstart.sh"), "--dry-run"],
        cwd=tmp_path,
        env=_env(QUICKSTART_RUN="runs/mine", QUICKSTART_DIR="faces"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "runs/mine holds an earlier run: kept; this run writes runs/mine-2" in done.stdout
    assert "dataset faces (" in done.stdout
    default = subprocess.run(
        ["bash", str(REPO / "launch" / "quickstart.sh"), "--dry-run"],
        cwd=tmp_path,
        env={
            **{k: v for k, v in _env().items() if not k.startswith("QUICKSTART_")},
            "DIST_FACE_CACHE": str(tmp_path / "cache"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"dataset {tmp_path}/cache/quickstart (" in default.stdout, default.stdout


def _slurm_job(tmp_path: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    """``sbatch --nodes=2 ~/dist_face/launch/slurm.sbatch`` submitted from ``tmp_path/work``:
    the batch step runs a copy of the script from a spool directory, with DRY_RUN=1."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    shutil.copy(REPO / "launch" / "slurm.sbatch", spool / "slurm_script")
    env = {k: v for k, v in _env().items() if not k.startswith("SLURM")}
    env.pop("DIST_FACE_REPO", None)
    env.update(
        PATH=f"{bin_dir}:{BIN}:{os.environ['PATH']}",
        DRY_RUN="1",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="gpu-node-[07-08]",
        SLURM_JOB_NUM_NODES="2",
        SLURM_GPUS_PER_NODE="8",
        SLURM_SUBMIT_DIR=str(work),
    )
    return subprocess.run(
        ["bash", str(spool / "slurm_script"), "--data.root=packed"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_slurm_job_submitted_outside_the_repository_finds_its_launcher(
    tmp_path: Path,
) -> None:
    stand_ins = slurm.install(tmp_path / "bin")  # scontrol and srun
    done = _slurm_job(tmp_path, stand_ins)
    assert done.returncode == 0, done.stderr
    # one torchrun per node, started in the submit directory with the relative argument
    assert done.stdout.count("-m dist_face.train --config debug_cpu --data.root=packed") == 2
    assert f"bash {REPO}/launch/torchrun.sh" in done.stdout, done.stdout
    # no checkout to be found: one line that says what to set
    (stand_ins / "python").write_text("#!/bin/sh\nexit 1\n")
    (stand_ins / "python").chmod(0o755)
    lost = _slurm_job(tmp_path, stand_ins)
    assert lost.returncode == 2 and lost.stdout == ""
    assert "set DIST_FACE_REPO to the dist_face checkout" in lost.stderr, lost.stderr


def test_the_launcher_runs_from_the_parent_of_a_clone_named_dist_face(tmp_path: Path) -> None:
    """The clone's own ``data/`` folder once shadowed the package for a command started in its
    parent (``No module named 'dist_face.data.packing.image_files'``): Python put the working
    directory first on ``sys.path`` and found ``./dist_face/data`` before the editable install.

    The clone here is the repository's files under a folder named ``dist_face``, with the
    ``data/`` folder the debug recipe used to write; PYTHONPATH is unset, so the package comes
    from the environment's install, as for a user.
    """
    clone = tmp_path / "dist_face"
    clone.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in {".git", "data", ".venv"}:
            (clone / entry.name).symlink_to(entry)
    (clone / "data" / "debug_cpu" / "shards").mkdir(parents=True)
    env = {k: v for k, v in _env().items() if k != "PYTHONPATH"}
    env["DIST_FACE_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        ["bash", "dist_face/launch/torchrun.sh", "--train.max_steps=1", "--eval.targets=[]"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ModuleNotFoundError" not in done.stderr
    assert (tmp_path / "runs" / "debug_cpu" / "model.pt").is_file()  # where it was started
    assert sorted(p.name for p in (clone / "data").rglob("*")) == ["debug_cpu", "shards"]


def test_check_only_says_it_passed_and_starts_nothing(tiny_dataset: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            "bash",
            str(REPO / "launch" / "torchrun.sh"),
            f"--data.root={tiny_dataset}/shards",
            "--eval.targets=[]",
        ],
        cwd=tmp_path,
        env=_env(CHECK_ONLY="1"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == (
        "CHECK_ONLY: debug_cpu passed its checks for 2 ranks (configuration, inputs, run "
        "directory); nothing was started"
    )
    assert not (tmp_path / "runs").exists()
