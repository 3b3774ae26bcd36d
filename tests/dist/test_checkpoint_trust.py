"""Damaged checkpoints on 2 gloo ranks, through the trainer's entry point: real flipped bytes,
real truncations and emptied files of each file kind (a head shard, a rank file, the state,
the manifest itself).

``resume=auto`` passes over the damaged newest checkpoint, says so in one line naming the file
and the step it resumes from, and ends bitwise equal to the uninterrupted run. An explicit
``checkpoint.resume`` that does not verify exits 2 with one line on every rank, and no
traceback. After the resume, only the evaluating rank reports a best result. The full cross
of file kinds and damages carries the ``matrix`` marker.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from dist_face.checkpoint import latest_checkpoint, list_checkpoints, verify_checkpoint
from tests.helpers.damage import DAMAGES, damage
from tests.helpers.distributed import run_distributed

STEPS, EVERY = 6, 2
FILES = {
    "head": "head-00001-of-00002.pt",
    "rank": "rank-00001.pt",
    "state": "state.pt",
    "manifest": "manifest.json",
}


def _args(data: str, out: str, name: str) -> list[str]:
    return [
        "--config",
        "debug_cpu",
        f"--data.root={data}/shards",
        f"--eval.targets=[{data}/val.bin]",  # on rank 0: checkpoints hold a best result
        f"--eval.every={EVERY}",
        f"--output_root={out}",
        f"--name={name}",
        "--data.num_workers=0",
        "--data.hflip=true",
        f"--train.max_steps={STEPS}",
        "--train.log_every=2",
        f"--checkpoint.every={EVERY}",
        "--checkpoint.keep=10",
    ]


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.getMessage()))


def _main(rank: int, world: int, argv: list[str]) -> dict:
    """``dist_face.train``'s ``main`` on this rank; its exit code and log lines."""
    from dist_face.train import entry

    # the harness owns the process group and the logging; main would end both
    entry.destroy_distributed = lambda: None
    entry.init_logging = lambda rank: None
    lines = _Lines()
    logging.getLogger().addHandler(lines)
    logging.getLogger().setLevel(logging.INFO)
    code = entry.main(argv)
    return {"code": code, "lines": lines.lines}


def _final(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the last checkpoint: backbone, its optimizer, every head file's rows."""
    ckpt = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    verify_checkpoint(ckpt)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    out = {f"backbone/{k}": v for k, v in state["backbone"].items()}
    for i, s in state["optim_backbone"]["state"].items():
        out.update({f"optim/{i}/{k}": v for k, v in s.items() if torch.is_tensor(v)})
    for head in sorted(ckpt.glob("head-*.pt")):
        rows = torch.load(head, weights_only=True)["rows"]
        out.update({f"{head.name}/{k}": v for k, v in rows.items()})
    return out


@pytest.fixture(scope="module")
def reference(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trust")
    # resume=auto on a fresh directory: a fresh start (the harness's ranks share a process
    # group before the entry point runs, so a rank could see another's files as an old run)
    args = [*_args(str(small_dataset), str(out), "ref"), "--resume=auto"]
    results = run_distributed(_main, 2, args, timeout=300)
    assert [r["code"] for r in results] == [0, 0]
    return out / "ref"


def _damaged_run(reference: Path, tmp_path: Path, kind: str, how: str) -> tuple[Path, Path]:
    """A copy of the reference run stopped after step ``STEPS - EVERY``, its newest damaged."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:08d}")
    bad = run_dir / "checkpoints" / f"step_{STEPS - EVERY:08d}"
    damage(bad / FILES[kind], how)
    return run_dir, bad


def _auto(small: Path, reference: Path, tmp_path: Path, kind: str, how: str) -> None:
    run_dir, bad = _damaged_run(reference, tmp_path, kind, how)
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / f"step_{STEPS - 2 * EVERY:08d}"
    args = [*_args(str(small), str(tmp_path), "run"), "--resume=auto"]
    results = run_distributed(_main, 2, args, timeout=300)
    assert [r["code"] for r in results] == [0, 0], results
    said = [m for _, m in results[0]["lines"] if "passed over" in m]
    assert len(said) == 1, results[0]["lines"]
    assert FILES[kind] in said[0] and bad.name in said[0], said
    assert f"resuming from step_{STEPS - 2 * EVERY:08d}" in said[0], said
    resumed = [m for _, m in results[1]["lines"] if m.startswith("resumed from")]
    assert resumed and f"step_{STEPS - 2 * EVERY:08d}" in resumed[0], resumed
    got, want = _final(run_dir), _final(reference)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key
    # only the evaluating rank reports a best result, also after a resume
    done = [[m for _, m in r["lines"] if m.startswith("done at step")] for r in results]
    assert done[1] == [f"done at step {STEPS}"], done
    assert len(done[0]) == 1 and "best {'eval/val/accuracy'" in done[0][0], done
    for ckpt in list_checkpoints(run_dir):  # the damaged one was rewritten by the resumed run
        verify_checkpoint(ckpt)


def _explicit(small: Path, reference: Path, tmp_path: Path, kind: str, how: str) -> None:
    run_dir, bad = _damaged_run(reference, tmp_path, kind, how)
    args = [*_args(str(small), str(tmp_path), "run"), f"--resume={bad}"]
    results = run_distributed(_main, 2, args, timeout=300)
    for r in results:
        assert r["code"] == 2, r
        errors = [m for level, m in r["lines"] if level >= logging.ERROR]
        assert len(errors) == 1 and "\n" not in errors[0], errors
        assert errors[0].startswith("bad configuration: checkpoint.resume: "), errors
        assert FILES[kind] in errors[0] and "does not verify" in errors[0], errors
    assert list_checkpoints(run_dir)[-1] == bad  # nothing was written


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("kind", "how"), [("head", "flip"), ("state", "truncate"), ("manifest", "flip")]
)
def test_auto_passes_over_a_damaged_checkpoint_and_ends_bitwise_equal(
    small_dataset: Path, reference: Path, tmp_path: Path, kind: str, how: str
) -> None:
    _auto(small_dataset, reference, tmp_path, kind, how)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("kind", "how"), [("head", "truncate"), ("rank", "flip"), ("state", "empty")]
)
def test_an_explicit_damaged_checkpoint_exits_2_with_one_line(
    small_dataset: Path, reference: Path, tmp_path: Path, kind: str, how: str
) -> None:
    _explicit(small_dataset, reference, tmp_path, kind, how)


@pytest.mark.matrix
@pytest.mark.timeout(600)
@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("kind", list(FILES))
@pytest.mark.parametrize("mode", ["auto", "explicit"])
def test_every_damage_of_every_file_kind(
    small_dataset: Path, reference: Path, tmp_path: Path, mode: str, kind: str, how: str
) -> None:
    run = _auto if mode == "auto" else _explicit
    run(small_dataset, reference, tmp_path, kind, how)
