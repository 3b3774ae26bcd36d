"""The trainer's entry point, recording what every step trains on (for torchrun tests).

``python -m tests.helpers.recording_train ARGS`` runs ``dist_face.train`` with ``ARGS``; each
batch handed to the step is logged, as the record numbers read back from its pixels (the
colour-coded shards of ``tests/helpers/datasets.py``: red channel = record number), to
``$DIST_FACE_RECORD_DIR/<pid>.jsonl``, one line per batch as the trainer pulls it (one step
ahead of the step that trains on it; a process killed in between has logged a step it did
not run, which a later round redoes), written at once (the process may be
killed any time): ``{"round", "t", "epoch", "step", "ids"}``. ``round`` names the rendezvous
round (its ``MASTER_PORT``) and the step it started from.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from dist_face.train import build
from dist_face.train.entry import main

_build_trainer = build.build_trainer


def _recording_trainer(*args: Any, **kwargs: Any) -> Any:
    trainer, plan = _build_trainer(*args, **kwargs)
    out = Path(os.environ["DIST_FACE_RECORD_DIR"]) / f"{os.getpid()}.jsonl"
    round_key = f"{os.environ.get('MASTER_PORT')}@{trainer.state.step}"
    factory = trainer.loader_factory

    def recorded(epoch: int, consumed: int) -> Iterator:
        # the trainer pulls a step's batches one step ahead (their labels are prepared while
        # the step before runs): a batch's step is counted from the epoch's first
        first = trainer.state.step + 1
        for i, (images, labels) in enumerate(factory(epoch, consumed)):
            ids = torch.round(images[:, 0, 0, 0].float() * 127.5 + 127.5).long().tolist()
            line = {
                "round": round_key,
                "t": time.time(),
                "epoch": epoch,
                "step": first + i // trainer.grad_accum,
                "ids": ids,
            }
            with out.open("a") as f:
                f.write(json.dumps(line) + "\n")
            yield images, labels

    trainer.loader_factory = recorded
    return trainer, plan


build.build_trainer = _recording_trainer  # the entry point imports it when it trains

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
