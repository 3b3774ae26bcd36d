"""Every command block of the README and the docs pages is accounted for, and the cheap ones run.

Each ```bash block of README.md and of every ``docs/*.md`` page is looked up in :data:`BLOCKS`
by its first command: ``run`` blocks are run, in reading order (the README, then the pages in
``docs/`` sorted by name), in a fresh copy of the repository (its tracked and new files, no
``data/``, no ``runs/``); ``config`` lines are trainer commands whose config is checked with
``--print-config`` (training them takes minutes); every other block names why it is not run
here and where it is covered. A new block that is not in the table fails the test, so each
one gets a decision.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

RUN, CONFIG = "run", "config"
BLOCKS = {
    "bash launch/quickstart.sh": "the whole quickstart (9 min) and suite (19 min): run by hand",
    "python -m dist_face.train --config debug_cpu --train.max_steps=2": RUN,
    "python -m dist_face.train --config debug_cpu --head.margin_args.scale=32": CONFIG,
    "torchrun --standalone --nproc_per_node=8": "8 GPUs and MS1MV3",  # + a debug_cpu line: config
    "CONFIG=ms1mv3_r100 ZERO_STAGE=1": "DeepSpeed over a hostfile of GPU nodes",
    "# node 0 and node 1": "a GPU cluster",
    "python -m dist_face.train --config debug_cpu '--aux.losses": CONFIG,
    "python tools/bench_pair_losses.py": "a benchmark (minutes)",
    "python tools/make_dataset.py demo": RUN,
    "python tools/pack.py images/ shards/": RUN,
    "python3.11 -m venv /tmp/mxnet-venv": "installs MXNet from PyPI; test_mxnet_oracle.py",
    "dist-face-train --config ms1mv3_r50": "the MS1MV3 release (tests/unit/test_rec_index.py)",
    "cd ~/work": "walked by tests/dist/test_first_hour.py",
    "cd ~/my_photos": "walked as written by tests/dist/test_photos_walkthrough.py",
    "CONFIG=debug_cpu bash ~/dist_face/launch/torchrun.sh": "walked by test_first_hour.py",
    "python tools/model_info.py": "builds every backbone (27 s); tests/unit/test_model_info.py",
    "mkdir -p /tmp/mrun": "needs a Prometheus server binary",
    "dist-face-report --run runs/quickstart": "needs trained runs; test_run_report.py",
}
LEFT_OUT = {"faces_emore/train.rec": "an InsightFace release you download"}


def doc_pages() -> list[Path]:
    """README.md, then every page of the documentation site, in reading order."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_blocks() -> list[tuple[str, str]]:
    """``("file:line", text)`` of every ```bash block of the README and the docs pages."""
    blocks = []
    for page in doc_pages():
        lines, start = page.read_text().splitlines(), None
        for number, line in enumerate(lines, 1):
            if start is None and line.strip() == "```bash":
                start = number
            elif start is not None and line.strip() == "```":
                where = f"{page.relative_to(REPO)}:{start}"
                blocks.append((where, "\n".join(lines[start : number - 1])))
                start = None
    return blocks


def test_the_pages_hold_the_commands_the_suite_expects() -> None:
    """The table above is not vacuous: the pages hold blocks of every kind, the set-up first."""
    blocks = readme_blocks()
    assert len(doc_pages()) > 5, "the docs pages are missing"
    assert blocks[0][0].startswith("README.md:"), blocks[:1]
    kinds = {_kind(text) for _, text in blocks}
    assert {RUN, CONFIG} <= kinds, kinds
    assert any(where.startswith("docs/") for where, _ in blocks)


def _kind(text: str) -> str | None:
    first = text.strip().splitlines()[0]
    return next((kind for prefix, kind in BLOCKS.items() if first.startswith(prefix)), None)


def test_every_readme_block_is_run_or_says_why_not() -> None:
    unknown = [(line, text.splitlines()[0]) for line, text in readme_blocks() if not _kind(text)]
    assert not unknown, f"README/docs blocks without a decision in BLOCKS: {unknown}"


def _fresh_copy(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_the_cheap_readme_commands_run_as_written_on_a_fresh_copy(tmp_path: Path) -> None:
    clone = _fresh_copy(tmp_path / "clone")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONPATH": str(clone),  # the copy's package, as an installed clone would import
        "DIST_FACE_CONFIGS": str(clone / "configs"),
        "DIST_FACE_CACHE": str(tmp_path / "cache"),
    }
    for line, text in readme_blocks():
        if _kind(text) != RUN:
            continue
        script = "\n".join(
            row for row in text.splitlines() if not any(token in row for token in LEFT_OUT)
        )
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (line, script, done.stdout[-2000:], done.stderr[-3000:])
    assert (tmp_path / "cache" / "debug_cpu" / "val.bin").is_file()  # made by the recipe itself
    assert not (clone / "data").exists()  # in the cache, not inside the checkout
    assert (clone / "runs" / "debug_cpu" / "model.pt").is_file()
    assert (clone / "lfw.bin").is_file() and (clone / "images_again").is_dir()


def _config_lines() -> list[str]:
    out = []
    for _, text in readme_blocks():
        joined = re.sub(r"\\\n\s*", " ", text)
        out += [
            row.split("#")[0].strip()
            for row in joined.splitlines()
            if "--config debug_cpu" in row and (_kind(text) == CONFIG or "dist-face-train" in row)
        ]
    return out


@pytest.mark.parametrize("command", _config_lines())
def test_the_readme_training_commands_have_valid_configs(command: str, capsys) -> None:
    from dist_face.train.entry import main

    argv = shlex.split(command)
    argv = argv[argv.index("--config") :]
    assert main([*argv, "--print-config"]) == 0, capsys.readouterr().err
