"""The training loop's bookkeeping: epochs, offsets, and that every epoch's data is closed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from dist_face.train.loop import Trainer, TrainState


class Epochs:
    """A loader factory that records which epochs were opened and which were closed."""

    def __init__(self) -> None:
        self.opened: list[tuple[int, int]] = []
        self.closed: list[int] = []

    def __call__(self, epoch: int, offset: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.opened.append((epoch, offset))
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        try:
            while True:
                yield torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)
        finally:
            self.closed.append(epoch)


def _trainer(epochs: Epochs, total: int, step_fn=None, state: TrainState | None = None):
    return Trainer(
        step_fn=step_fn or (lambda micro: {}),
        loader_factory=epochs,
        steps_per_epoch=3,
        total_steps=total,
        samples_per_step=2,
        grad_accum=1,
        hooks=[],
        state=state,
    )


def test_epochs_advance_and_every_epoch_is_closed() -> None:
    epochs = Epochs()
    state = _trainer(epochs, total=7).fit()
    assert (state.step, state.epoch, state.offset) == (7, 2, 2)
    assert epochs.opened == [(0, 0), (1, 0), (2, 0)]
    assert epochs.closed == [0, 1, 2]  # the unfinished last epoch too


def test_resume_mid_epoch_and_close_on_error() -> None:
    epochs = Epochs()
    calls = []

    def failing(micro):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("rank died")
        return {}

    trainer = _trainer(
        epochs, total=9, step_fn=failing, state=TrainState(step=4, epoch=1, offset=2)
    )
    with pytest.raises(RuntimeError, match="rank died"):
        trainer.fit()
    assert epochs.opened == [(1, 2)]
    assert epochs.closed == [1]
    assert (trainer.state.step, trainer.state.offset) == (5, 4)
