"""One optimizer step: forward, loss, backward, the skip decision, update. No I/O.

The step drives an :class:`~dist_face.train.engine.Engine` (the backbone under DDP or
DeepSpeed) and the class-center head the same way whatever the engine. It returns device
tensors and never reads them back, so the host runs ahead of the device; hooks read values only
on logging steps.

The skip decision is made here and only here (:meth:`TrainStep.decide_skip`): a step is skipped
on every rank when any rank has inf/NaN gradients, BatchNorm running statistics that became
inf/NaN in this step's forward, or a label the data loader refused (delivered as ``-1``, see
:data:`dist_face.data.loading.loader.REFUSED_LABEL`). The reasons are reduced together in one
collective and stay on the device; the resulting ``skip`` flag is handed to the engine, to
every head optimizer and to the snapshots of what the forward moved.

Nothing is updated before that decision. The head's backward hands the kept rows' gradients to
its optimizer's :class:`~dist_face.heads.sharded.row_grads.RowGradSink` (sparse update) or leaves a
dense ``.grad`` (dense update); :meth:`TrainStep.decide_skip` unscales and checks them with the
backbone's, and :meth:`TrainStep.update` applies them, or nothing. State the forward moves
outside any optimizer (BatchNorm statistics, the head's per-step buffers, the sampling and
draw streams) is put back when the step is skipped (:mod:`dist_face.train.snapshot`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.distributed import ReduceOp

from dist_face.dist import all_reduce, comm
from dist_face.heads.sharded.row_optim import RowSparseOptimizer
from dist_face.heads.sharded.sampling import host_work
from dist_face.train.engine import Engine, optimizer_step
from dist_face.train.precision import LossScaler
from dist_face.train.snapshot import BufferSnapshot, HostRewind
from dist_face.train.timing import StepTimer

__all__ = ["Batch", "TrainStep", "optimizer_step"]

Batch = tuple[torch.Tensor, torch.Tensor]

SKIP_REASONS = ("gradients", "batchnorm", "labels")
"""Why a step may be skipped, in the order of the step's flag vector."""


def screen_refused(labels: torch.Tensor, flag: torch.Tensor) -> torch.Tensor:
    """Note a refused (negative) label in ``flag``; the labels the loss gets.

    Args:
        labels: ``[B]`` int64 labels as the loader delivers them: on the host (pinned for
            CUDA), or on the device.
        flag: ``[1]`` float skip flag on the device, raised to 1 when a label is negative.

    Returns:
        ``labels`` itself (host labels stay where they are, pinned) when every label is
        valid; otherwise a copy with the refused labels replaced by 0. Host labels are read
        on the host (free); device labels are checked on the device (no sync either way).
    """
    if labels.device.type == "cpu":
        with host_work(labels):
            refused = bool(labels.lt(0).any())
        if refused:
            flag.fill_(1.0)
            return labels.clamp(min=0)
        return labels
    torch.maximum(flag, labels.lt(0).any().to(flag.dtype), out=flag)
    return labels.clamp(min=0)


