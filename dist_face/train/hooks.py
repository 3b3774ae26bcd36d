"""Hooks around the step: logging with cross-rank throughput, checkpoints, evaluation."""

from __future__ import annotations

import datetime
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed import ProcessGroup

from dist_face.data.loading.image_fit import DEFAULT_RESIZE_MODE
from dist_face.data.loading.labels import LabelError
from dist_face.dist import Topology, all_gather, all_gather_object, barrier, is_active
from dist_face.eval.bin_format import decode_images, distinct_images, load_bin
from dist_face.eval.verification import VerificationResult, evaluate_model
from dist_face.metrics import Sink
from dist_face.train.loop import Hook, Trainer
from dist_face.train.timing import StepTimer

logger = logging.getLogger(__name__)


class LogHook(Hook):
    """Every ``every`` steps: read the step's tensors once and report throughput across ranks.

    The only host synchronisation of the loop happens here. Per-rank samples/s are gathered
    so the line shows the global rate (sum) and the slowest and fastest rank; the data-wait
    share is the worst rank's.
    """

    def __init__(
        self,
        every: int,
        sink: Sink,
        scaler_state: Callable[[], dict[str, torch.Tensor]],
        lr: Callable[[], float],
        device: torch.device,
        extra: Callable[[], dict[str, float]] | None = None,
        timer: StepTimer | None = None,
        summed: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """Log to ``sink``; the callables and ``timer`` are read on log steps only.

        ``summed`` gives per-rank counters (e.g. corrupt records) that are logged as their
        sum over ranks; they ride on the log step's all_gather, so they cost no extra sync.
        """
        self.extra, self.timer, self.summed = extra, timer, summed
        self.every, self.sink, self.scaler_state, self.lr, self.device = (
            every,
            sink,
            scaler_state,
            lr,
            device,
        )
        self._t = self._wait = self._pause = 0.0
        self._step = 0

    def before_train(self, trainer: Trainer) -> None:
        """Start the clock."""
        if self.timer is not None:
            self.timer.read()  # drop anything recorded before this run's first step
        self._t, self._wait = time.perf_counter(), trainer.data_wait_s
        self._step, self._pause = trainer.state.step, trainer.pause_s

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        """Emit one record on log steps and on the last step."""
        state = trainer.state
        if state.step % self.every and state.step != trainer.total_steps:
            return
        now = time.perf_counter()
        elapsed = max(now - self._t - (trainer.pause_s - self._pause), 1e-9)
        steps = state.step - self._step
        rate = steps * trainer.samples_per_step / elapsed
        wait_share = (trainer.data_wait_s - self._wait) / elapsed
        scaler = self.scaler_state()
        parts = sorted(k for k in metrics if k.startswith("loss/"))  # auxiliary losses
        values = torch.stack(
            [
                metrics["loss"].float(),
                metrics["grad_norm"].float(),
                scaler["scale"].float(),
                scaler["skipped"].float(),
                *(metrics[k].float() for k in parts),
            ]
        ).tolist()
        counters = self.summed() if self.summed is not None else {}
        local = [rate, wait_share, *counters.values()]
        per_rank = all_gather(torch.tensor([local], dtype=torch.float64, device=self.device)).cpu()
        record = {
            "train/loss": values[0],
            "train/grad_norm": values[1],
            "train/loss_scale": values[2],
            "train/skipped_steps": values[3],
            "train/lr": self.lr(),
            "train/samples_per_s": float(per_rank[:, 0].sum()),
            "train/rank_samples_per_s": rate,
            "train/rank_samples_per_s_min": float(per_rank[:, 0].min()),
            "train/rank_samples_per_s_max": float(per_rank[:, 0].max()),
            "time/data_wait_share": float(per_rank[:, 1].max()),
            "time/step_s": elapsed / max(steps, 1),
            "time/data_wait_s": (trainer.data_wait_s - self._wait) / max(steps, 1),
            "progress/epoch": state.epoch,
            "progress/total_steps": trainer.total_steps,
            "progress/eta_s": elapsed / max(steps, 1) * (trainer.total_steps - state.step),
        }
        record.update({f"train/{k}": v for k, v in zip(parts, values[4:])})
        # the same keys in the same order on every rank: the recipe and the code are shared
        record.update(zip(counters, per_rank[:, 2:].sum(0).round().long().tolist()))
        if self.timer is not None:
            record.update(self.timer.read())  # the device is idle already: .tolist() waited
        if self.extra is not None:
            record.update(self.extra())
        self.sink.log(record, state.step)
        self._t, self._wait, self._step = now, trainer.data_wait_s, state.step
        self._pause = trainer.pause_s


class RefusedLabelHook(Hook):
    """Stop every rank with one line after a step skipped for a label the loader refused.

    The step skips on every rank when some rank's loader delivered a refused label (see
    :mod:`dist_face.data.loading.labels`); the flag is accumulated on the device and read on log
    steps only, where the log hook waits for the device anyway. Then the ranks exchange their
    loaders' descriptions over the control group (host objects, no device involved) and every
    rank raises the same :class:`~dist_face.data.loading.labels.LabelError`.

    Args:
        every: log cadence in steps (and the last step).
        refused: this rank's loader's description of its first refused label, or None.
        control_group: the group serving CPU objects (None: the default group).
    """

    def __init__(
        self,
        every: int,
        refused: Callable[[], str | None],
        control_group: ProcessGroup | None = None,
    ) -> None:
        self.every, self.refused, self.control_group = every, refused, control_group
        self._seen: torch.Tensor | None = None

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        """Accumulate the flag; on log steps, raise on every rank when it was set."""
        flag = metrics.get("skipped_labels")
        if flag is None:
            return
        if self._seen is None:
            self._seen = torch.zeros_like(flag)
        torch.maximum(self._seen, flag, out=self._seen)
        step = trainer.state.step
        if step % self.every and step != trainer.total_steps:
            return
        if not bool(self._seen):
            return
        told = [d for d in all_gather_object(self.refused(), self.control_group) if d]
        why = told[0] if told else "a rank's loader refused a label"
        raise LabelError(f"data: {why}; training stopped at step {step}")


class CheckpointHook(Hook):
    """Save every ``every`` steps (0 = only at the end) and after the last step."""

    def __init__(self, every: int, save: Callable[[Trainer], Path | None]) -> None:
        """``save`` writes a checkpoint collectively and returns its directory."""
        self.every, self.save = every, save
        self.last_saved = -1

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        """Save on checkpoint steps."""
        if self.every and trainer.state.step % self.every == 0:
            self._save(trainer)

    def after_train(self, trainer: Trainer) -> None:
        """Save the final state unless the last step was just saved."""
        if self.last_saved != trainer.state.step:
            self._save(trainer)

    on_stop = after_train  # a run stopped by a signal keeps its position

    def _save(self, trainer: Trainer) -> None:
        start = time.perf_counter()
        path = self.save(trainer)
        trainer.pause_s += time.perf_counter() - start
        if path is not None:
            self.last_saved = trainer.state.step
            logger.info("checkpoint step %d -> %s", trainer.state.step, path)


class EvalHook(Hook):
    """Verification on ``.bin`` pair files every ``every`` steps and after the last step.

    Rank 0 embeds and scores the pairs; the other ranks wait at a barrier (the backbone is
    replicated, so their embeddings would be identical). The barrier goes over a gloo group
    with its own timeout (``eval.timeout_s``, :func:`evaluation_group`): no device collective
    is pending while rank 0 evaluates, so an evaluation longer than ``dist.timeout_s`` does not
    kill the job. Results
    go to the sink as ``eval/<name>/<metric>``, the best accuracy per target is tracked in the
    train state, and ``eval.json`` in the run directory holds the latest and best results.
    """

    def __init__(
        self,
        targets: list[str],
        every: int,
        model: nn.Module,
        topology: Topology,
        sink: Sink,
        run_dir: Path,
        batch_size: int,
        device: torch.device,
        group: ProcessGroup | None = None,
        resize_mode: str = DEFAULT_RESIZE_MODE,
        save_best: Callable[[Path], object] | None = None,
    ) -> None:
        """Evaluate ``model`` (the unwrapped backbone) on ``targets``.

        With ``save_best`` (``eval.select_best``), an evaluation whose EER on the first target
        is the lowest so far calls it with ``run_dir/model_best.pt`` (rank 0) and records the
        step and EER in the train state (``select/step``, ``select/eer``).

        The ranks wait for rank 0 at a barrier over ``group`` (:func:`evaluation_group`; None:
        the default group). Pair images of another size than 112×112 are fitted under
        ``resize_mode`` (``data.resize_mode``: crop, pad or stretch), as training fitted its
        own (:mod:`dist_face.data.loading.image_fit`).
        """
        self.targets, self.every, self.model, self.topology = targets, every, model, topology
        self.sink, self.run_dir, self.batch_size, self.device = sink, run_dir, batch_size, device
        self.group, self.resize_mode = group, resize_mode
        self.save_best = save_best
        self._data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.last: dict[str, VerificationResult] = {}

    def before_train(self, trainer: Trainer) -> None:
        """Load and decode the pair files once, on rank 0."""
        if not self.topology.is_main:
            return
        for target in self.targets:
            images, issame = load_bin(target)
            distinct, pairs = distinct_images(images)  # each image embedded once
            decoded = decode_images(distinct, mode=self.resize_mode)
            self._data[Path(target).stem] = (decoded, issame, pairs)
            logger.info(
                "evaluation target %s: %d pairs of %d distinct images",
                target,
                len(issame),
                len(distinct),
            )

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        """Evaluate on evaluation steps."""
        if self.every and trainer.state.step % self.every == 0:
            self.evaluate(trainer)

    def after_train(self, trainer: Trainer) -> None:
        """Evaluate the final model unless that step was just evaluated."""
        if not (self.every and trainer.state.step % self.every == 0):
            self.evaluate(trainer)

    def evaluate(self, trainer: Trainer) -> None:
        """Score every target now (rank 0) and synchronise the ranks.

        A stop signal received by the evaluating rank interrupts the evaluation at the next
        batch boundary: nothing of it is logged and the run goes on to stop, with its
        checkpoint, at the next step boundaries' agreement. So the time a stop waits for
        evaluation is one batch's, not the whole evaluation's.
        """
        start = time.perf_counter()
        if self.topology.is_main and self._data:
            logger.info("evaluating step %d on %s", trainer.state.step, ", ".join(self._data))
            try:
                self._score(trainer)
            except _Interrupted as stop:
                logger.warning(
                    "evaluation of step %d interrupted by %s after %d of %d images; it is "
                    "not reported",
                    trainer.state.step,
                    signal.Signals(stop.signum).name,
                    stop.done,
                    stop.total,
                )
        barrier(self.group)
        trainer.pause_s += time.perf_counter() - start

    def _score(self, trainer: Trainer) -> None:
        record: dict[str, float] = {}
        requested = getattr(getattr(trainer, "should_stop", None), "requested_here", lambda: 0)
        total = sum(len(images) for images, _, _ in self._data.values())
        done = 0

        def batch_done(n: int) -> None:  # between batches: give way to a stop signal
            nonlocal done
            done += n
            if requested():
                raise _Interrupted(requested(), done, total)

        results = {}
        for name, (images, issame, pairs) in self._data.items():
            results[name] = evaluate_model(
                self.model,
                images,
                issame,
                self.batch_size,
                self.device,
                progress=batch_done,
                pairs=pairs,
            )
        for name, result in results.items():  # all targets or none: a report is never partial
            self.last[name] = result
            record.update(result.as_dict(prefix=f"eval/{name}/"))
            key = f"eval/{name}/accuracy"
            trainer.state.best[key] = max(trainer.state.best.get(key, 0.0), result.accuracy)
        if self.save_best is not None:
            self._select(trainer)
        self.sink.log(record, trainer.state.step)
        self._write_report(trainer, record)

    def _select(self, trainer: Trainer) -> None:
        """Keep the backbone when its EER on the first target is the lowest so far."""
        name = Path(self.targets[0]).stem
        eer = self.last[name].eer
        best = trainer.state.best
        if eer >= best.get("select/eer", float("inf")):
            logger.info(
                "%s EER %.4f at step %d; the best stays step %d (EER %.4f)",
                name,
                eer,
                trainer.state.step,
                int(best["select/step"]),
                best["select/eer"],
            )
            return
        best["select/eer"], best["select/step"] = eer, float(trainer.state.step)
        path = self.run_dir / "model_best.pt"
        self.save_best(path)
        logger.info("%s EER %.4f at step %d: the best so far -> %s", name, eer,
                    trainer.state.step, path)  # fmt: skip

    def _write_report(self, trainer: Trainer, record: dict[str, Any]) -> None:
        report = {"step": trainer.state.step, "latest": record, "best": trainer.state.best}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / "eval.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(self.run_dir / "eval.json")


class _Interrupted(Exception):
    """A stop signal arrived during evaluation (after ``done`` of ``total`` images)."""

    def __init__(self, signum: int, done: int, total: int) -> None:
        super().__init__(signum, done, total)
        self.signum, self.done, self.total = signum, done, total


def evaluation_group(timeout_s: float) -> ProcessGroup | None:
    """A gloo group over every rank whose operations wait ``timeout_s`` (None: one rank).

    The control group's timeout is the job's (``dist.timeout_s``); evaluation gets a group of
    its own so that its barrier may wait longer. Collective: every rank calls it together.
    """
    if not is_active(None):
        return None
    return dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))


class CloseSinkHook(Hook):
    """Closes the metric sink after training (flushes files, pushes to a Pushgateway)."""

    def __init__(self, sink: Sink) -> None:
        """Close ``sink`` in :meth:`after_train`; put this hook last."""
        self.sink = sink

    def after_train(self, trainer: Trainer) -> None:
        """Close the sink."""
        self.sink.close()

    on_stop = after_train
