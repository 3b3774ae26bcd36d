"""Stop a diverging run, and say what a stopped run left on disk.

A step with inf/NaN gradients is skipped on every rank (see :mod:`dist_face.train.precision`),
but a run whose every step is skipped makes no progress and used to finish with exit code 0.
:class:`DivergenceGuard` counts, on the device, consecutive skipped steps and the steps since
the last finite loss; it reads the counters on log steps only (where the log hook already waits
for the device), so the step stays free of host synchronisation. Past a threshold it raises
:class:`DivergenceError` on every rank: the loss and the skip flag are the same on all ranks, so
all of them stop at the same step without another collective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

from dist_face.checkpoint.manager import last_refused
from dist_face.train.hooks import CheckpointHook
from dist_face.train.loop import Hook, Trainer


class DivergenceError(RuntimeError):
    """Training diverged: too many skipped steps or non-finite losses in a row."""


class DivergenceGuard(Hook):
    """Raise :class:`DivergenceError` when the run stops making progress.

    Args:
        every: log cadence in steps; the counters are read on these steps and the last step.
        max_skipped: consecutive skipped steps that stop the run (0 = never).
        max_nonfinite_logs: consecutive log steps with an inf/NaN loss that stop the run
            (0 = never).
        loss_scale: returns the current loss scale (a 0-dim tensor), read on log steps.
        advice: what to lower, with the current values (``"optim.lr (now 0.1), ..."``).
    """

    def __init__(
        self,
        every: int,
        max_skipped: int,
        max_nonfinite_logs: int,
        loss_scale: Callable[[], torch.Tensor],
        advice: str,
    ) -> None:
        self.every, self.max_skipped, self.max_nonfinite_logs = (
            every,
            max_skipped,
            max_nonfinite_logs,
        )
        self.loss_scale, self.advice = loss_scale, advice
        self._counters: torch.Tensor | None = None
        self._bad_logs = 0
        self._start = 0

    def before_train(self, trainer: Trainer) -> None:
        """Note the step the run starts (or resumes) at."""
        self._start = trainer.state.step

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        """Update the device counters; check them on log steps."""
        loss, skipped = metrics["loss"].detach().float(), metrics["skipped"].float()
        if self._counters is None:
            # [skip run, longest skip run since the last check, steps since a finite loss,
            #  last finite loss, steps skipped since the start]
            self._counters = torch.tensor([0.0, 0.0, 0.0, math.nan, 0.0], device=loss.device)
        c = self._counters
        finite = torch.isfinite(loss)
        c[0] = (c[0] + 1) * skipped
        c[1] = torch.maximum(c[1], c[0])
        c[2] = (c[2] + 1) * (~finite).float()
        c[3] = torch.where(finite, loss, c[3])
        c[4] += skipped
        state = trainer.state
        if state.step % self.every and state.step != trainer.total_steps:
            return
        _, longest, since, last, skipped_all = c.tolist()
        ran = state.step - self._start
        c[1] = c[0]
        self._bad_logs = 0 if since == 0 else self._bad_logs + 1
        if self.max_skipped and longest >= self.max_skipped:
            why = (
                f"{int(longest)} consecutive steps skipped for inf/NaN gradients "
                f"(train.max_skipped_steps={self.max_skipped})"
            )
        elif self.max_nonfinite_logs and self._bad_logs >= self.max_nonfinite_logs:
            why = (
                f"the loss was inf/NaN on {self._bad_logs} consecutive log steps "
                f"(train.max_nonfinite_logs={self.max_nonfinite_logs})"
            )
        elif since and state.step == trainer.total_steps:
            # however short the run: a model whose last loss is inf/NaN is not a result
            why = f"the loss of the last step was inf/NaN for {int(since)} steps"
        elif state.step == trainer.total_steps and 2 * skipped_all > ran:
            # nor is one that most steps never updated (a run too short for max_skipped_steps)
            why = f"{int(skipped_all)} of its {ran} steps were skipped for inf/NaN values"
        else:
            return
        scale = float(self.loss_scale())
        if math.isnan(last):
            finite_part = "no finite loss since the start"
        else:
            finite_part = f"last finite loss {last:.6g} at step {state.step - int(since)}"
        raise DivergenceError(
            f"training diverged at step {state.step}: {why}; loss scale {scale:g}, "
            f"{finite_part}; lower {self.advice}"
        )


def saved_so_far(trainer: Trainer, run_dir: Path) -> str:
    """Which ``model.pt`` this run left on disk and from which step, in words.

    ``model.pt`` is written with each complete checkpoint and only then (see
    :func:`dist_face.checkpoint.save_checkpoint`), so its step is the last one saved.
    """
    model = Path(run_dir) / "model.pt"
    hooks = [h for h in trainer.hooks if isinstance(h, CheckpointHook)]
    step = hooks[0].last_saved if hooks else -1
    selected = getattr(trainer.state, "best", {}).get("select/step")
    if step >= 0 and selected is not None:
        best = int(selected)
        return (
            f"{model} is the best evaluated backbone, of step {best} (eval.select_best), as of "
            f"step {step}, the last checkpoint written"
        )
    if step >= 0:
        return f"{model} is from step {step}, the last checkpoint written"
    if model.exists():
        return f"this run wrote no checkpoint; {model} is from an earlier run"
    return f"this run wrote no checkpoint and no {model}"


def unsaved_final_state(trainer: Trainer, run_dir: Path) -> str:
    """Empty when the run's last step is in a checkpoint; else the error to end the run with."""
    hooks = [h for h in trainer.hooks if isinstance(h, CheckpointHook)]
    step = trainer.state.step
    if not hooks or hooks[0].last_saved == step:
        return ""
    if last_refused(run_dir) == (step, True):
        return (
            f"training diverged: the state of step {step}, the last step, holds inf/NaN values "
            f"and was not saved (see the error above); {saved_so_far(trainer, run_dir)}"
        )
    return (
        f"the checkpoint of step {step}, the last step, could not be written (see the error "
        f"above); {saved_so_far(trainer, run_dir)}"
    )