class TrainStep:
    """Callable running one optimizer step over ``grad_accum`` micro-batches.

    Args:
        engine: the backbone's engine (forward, backward, its update, its loss scale).
        loss_fn: the head (and any auxiliary losses): ``(embeddings [B, D] fp32, labels [B])``
            → scalar loss of the global batch, or ``(scalar, {part: unweighted scalar})``
            (:class:`~dist_face.heads.auxiliary.aux_losses.WeightedSum`).
        head_optimizers: the class centers' (and auxiliary losses') optimizers, stepped or
            skipped together with the engine's; each receives the step's ``skip`` flag.
        schedulers: stepped once per optimizer step.
        timer: records the time of each phase (forward, head collectives, backward,
            optimizer) without synchronising; None to not time.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        head_optimizers: Sequence[torch.optim.Optimizer],
        schedulers: Sequence[torch.optim.lr_scheduler.LRScheduler],
        timer: StepTimer | None = None,
    ) -> None:
        self.engine = engine
        self.loss_fn = loss_fn
        self.head_optimizers = list(head_optimizers)
        self.schedulers = list(schedulers)
        self.timer = timer
        self._head_params = [
            p for opt in self.head_optimizers for g in opt.param_groups for p in g["params"]
        ]
        # the row gradients the head hands over in backward, applied only after the decision
        self._sinks = [o.sink for o in self.head_optimizers if isinstance(o, RowSparseOptimizer)]
        self._bn = BufferSnapshot.of_batchnorm(engine.module)  # a skipped step leaves them alone
        # the head's and auxiliary losses' per-step buffers (AdaFace's norm statistics,
        # ElasticFace's draw counter, the center loss's centers) and host streams
        loss_buffers = list(loss_fn.buffers()) if isinstance(loss_fn, torch.nn.Module) else []
        self._loss_state = BufferSnapshot(loss_buffers)
        self._host = HostRewind(loss_fn)
        device = engine.scaler.scale.device
        self._flags = torch.zeros(len(SKIP_REASONS), device=device)  # reused every step
        self._total = torch.zeros((), device=device)

    @property
    def scaler(self) -> LossScaler:
        """The loss scale and skip counter of the step (the engine's)."""
        return self.engine.scaler

    @property
    def backbone(self) -> torch.nn.Module:
        """The bare backbone the engine trains."""
        return self.engine.module

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer the step applies: the engine's, then the head's."""
        return [*self.engine.optimizers, *self.head_optimizers]

    def __call__(self, batches: Sequence[Batch]) -> dict[str, torch.Tensor]:
        """Run forward/backward on every micro-batch, then one update.

        Returns:
            Device tensors: ``loss`` (mean over micro-batches), ``grad_norm`` (backbone, before
            clipping), ``skipped`` (1.0 if the update was skipped on every rank),
            ``skipped_labels`` (1.0 if it was skipped because some rank's loader refused a
            label), and ``loss/<part>`` (unweighted, mean over micro-batches) when the loss
            function returns ``(total, parts)`` (a head with auxiliary losses).
        """
        timer = self.timer
        comm.time_collectives(timer)
        try:
            total = self._total.zero_()
            self._flags.zero_()
            parts: dict[str, torch.Tensor] = {}
            self._bn.save()
            self._loss_state.save()
            self._host.save()
            for i, (images, labels) in enumerate(batches):
                last = i == len(batches) - 1
                with self.engine.micro_batch(last):
                    if timer is not None:
                        timer.start("forward")
                    embeddings = self.engine.forward(images)
                    # the loader's host labels as they are: the head samples from them on the
                    # host; the auxiliary losses get a non-blocking device copy
                    screened = screen_refused(labels, self._flags[2:])
                    if screened is not labels and labels.device.type == "cpu":
                        # known on the host before the forward: the step is skipped, so the
                        # head's backward need not hold its row gradients
                        for sink in self._sinks:
                            sink.refuse()
                    labels = screened
                    loss = self.loss_fn(embeddings.float(), labels)
                    if isinstance(loss, tuple):  # (total, {name: unweighted part})
                        loss, named = loss
                        for name, value in named.items():
                            part = value.detach() / len(batches)
                            parts[f"loss/{name}"] = parts.get(f"loss/{name}", 0) + part
                    loss = loss / len(batches)
                    if timer is not None:
                        timer.start("backward")
                    self.engine.backward(loss, last)
                total += loss.detach()
            if timer is not None:
                timer.start("optimizer")
            skip, grad_norm = self.update()
            for sched in self.schedulers:
                sched.step()
            if timer is not None:
                timer.end_step()
        finally:
            comm.time_collectives(None)
        return {
            "loss": total.clone(),
            "grad_norm": grad_norm.detach(),
            "skipped": skip,
            "skipped_labels": self._flags[2].clone(),
            **parts,
        }

    def decide_skip(self) -> torch.Tensor:
        """The step's one skip decision, on the device, identical on every rank.

        Unscales the head's (dense ``.grad`` and the row gradients its sinks hold) and the
        engine's gradients, checks them, the head's loss and the BatchNorm statistics for
        inf/NaN, and reduces these reasons with the labels' (MAX over the engine's data-parallel
        group) in one collective.

        Returns:
            A 0-dim float tensor, 1.0 to skip the step and 0.0 to apply it.
        """
        flags, scaler = self._flags, self.engine.scaler
        params = [*self.engine.checked_params(), *self._head_params]
        grads = [p.grad for p in params if p.grad is not None]
        for sink in self._sinks:
            grads += sink.tensors()
            head_nonfinite = sink.nonfinite()
            if head_nonfinite is not None:  # the head's loss or incoming gradient was inf/NaN
                torch.maximum(flags[0], head_nonfinite.to(flags.dtype), out=flags[0])
        scaler.unscale(grads, flags[0])
        batchnorm = self._bn.nonfinite()
        if batchnorm is not None:
            flags[1].copy_(batchnorm)
        all_reduce(flags, ReduceOp.MAX, scaler.group)
        return flags.amax()

    def update(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Decide, then apply or skip every update together; zero the gradients.

        Returns:
            ``(skip, grad_norm)``: the all-ranks skip flag and the backbone's gradient norm
            before clipping (0 when clipping is off), both 0-dim device tensors.
        """
        skip, grad_norm = self.engine.step(self.decide_skip())
        for opt in self.head_optimizers:
            optimizer_step(opt, skip)
            opt.zero_grad(set_to_none=True)
        for sink in self._sinks:
            sink.clear()  # applied (or dropped) by the optimizer; also after a refused step
        self._bn.restore_if(skip)
        self._loss_state.restore_if(skip)
        self._host.restore_if(skip)
        scaler = self.engine.scaler
        scaler.skipped += skip.to(torch.int64)
        scaler.update(skip)
        return skip, grad_norm
