"""A margin added from one file and its registration trains with the real trainer.

The throw-away margin below is CosFace under another name and another argument name, so the
run that trains it must log the very losses of a CosFace run with the same arguments: the
registry found it, ``head.margin_args`` reached its signature, and the fused head used it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]

MARGIN_FILE = '''
"""A throw-away margin: target s (cos θ_y − shift), others s cos θ_j."""

import torch

from dist_face.heads.margins.common import (
    MARGINS,
    Margin,
    MarginInput,
    check_scale,
    scaled_with_targets,
)


@MARGINS.register("throwaway")
class Throwaway(Margin):
    """CosFace under another name.

    Args:
        scale: s (16).
        shift: the target's cosine offset (0.1).
    """

    target_only = True

    def __init__(self, scale: float = 16.0, shift: float = 0.1) -> None:
        super().__init__()
        check_scale(scale)
        self.scale, self.shift = scale, shift

    def target_logit(self, zt: torch.Tensor) -> torch.Tensor:
        return (zt - self.shift) * self.scale

    def logits(self, inp: MarginInput) -> torch.Tensor:
        return scaled_with_targets(self, inp)
'''

# Imports the margin's file (its registration), then runs the trainer's entry point once per
# argument list (JSON in argv[2]); prints the exit codes.
RUNNER = textwrap.dedent(
    """
    import importlib.util, json, sys
    spec = importlib.util.spec_from_file_location("throwaway_margin", sys.argv[1])
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    from dist_face.train.entry import main
    print(json.dumps([main(argv) for argv in json.loads(sys.argv[2])]))
    """
)


def _run(tmp_path: Path, runs: list[list[str]]) -> subprocess.CompletedProcess:
    path = tmp_path / "throwaway_margin.py"
    path.write_text(MARGIN_FILE)
    return subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), json.dumps(runs)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
        | {"PYTHONPATH": str(REPO)},
    )


def _train(out: Path, name: str, *head: str) -> list[str]:
    return [
        "--config=debug_cpu",
        "--data.root=synthetic",
        "--data.num_classes=8",
        "--data.synthetic_samples=16",
        "--data.batch_size=8",
        "--data.num_workers=0",
        "--eval.targets=[]",
        "--train.max_steps=2",
        "--train.log_every=1",
        f"--output_root={out}",
        f"--name={name}",
        *head,
    ]


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics-rank0.jsonl").read_text().splitlines()
    return [r["train/loss"] for r in map(json.loads, lines) if "train/loss" in r]


def test_a_margin_from_one_file_trains_as_its_twin(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    done = _run(
        tmp_path,
        [
            _train(out, "new", "--head.margin=throwaway", "--head.margin_args.shift=0.25"),
            _train(out, "twin", "--head.margin=cosface", "--head.margin_args.margin=0.25"),
        ],
    )
    assert done.returncode == 0 and json.loads(done.stdout) == [0, 0], done.stderr[-3000:]
    saved = yaml.safe_load((out / "new" / "config.yaml").read_text())["head"]
    # debug_cpu's scale 32 is a shared argument: kept when the margin changes
    assert (saved["margin"], saved["margin_args"]) == ("throwaway", {"scale": 32.0, "shift": 0.25})
    new, twin = _losses(out / "new"), _losses(out / "twin")
    assert len(new) == 2 and all(math.isfinite(v) and v > 0 for v in new)
    assert new == twin


def test_a_wrong_argument_of_the_new_margin_is_a_one_line_error(tmp_path: Path) -> None:
    done = _run(
        tmp_path,
        [_train(tmp_path, "bad", "--head.margin=throwaway", "--head.margin_args.shfit=0.25")],
    )
    assert json.loads(done.stdout) == [2], done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "Traceback" not in done.stderr
    assert errors[0].endswith(
        "bad configuration: head.margin_args.shfit: margin 'throwaway' has no argument 'shfit' "
        "(its arguments: scale, shift)"
    )
