"""The command-line tools as a user runs them: the real console scripts and launchers."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENTRY_POINTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
SCRIPTS = sorted(ENTRY_POINTS)
SHELL = sorted(
    str(p.relative_to(REPO))
    for pattern in ("launch/*.sh", "launch/*.sbatch", "tests/*.sh", "tools/*.sh")
    for p in REPO.glob(pattern)
)
# tools/*.py besides the thin wrappers of the console scripts (those run the same main())
TOOLS = sorted(
    p.name for p in (REPO / "tools").glob("*.py") if "Thin wrapper" not in p.read_text()[:200]
)


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    """An environment whose side effects would land in ``tmp`` (and be seen there)."""
    return {
        **os.environ,
        "HOME": str(tmp / "home"),
        "XDG_CACHE_HOME": str(tmp / "cache"),
        "DIST_FACE_VENV": str(tmp / "venv"),  # setup_env.sh would create it
        "PYTHONPATH": str(REPO),
        **extra,
    }


def _command(kind: str, name: str) -> list[str]:
    if kind == "script":
        if (BIN / name).exists():
            return [str(BIN / name)]
        # declared after this environment was installed: what pip's wrapper script runs
        module, func = ENTRY_POINTS[name].split(":")
        return [
            sys.executable,
            "-c",
            f"import sys; from {module} import {func}; sys.exit({func}())",
        ]
    if kind == "tool":
        return [sys.executable, str(REPO / "tools" / name)]
    return ["bash", str(REPO / name)]


def _repo_state() -> set[str]:
    """Untracked and ignored files of the repository, besides bytecode and pytest's cache."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout
    return {
        line
        for line in out.splitlines()
        if line[:2] in ("??", "!!") and "__pycache__" not in line and ".pytest_cache" not in line
    }


# run as real subprocesses (the console-script wrapper, a tool file, every shell script); the
# other scripts' --help runs in one interpreter, which imports torch once instead of 30 times
REAL = {("script", "dist-face-train"), ("script", "dist-face-pack"), ("tool", "bench_train.py")}


