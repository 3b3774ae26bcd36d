"""Real signals during a stop: the save goes on, SIGKILL mid-save keeps the previous checkpoint,
and loader workers forked by the rank survive the signal torchrun sends to its process group.
Also what a failed save reports (a failed model export; inf/NaN values), which decides the exit
code of a run whose last save failed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from dist_face.checkpoint import latest_checkpoint, load_state, save_checkpoint
from dist_face.checkpoint.manager import last_refused
from dist_face.config import HeadConfig
from dist_face.dist import Topology
from dist_face.heads import build_head
from dist_face.train.guard import unsaved_final_state
from dist_face.train.hooks import CheckpointHook
from dist_face.train.signals import StopAgreement, StopSignals

REPO = Path(__file__).resolve().parents[2]


def _save(run_dir: Path, step: int, export: Any = None, **extra: Any) -> Path | None:
    head = build_head(HeadConfig(), 8, 10)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    return save_checkpoint(
        run_dir,
        step,
        Topology(),
        replicated={"step": step, "backbone": {"w": torch.full((2,), float(step))}, **extra},
        head=head,
        head_optimizer=opt,
        class_range=(0, 10),
        num_classes=10,
        keep=3,
        export=export,
    )


class _KillWhilePickled:
    """Sends this process SIGKILL when ``torch.save`` reaches it: a kill in the middle of a file."""

    def __reduce__(self) -> tuple:
        os.kill(os.getpid(), signal.SIGKILL)
        return (int, ())


def kill_mid_save(run_dir: str) -> None:
    """Step 1 complete, then SIGKILL while step 2's state.pt is being written."""
    _save(Path(run_dir), 1)
    _save(Path(run_dir), 2, bomb=_KillWhilePickled())


def test_a_second_signal_during_the_save_is_ignored_and_the_save_completes(
    tmp_path: Path,
) -> None:
    signals = StopSignals()
    assert signals.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert StopAgreement(signals, None)()  # one process: stop at this boundary
        # the second signal arrives while the checkpoint is being written
        saved = _save(tmp_path, 3, export=lambda: os.kill(os.getpid(), signal.SIGUSR1))
    finally:
        signals.uninstall()
    assert saved == tmp_path / "checkpoints" / "step_00000003"
    assert (signals.received, signals.ignored) == (signal.SIGTERM, 1)
    assert load_state(saved)["step"] == 3


def test_sigkill_during_the_save_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    killed = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from {__name__} import kill_mid_save; kill_mid_save({str(tmp_path)!r})",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    assert (tmp_path / "checkpoints" / "step_00000002.tmp").is_dir()  # killed mid-save
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000001"
    assert torch.equal(load_state(latest_checkpoint(tmp_path))["backbone"]["w"], torch.ones(2))
    assert _save(tmp_path, 2) is not None  # the next save clears the remains
    assert not (tmp_path / "checkpoints" / "step_00000002.tmp").exists()


class _Pids(torch.utils.data.IterableDataset):
    """Yields its worker's pid, slowly, forever."""

    def __iter__(self):
        while True:
            time.sleep(0.01)
            yield torch.tensor(os.getpid())


def test_loader_workers_of_a_rank_survive_its_stop_signal() -> None:
    signals = StopSignals()
    assert signals.install()
    try:
        # a torch DataLoader worker installs its own SIGTERM handler, which ends the worker
        loader = torch.utils.data.DataLoader(
            _Pids(), batch_size=None, num_workers=1, multiprocessing_context="fork"
        )
        batches = iter(loader)
        worker = int(next(batches))
        os.kill(worker, signal.SIGTERM)  # torchrun signals the rank's whole process group
        time.sleep(0.5)
        assert [int(next(batches)) for _ in range(3)] == [worker] * 3  # still delivering
        assert signals.received == 0  # the rank itself got nothing
        del batches
    finally:
        signals.uninstall()


def test_a_failed_model_export_fails_the_save_but_keeps_the_checkpoint(tmp_path: Path) -> None:
    def export() -> None:
        raise OSError(28, "No space left on device")

    assert _save(tmp_path, 5, export=export) is None  # the run must not count step 5 as saved
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000005"  # usable
    assert last_refused(tmp_path) == (5, False)
    assert _save(tmp_path, 6, nan=torch.tensor(float("nan"))) is None
    assert last_refused(tmp_path) == (6, True)  # refused for inf/NaN: the run diverged
    # what a run whose last step is 6 ends with (model.pt: written with the step-4 checkpoint)
    hook = CheckpointHook(2, save=lambda trainer: None)
    hook.last_saved = 4
    trainer = SimpleNamespace(hooks=[hook], state=SimpleNamespace(step=6))
    assert unsaved_final_state(trainer, tmp_path) == (  # type: ignore[arg-type]
        "training diverged: the state of step 6, the last step, holds inf/NaN values and was "
        f"not saved (see the error above); {tmp_path}/model.pt is from step 4, the last "
        "checkpoint written"
    )
