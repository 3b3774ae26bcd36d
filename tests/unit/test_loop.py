"""The training loop's bookkeeping: epochs, offsets, and that every epoch's data is closed."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest
import torch

from dist_face.train.loop import Hook, Trainer, TrainState


class Epochs:
    """A loader factory that records which epochs were opened and which were closed."""

    def __init__(self) -> None:
        self.opened: list[tuple[int, int]] = []
        self.closed: list[int] = []

    def __call__(self, epoch: int, consumed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.opened.append((epoch, consumed))
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            while True:
                yield torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
        finally:
            self.closed.append(epoch)


class ClosedAtTheEnd(Hook):
    """Records which epochs were closed when the last hook runs, before the process moves on."""

    def __init__(self, epochs: Epochs) -> None:
        self.epochs = epochs
        self.closed: list[int] | None = None

    def after_train(self, trainer: Trainer) -> None:
        self.closed = list(self.epochs.closed)


def _trainer(
    epochs: Epochs,
    total: int,
    step_fn: Callable[[list], dict] | None = None,
    state: TrainState | None = None,
    hooks: Sequence[Hook] = (),
) -> Trainer:
    return Trainer(
        step_fn=step_fn or (lambda micro: {}),
        loader_factory=epochs,
        steps_per_epoch=3,
        total_steps=total,
        samples_per_step=2,
        grad_accum=1,
        hooks=hooks,
        state=state,
    )


def test_epochs_advance_and_every_epoch_is_closed() -> None:
    epochs = Epochs()
    end = ClosedAtTheEnd(epochs)
    state = _trainer(epochs, total=7, hooks=[end]).fit()
    assert (state.step, state.epoch, state.consumed) == (7, 2, 2)
    assert epochs.opened == [(0, 0), (1, 0), (2, 0)]
    # the unfinished last epoch too, before the end of training: a loader thread still
    # running when the process exits aborts it
    assert end.closed == [0, 1, 2]


def test_resume_mid_epoch_and_close_on_error() -> None:
    epochs = Epochs()
    calls = []

    def failing(micro):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("rank died")
        return {}

    trainer = _trainer(
        epochs, total=9, step_fn=failing, state=TrainState(step=4, epoch=1, consumed=2)
    )
    try:
        trainer.fit()
    except RuntimeError as exc:
        assert str(exc) == "rank died"
        # closed by the loop, not by the traceback being dropped
        assert epochs.closed == [1]
    else:
        pytest.fail("the step's error did not propagate")
    assert epochs.opened == [(1, 2)]
    assert (trainer.state.step, trainer.state.consumed) == (5, 4)


class Calls(Hook):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def after_train(self, trainer: Trainer) -> None:
        self.calls.append("after_train")

    def on_stop(self, trainer: Trainer) -> None:
        self.calls.append(f"on_stop at {trainer.state.step}")


@pytest.mark.parametrize("stop_after", [2, 3])  # mid-epoch, and the epoch's last step
def test_a_stop_ends_the_run_at_that_step_keeping_its_data_position(stop_after: int) -> None:
    epochs, calls = Epochs(), Calls()
    trainer = _trainer(epochs, total=9, hooks=[calls])
    trainer.should_stop = lambda: trainer.state.step == stop_after
    state = trainer.fit()
    assert trainer.stopped and state.step == stop_after
    assert calls.calls == [f"on_stop at {stop_after}"]  # no after_train: the run is not over
    # the checkpoint taken in on_stop resumes at the next sample, as a periodic one does
    assert (state.epoch, state.consumed) == (0, 2 * stop_after)
    assert epochs.closed == [0]
    resumed = _trainer(Epochs(), total=9, state=state)
    assert resumed.fit().step == 9


class Counted:
    """A loader factory whose every batch has labels of its own (batch k: k, k + 1 mod 10)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, epoch: int, consumed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            k, self.count = self.count, self.count + 1
            yield torch.full((2, 4), float(k)), torch.tensor([k % 10, (k + 1) % 10])


def test_the_next_steps_labels_are_prepared_while_a_step_runs() -> None:
    from dist_face.heads import PartialFC
    from dist_face.heads.sharded.label_path import LabelPrefetch

    head, inline = (PartialFC(4, 10, "softmax", 0.5, seed=1) for _ in range(2))
    prefetch = LabelPrefetch(head, None).attach()
    waiting, sampled = [], []

    def step(micro: list) -> dict:
        ((x, y),) = micro
        head(x, y)
        waiting.append(prefetch.waiting)  # step t + 1's labels, pulled before step t ran
        inline(x, y)
        sampled.append(torch.equal(head.last_sampled, inline.last_sampled))
        return {}

    trainer = Trainer(
        step_fn=step,
        loader_factory=Counted(),
        steps_per_epoch=3,
        total_steps=7,
        samples_per_step=2,
        grad_accum=1,
        hooks=[],
        label_prefetch=prefetch,
    )
    trainer.fit()
    # ahead within an epoch; not across an epoch's end nor past the last step
    assert waiting == [1, 1, 0, 1, 1, 0, 0]
    assert all(sampled) and len(sampled) == 7
    assert head.label_prefetch is None  # closed with the run
    assert torch.equal(head.sampler.state(), inline.sampler.state())
