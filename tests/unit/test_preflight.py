"""User-causable errors are one line and exit 2; a run never mixes with an earlier run."""

from __future__ import annotations

import logging
import re
import resource
import signal
from pathlib import Path

import pytest
import torch

from dist_face.checkpoint import list_checkpoints, load_state, save_checkpoint
from dist_face.config import HeadConfig
from dist_face.dist import Topology
from dist_face.heads import build_head
from dist_face.train.entry import main


@pytest.fixture
def run_main(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> object:
    """``main(argv)`` on one process; returns ``(exit code, ERROR lines of the run)``."""
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    # init_logging replaces the root handlers, pytest's capture among them
    monkeypatch.setattr("dist_face.train.entry.init_logging", lambda rank: None)

    def run(*argv: str) -> tuple[int, list[str]]:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            code = main(["--config", "debug_cpu", *argv])
        return code, [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]

    return run


def _base(data: Path, out: Path) -> list[str]:
    return [
        f"--data.root={data}/shards",
        "--eval.targets=[]",
        f"--output_root={out}",
        "--name=r",
        "--train.max_steps=2",
        "--train.log_every=1",
        "--data.num_workers=0",
    ]


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("--data.root={tmp}/missing", "data.root: {tmp}/missing does not exist"),
        ("--head.margin=arcfaec", "head.margin: unknown margin 'arcfaec'"),
        ("--model.name=iresnet5", "model.name: unknown backbone 'iresnet5'"),
        ("--model.mask_ratio=0.2", "model.mask_ratio: backbone tiny has no mask_ratio option"),
        ("--data.num_classes=7", "data.num_classes: 7, but the shard set"),
        ("--resume={tmp}/nowhere", "checkpoint.resume: {tmp}/nowhere does not exist"),
        (
            "--model.init_backbone={tmp}/none.pt",
            "model.init_backbone: {tmp}/none.pt does not exist",
        ),
        ("--eval.targets=[{tmp}/lfw.bin]", "eval.targets: {tmp}/lfw.bin does not exist"),
        ("--data.batch_size=4000", "data.batch_size: 4000 is larger than"),
    ],
)
def test_configuration_errors_are_one_line_and_exit_2(
    run_main, small_dataset: Path, tmp_path: Path, override: str, key: str
) -> None:
    out = tmp_path / "runs"
    code, errors = run_main(*_base(small_dataset, out), override.format(tmp=tmp_path))
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith("bad configuration: "), errors
    assert key.format(tmp=tmp_path) in errors[0], errors
    assert not out.exists()  # refused before anything was written


