"""StepTimer: phases add up, collectives move from their phase to head_comm, reads reset."""

from __future__ import annotations

import time

import torch

from dist_face.dist import comm
from dist_face.train.timing import StepTimer


def _step(timer: StepTimer, forward: float, collective: float, backward: float) -> None:
    timer.start("forward")
    time.sleep(forward)
    token = timer.collective_start()
    time.sleep(collective)
    timer.collective_end(token)
    timer.start("backward")
    time.sleep(backward)
    timer.start("optimizer")
    timer.end_step()


def test_phases_are_means_per_step_and_collectives_are_their_own_phase() -> None:
    timer = StepTimer(torch.device("cpu"))
    start = time.perf_counter()
    _step(timer, 0.02, 0.03, 0.01)
    _step(timer, 0.04, 0.01, 0.03)
    wall = time.perf_counter() - start
    got = timer.read()
    assert set(got) == {"time/forward_s", "time/head_comm_s", "time/backward_s", "time/optimizer_s"}
    assert 0.03 <= got["time/forward_s"] < 0.03 + 0.01  # sleeps 0.02, 0.04 without the comm
    assert 0.02 <= got["time/head_comm_s"] < 0.02 + 0.01
    assert 0.02 <= got["time/backward_s"] < 0.02 + 0.01
    assert abs(sum(got.values()) * 2 - wall) < 0.005
    assert timer.read() == {}  # read resets


def test_collectives_outside_forward_and_backward_are_not_head_comm() -> None:
    timer = StepTimer(torch.device("cpu"))
    assert timer.collective_start() is None  # no step running
    timer.start("optimizer")
    assert timer.collective_start() is None  # e.g. the overflow flag's all-reduce
    timer.end_step()
    assert timer.read()["time/head_comm_s"] == 0.0


def test_many_steps_between_reads_keep_a_bounded_queue() -> None:
    timer = StepTimer(torch.device("cpu"))
    for _ in range(500):
        timer.start("forward")
        timer.start("optimizer")
        timer.end_step()
    assert len(timer._pending) <= 32
    assert timer.read()["time/forward_s"] >= 0


def test_comm_reports_collectives_to_the_installed_timer() -> None:
    calls: list[str] = []

    class Recorder:
        def collective_start(self) -> object:
            calls.append("start")
            return "token"

        def collective_end(self, token: object) -> None:
            calls.append(f"end {token}")

    comm.time_collectives(Recorder())
    try:
        comm._timed(lambda: calls.append("run"))
    finally:
        comm.time_collectives(None)
    comm._timed(lambda: calls.append("run untimed"))
    assert calls == ["start", "run", "end token", "run untimed"]