def test_help_on_every_script_prints_usage_and_does_nothing_else(tmp_path: Path) -> None:
    cases = [("script", s) for s in SCRIPTS] + [("tool", t) for t in TOOLS]
    shared = [c for c in cases if c not in REAL]
    real = [c for c in cases if c in REAL] + [("shell", s) for s in SHELL]
    work = tmp_path / "cwd"
    work.mkdir()
    before = _repo_state()

    def run(case: tuple[str, str]) -> list[tuple[tuple[str, str], int, str, str]]:
        if case == ("shared", ""):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tests.helpers.help_in_one_process",
                    *(f"{kind}:{name}" for kind, name in shared),
                ],
                cwd=work,
                env=_env(tmp_path),
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stderr[-2000:]
            return [
                (tuple(r["case"].split(":", 1)), r["code"], r["stdout"], r["stderr"])
                for r in json.loads(done.stdout)
            ]
        done = subprocess.run(
            [*_command(*case), "--help"],
            cwd=work,
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        return [(case, done.returncode, done.stdout, done.stderr)]

    with ThreadPoolExecutor(4) as pool:
        results = [r for rs in pool.map(run, [("shared", ""), *real]) for r in rs]
    assert sorted(case for case, *_ in results) == sorted([*shared, *real])
    for (kind, name), code, stdout, stderr in results:
        assert code == 0, (name, stderr[-2000:])
        expected = "usage:" if kind != "shell" else name  # a launcher's usage names its path
        assert expected in stdout, (name, stdout[:500])
    assert not any(work.iterdir())  # nothing written where it ran
    assert not (tmp_path / "venv").exists()  # no environment built
    assert _repo_state() == before  # nothing written in the repository (data/, runs/, .venv)


def test_quickstart_keeps_an_earlier_run_unless_told_to_replace_it(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "quickstart"
    (run / "checkpoints").mkdir(parents=True)
    (run / "model.pt").write_bytes(b"earlier")
    env = _env(tmp_path, QUICKSTART_RUN=str(run))

    def quickstart(*args: str) -> str:
        done = subprocess.run(
            ["bash", str(REPO / "launch/quickstart.sh"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = quickstart("--dry-run")
    assert f"{run} holds an earlier run: kept; this run writes {run}-2" in out
    assert f"into {run}-2," in out
    (tmp_path / "runs" / "quickstart-2").mkdir()
    assert f"into {run}-3," in quickstart("--dry-run")
    assert f"into {run}," in quickstart("--dry-run", "--replace")
    assert (run / "model.pt").read_bytes() == b"earlier"  # a dry run deletes nothing
    bad = subprocess.run(
        ["bash", str(REPO / "launch/quickstart.sh"), "--bogus"], env=env, capture_output=True
    )
    assert bad.returncode == 2 and b"unknown argument --bogus" in bad.stderr


def test_print_config_prints_the_resolved_yaml_and_exits(tmp_path: Path) -> None:
    done = subprocess.run(
        [BIN / "dist-face-train", "--config", "debug_cpu", "--data.batch_size=7", "--print-config"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    cfg = yaml.safe_load(done.stdout)
    assert cfg["name"] == "debug_cpu" and cfg["data"]["batch_size"] == 7
    assert cfg["train"]["max_steps"] == 0
    # resolved: the margin's defaults and the head's update, not the unset fields
    assert (cfg["head"]["margin"], cfg["head"]["margin_args"]["margin"], cfg["head"]["update"]) == (
        "arcface",
        0.5,
        "sparse",
    )
    assert not any(p.name != "home" for p in tmp_path.iterdir() if p.name != "cache")
    bad = subprocess.run(
        [
            BIN / "dist-face-train",
            "--config",
            "debug_cpu",
            "--head.margin_args.scale=-1",
            "--print-config",
        ],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        bad.returncode == 2
        and "head.margin_args.scale" in bad.stderr
        and "Traceback" not in bad.stderr
    )


def test_help_config_lists_fields_with_types_defaults_and_docs(tmp_path: Path) -> None:
    def help_config(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [BIN / "dist-face-train", "--help-config", *args],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )

    train = help_config("train")
    assert train.returncode == 0, train.stderr
    assert "train.max_steps (int) = 0\n    Stop after this many optimizer steps" in train.stdout
    assert "data." not in train.stdout
    everything = help_config().stdout
    assert "data.root (str) = " in everything and "model.drop_path (float | None)" in everything
    assert "eval.targets (list[str]) = []" in everything and "name (str) = 'run'" in everything
    recipe = help_config("data", "--config", "debug_cpu").stdout
    assert "data.batch_size (int) = 128   [this config: 32]" in recipe
    unknown = help_config("nope")
    assert unknown.returncode == 2 and "sections: run" in unknown.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["dist-face-inspect", "{shards}"],
        ["dist-face-model-info", "tiny"],
        ["dist-face-train", "--help-config"],
        ["dist-face-verify", "{shards}", "--no-decode"],
    ],
    ids=lambda a: a[0],
)
def test_a_closed_pipe_ends_quietly(args: list[str], color_shards: Path, tmp_path: Path) -> None:
    cmd = [str(BIN / args[0]), *(a.format(shards=color_shards) for a in args[1:])]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(tmp_path), text=True
    )
    proc.stdout.close()  # the reader is gone before the tool writes anything (| head -0)
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def _on_terminal(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd`` with stdout and stderr on an 80-column pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(cmd, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def backbone_and_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny untrained backbone and a 40-pair .bin of random JPEGs."""
    import numpy as np

    import dist_face.models as M
    from dist_face.eval.bin_format import save_bin
    from tests.helpers.images import random_jpeg

    root = tmp_path_factory.mktemp("evaluate")
    model = M.create("tiny", embedding_size=64)
    M.save_backbone(model, root / "model.pt", "tiny", embedding_size=64)
    rng = np.random.default_rng(0)
    save_bin(root / "pairs.bin", [random_jpeg(rng, 112) for _ in range(80)], [True, False] * 20)
    return {"backbone": str(root / "model.pt"), "bin": str(root / "pairs.bin")}


@pytest.mark.parametrize(
    ("args", "bar"),
    [
        (["dist-face-model-info", "tiny"], "model-info: 100%"),
        (["dist-face-verify", "{shards}"], "verify: 100%"),
        (["dist-face-evaluate", "--backbone={backbone}", "--bin={bin}"], "evaluate: 100%"),
    ],
    ids=lambda a: a[0] if isinstance(a, list) else "",
)
def test_progress_on_a_terminal_only_and_not_with_quiet(
    args: list[str], bar: str, color_shards: Path, backbone_and_pairs, tmp_path: Path
) -> None:
    names = {"shards": color_shards, **backbone_and_pairs}
    cmd = [str(BIN / args[0]), *(a.format(**names) for a in args[1:])]
    env = _env(tmp_path)
    drawn = re.compile(rf"{bar.split(':')[0]}: +\d+%\|")  # a tqdm bar, not a logger name
    code, shown = _on_terminal(cmd, env)
    assert code == 0 and bar in shown, shown
    code, quiet = _on_terminal([*cmd, "--quiet"], env)
    assert code == 0 and not drawn.search(quiet), quiet
    piped = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert piped.returncode == 0 and not drawn.search(piped.stderr), piped.stderr


def test_single_process_tools_log_without_rank_prefixes(tmp_path: Path) -> None:
    from tests.helpers.images import make_image_folder

    make_image_folder(tmp_path / "img", classes=2, per_class=2)
    (tmp_path / "img" / "empty").mkdir()  # makes the packer log a warning
    done = subprocess.run(
        [BIN / "dist-face-pack", tmp_path / "img", tmp_path / "out"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "WARNING" in done.stderr, done.stderr
    assert "[rank" not in done.stderr


def test_a_lone_trainer_prints_no_empty_best(tmp_path: Path) -> None:
    """A rank without evaluation results (here: no eval targets) logs no ``best {}``."""
    done = subprocess.run(
        [
            BIN / "dist-face-train",
            "--config=debug_cpu",
            "--data.root=synthetic",
            "--data.num_classes=8",
            "--data.synthetic_samples=64",
            "--eval.targets=[]",
            f"--output_root={tmp_path}",
            "--name=lone",
        ],
        env={k: v for k, v in _env(tmp_path).items() if k not in ("RANK", "WORLD_SIZE")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "done at step 2" in done.stderr
    assert "best {}" not in done.stderr