def test_resuming_a_checkpoint_of_another_class_count_is_refused(
    run_main, small_dataset: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "other" / "checkpoints" / "step_00000001"
    _write_checkpoint(tmp_path / "other", 1, num_classes=7)
    code, errors = run_main(*_base(small_dataset, tmp_path / "runs"), f"--resume={ckpt}")
    assert code == 2
    assert errors == [
        f"bad configuration: checkpoint.resume: {ckpt} holds 7 class centers, the training "
        f"set {small_dataset}/shards has 60 classes"
    ]


def test_a_new_run_in_an_old_run_directory_is_refused_unless_resumed_or_overwritten(
    run_main, small_dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    assert run_main(*_base(small_dataset, out), "--checkpoint.every=1")[0] == 0
    run_dir = out / "r"
    first = sorted(p.name for p in run_dir.iterdir())
    before = (run_dir / "metrics-rank0.jsonl").read_text()
    model = (run_dir / "model.pt").read_bytes()

    code, errors = run_main(*_base(small_dataset, out))
    assert code == 2 and len(errors) == 1
    assert f"name: the run directory {run_dir} already holds another run" in errors[0]
    assert "--resume=auto" in errors[0] and "--overwrite" in errors[0]
    # nothing of the earlier run was touched
    assert sorted(p.name for p in run_dir.iterdir()) == first
    assert (run_dir / "metrics-rank0.jsonl").read_text() == before
    assert (run_dir / "model.pt").read_bytes() == model

    assert run_main(*_base(small_dataset, out), "--overwrite")[0] == 0
    lines = (run_dir / "metrics-rank0.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the old run's lines are gone, not appended to
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000002"]

    # resuming the same directory is allowed (and has nothing left to do)
    assert run_main(*_base(small_dataset, out), "--resume=auto")[0] == 0


def _write_checkpoint(
    run_dir: Path, step: int, num_classes: int = 10, keep: int = 3
) -> Path | None:
    head = build_head(HeadConfig(), 8, num_classes)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    return save_checkpoint(
        run_dir,
        step,
        Topology(),
        replicated={"step": step, "backbone": {"w": torch.ones(2)}},
        head=head,
        head_optimizer=opt,
        class_range=(0, num_classes),
        num_classes=num_classes,
        keep=3,
    )


def test_rotation_keeps_the_checkpoint_just_written(tmp_path: Path) -> None:
    for step in (10, 11, 12):  # an abandoned continuation with higher step numbers
        _write_checkpoint(tmp_path, step)
    assert _write_checkpoint(tmp_path, 4) is not None
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000004"]
    for step in (5, 6, 7):
        _write_checkpoint(tmp_path, step)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000005", "step_00000006", "step_00000007"]


def test_a_diverging_run_exits_1_with_one_line(
    run_main, small_dataset: Path, tmp_path: Path
) -> None:
    code, errors = run_main(
        *_base(small_dataset, tmp_path / "runs"),
        "--head.margin_args.scale=1e39",
        "--train.max_skipped_steps=2",
    )
    assert code == 1
    assert errors == [
        "training diverged at step 2: 2 consecutive steps skipped for inf/NaN gradients "
        "(train.max_skipped_steps=2); loss scale 1, no finite loss since the start; lower "
        "optim.lr (now 0.1) or head.margin_args.scale (now 1e+39); this run wrote no checkpoint "
        "and no "
        f"{tmp_path}/runs/r/model.pt"
    ]
    assert not (tmp_path / "runs" / "r" / "model.pt").exists()  # no end-of-run save


def test_a_huge_learning_rate_in_a_short_run_exits_1_saying_diverged_and_which_model(
    run_main, small_dataset: Path, tmp_path: Path
) -> None:
    # lr 1e6 within 14 steps: most steps are skipped for inf/NaN values (gradients, BatchNorm
    # statistics), far fewer than max_skipped_steps in a row; the run used to say "done"
    code, errors = run_main(
        *_base(small_dataset, tmp_path / "runs"),
        "--optim.lr=1e6",
        "--train.max_steps=14",
        "--train.log_every=7",
        "--checkpoint.every=2",
    )
    assert code == 1
    match = re.fullmatch(
        r"training diverged at step 14: .*; (\S+) is from step (\d+), the last checkpoint written",
        errors[-1],
    )
    assert match, errors
    model, step = Path(match[1]), int(match[2])
    assert model == tmp_path / "runs" / "r" / "model.pt"
    saved = load_state(tmp_path / "runs" / "r" / "checkpoints" / f"step_{step:08d}")["backbone"]
    weights = torch.load(model, weights_only=True)["state_dict"]
    assert all(torch.equal(weights[k], v) for k, v in saved.items())


def test_a_final_checkpoint_that_cannot_be_written_exits_1(
    run_main, small_dataset: Path, tmp_path: Path
) -> None:
    # a real EFBIG on every file over 64 kB: the checkpoint's state.pt cannot be written
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, limits[1]))
    try:
        code, errors = run_main(*_base(small_dataset, tmp_path / "runs"))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert code == 1
    assert errors[-1] == (
        "the checkpoint of step 2, the last step, could not be written (see the error above); "
        f"this run wrote no checkpoint and no {tmp_path}/runs/r/model.pt"
    )


def test_start_up_opens_the_dataset_once_and_passes_it_on(
    color_shards: Path, tmp_path: Path
) -> None:
    """The checks' data source carries the opened dataset; the digest reads that one."""
    from dist_face.config import load_config
    from dist_face.dist import Topology
    from dist_face.train.agreement import dataset_digest
    from dist_face.train.preflight import check_run

    cfg = load_config(
        "debug_cpu",
        [f"--data.root={color_shards}", "--eval.targets=[]", f"--output_root={tmp_path}"],
    )
    data = check_run(cfg, Topology(), torch.device("cpu"))
    assert data.dataset is not None and len(data.dataset) == data.num_samples == 60
    assert dataset_digest(str(color_shards), data.dataset) == dataset_digest(str(color_shards))
    assert dataset_digest(str(color_shards), data.dataset) != dataset_digest("synthetic")
