"""The trainer's entry point refuses bad configurations before it builds anything."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from dist_face.train.entry import main

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusals")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("--train.precision=fp16", "train.precision: fp16 needs a CUDA device"),
        ("--train.precision=fp16 --dist.engine=deepspeed", "train.precision: fp16"),
        ("--dist.zero_stage=3", "zero_stage"),
    ],
)
def test_bad_configuration_exits_2_naming_the_key(
    override: str,
    key: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    # init_logging replaces the root handlers, pytest's capture among them
    monkeypatch.setattr("dist_face.train.entry.init_logging", lambda rank: None)
    with caplog.at_level(logging.ERROR, logger="dist_face.train"):
        code = main(["--config", "debug_cpu", f"--output_root={tmp_path}", *override.split()])
    assert code == 2
    assert "bad configuration" in caplog.text and key in caplog.text
    assert not any(tmp_path.iterdir())  # nothing was built or written
