"""Run a function on N local gloo ranks and collect what each returns.

Processes come from a forkserver that has already imported torch (and ``torch._dynamo``, which
torch's optimizers import on first use: 3.5 s of CPU per rank otherwise), so a rank starts in a
fraction of a second and shares no thread pools with pytest. A rank then starts its own
children (DataLoader workers) with the platform's default method, as a rank that torchrun
started does; it would otherwise inherit ``forkserver`` and wait ~2.5 s for a new server at
every epoch's first worker. The parent owns the TCP store
(bound to a free port by the OS), so there is no port race between concurrent tests. A rank
that raises, hangs past ``timeout`` or dies at exit (non-zero exit code) fails the test.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import traceback
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

_CTX = mp.get_context("forkserver")
_CTX.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "numpy", "dist_face"])


class RankFailure(AssertionError):
    """One or more ranks failed; the message holds each rank's traceback or exit code."""


def _worker(
    fn: Callable[..., Any],
    rank: int,
    world_size: int,
    port: int,
    env: dict[str, str],
    args: tuple[Any, ...],
    results: Any,
) -> None:
    # a forkserver child inherits its parent's start method; torchrun's ranks have the default
    mp.set_start_method(mp.get_all_start_methods()[0], force=True)
    os.environ.update(env)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    try:
        import datetime

        import torch

        torch.set_num_threads(1)
        store = dist.TCPStore(
            "127.0.0.1", port, world_size, is_master=False, timeout=datetime.timedelta(seconds=60)
        )
        dist.init_process_group(
            "gloo",
            store=store,
            rank=rank,
            world_size=world_size,
            # a test may shorten the group's timeout (the timeouts themselves under test)
            timeout=datetime.timedelta(seconds=float(env.get("DIST_FACE_TEST_PG_TIMEOUT_S", 120))),
        )
        out = fn(rank, world_size, *args)
        dist.barrier()
        dist.destroy_process_group()
        # plain pickle copies tensor data; torch's queue reducer would share memory that
        # disappears when this process exits
        results.put((rank, "ok", pickle.dumps(out)))
    except BaseException:  # report everything, including KeyboardInterrupt in a rank
        results.put((rank, "error", traceback.format_exc()))


def run_distributed(
    fn: Callable[..., Any],
    world_size: int,
    *args: Any,
    timeout: float = 120.0,
    env: dict[str, str] | None = None,
) -> list[Any]:
    """Run ``fn(rank, world_size, *args)`` on ``world_size`` gloo ranks.

    ``fn`` must be importable (module level) and its return value picklable. The default
    process group is initialised before ``fn`` runs and destroyed after it returns.

    Returns:
        The values returned by each rank, in rank order.

    Raises:
        RankFailure: a rank raised, timed out or exited with a non-zero code.
    """
    master = dist.TCPStore("127.0.0.1", 0, world_size + 1, is_master=True, wait_for_workers=False)
    port = master.port
    results = _CTX.Queue()
    procs = [
        _CTX.Process(
            target=_worker, args=(fn, r, world_size, port, env or {}, args, results), daemon=False
        )
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    outcomes: dict[int, tuple[str, Any]] = {}
    try:
        while len(outcomes) < world_size:
            try:
                rank, status, value = results.get(timeout=timeout)
            except queue.Empty:
                missing = sorted(set(range(world_size)) - set(outcomes))
                raise RankFailure(
                    f"ranks {missing} did not finish within {timeout:.0f} s"
                ) from None
            outcomes[rank] = (status, value)
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        del master
    errors = [f"rank {r}:\n{v}" for r, (s, v) in sorted(outcomes.items()) if s == "error"]
    errors += [f"rank {r}: exit code {p.exitcode}" for r, p in enumerate(procs) if p.exitcode != 0]
    if errors:
        raise RankFailure("\n".join(errors))
    return [pickle.loads(outcomes[r][1]) for r in range(world_size)]
