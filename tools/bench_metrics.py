"""What metrics cost: one sink call, and the whole collection against training without it.

    python tools/bench_metrics.py [--calls 20000]
    python tools/bench_metrics.py --train [--rounds 8 --steps 20 --log-every 10]
    torchrun --standalone --nproc_per_node=2 tools/bench_metrics.py --train

Sink mode: both sinks get the same record (the keys LogHook and the documented extras send);
prints microseconds per call and the ratio to the JSONL sink measured in the same run.

Train mode: the real trainer step (``debug_cpu`` recipe, synthetic data so the loader does
not add noise) runs in alternating rounds with everything a run collects (step-phase timer,
log hook every ``--log-every`` steps with its cross-rank gather, JSONL and Prometheus sinks)
and with nothing at all. Prints the median step time of each and their ratio, and the time
spent inside the collection code itself (timer calls and the log hook), which on a shared
machine is a steadier measure of the overhead than the difference of two noisy medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "helpers"))

from metrics_rank import record

from dist_face.config import load_config
from dist_face.dist import Topology, barrier, destroy_distributed, init_distributed
from dist_face.metrics import JsonlSink, MultiSink
from dist_face.metrics.prometheus import PrometheusSink


def per_call_us(sink, calls: int) -> float:
    """Best-of-3 microseconds of one ``sink.log`` call of a full trainer record."""
    rec = record(0, 100)
    best = float("inf")
    for _ in range(3):  # best of 3: the machine is shared
        start = time.perf_counter()
        for step in range(calls):
            sink.log(rec, step)
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def bench_sinks(calls: int) -> None:
    """Print the cost of one PrometheusSink.log call against the JSONL sink's."""
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = JsonlSink(Path(tmp) / "m.jsonl")
        base = per_call_us(jsonl, calls)
        jsonl.close()
    prom = PrometheusSink(rank=0, node=0, job="bench")
    ours = per_call_us(prom, calls)
    print(f"{'sink':<16}{'us/call':>10}{'ratio':>8}")
    print(f"{'JsonlSink':<16}{base:>10.1f}{1.0:>8.2f}")
    print(f"{'PrometheusSink':<16}{ours:>10.1f}{ours / base:>8.2f}")


def _round_s(trainer, batches, steps: int, hooks: list) -> tuple[float, float]:
    """Seconds per step of ``steps`` steps running ``hooks`` as the loop would, and the
    seconds per step spent inside the hooks."""
    barrier()
    start = time.perf_counter()
    in_hooks = 0.0
    for _ in range(steps):
        metrics = trainer.step_fn([next(batches)])
        trainer.state.step += 1
        t = time.perf_counter()
        for hook in hooks:
            hook.after_step(trainer, metrics)
        in_hooks += time.perf_counter() - t
    for value in metrics.values():  # wait for the device before stopping the clock
        value.cpu()
    barrier()
    return (time.perf_counter() - start) / steps, in_hooks / steps


def timer_us_per_step(device: torch.device, steps: int = 20000) -> float:
    """Microseconds a StepTimer adds to one step: 4 phases and 6 collective spans, no work."""
    from dist_face.train.timing import StepTimer

    timer = StepTimer(device)
    start = time.perf_counter()
    for _ in range(steps):
        for phase in ("forward", "backward", "optimizer"):
            timer.start(phase)
            if phase != "optimizer":
                for _ in range(3):
                    timer.collective_end(timer.collective_start())
        timer.end_step()
    timer.read()
    return (time.perf_counter() - start) / steps * 1e6


def bench_training(args: argparse.Namespace, overrides: list[str]) -> None:
    """Print the median step time with all metrics and with none, and their ratio."""
    from dist_face.train.build import build_trainer
    from dist_face.train.hooks import LogHook

    topology = Topology.from_env()
    device = init_distributed(topology).device
    torch.set_flush_denormal(True)  # a repeated synthetic batch drifts into slow denormals
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = load_config(
                args.config,
                [
                    "--data.root=synthetic",
                    "--data.num_classes=1000",
                    f"--data.batch_size={args.batch_size}",
                    "--eval.targets=[]",
                    f"--output_root={tmp}",
                    *overrides,
                ],
            )
            prom = PrometheusSink(rank=topology.rank, node=topology.node_rank, job="bench")
            sink = MultiSink([JsonlSink(Path(tmp) / f"m{topology.rank}.jsonl"), prom])
            trainer, _ = build_trainer(cfg, topology, device, sink=sink)
            timer = trainer.step_fn.timer
            log = next(h for h in trainer.hooks if isinstance(h, LogHook))
            log.every = args.log_every
            trainer.total_steps = 1 << 30  # the log hook's "last step" never comes
            batches = iter(trainer.loader_factory(0, 0))
            _round_s(trainer, batches, 3, [])  # warm-up: allocator, DDP buckets
            log.before_train(trainer)
            on, off, hooks_s = [], [], []
            for _ in range(args.rounds):  # alternate, so drift on the machine hits both
                trainer.step_fn.timer = timer
                step_s, in_hooks = _round_s(trainer, batches, args.steps, [log])
                on.append(step_s)
                hooks_s.append(in_hooks)
                trainer.step_fn.timer = None
                off.append(_round_s(trainer, batches, args.steps, [])[0])
            sink.close()
            timer_s = timer_us_per_step(device) / 1e6
    finally:
        destroy_distributed()
    if topology.is_main:
        base, ours = statistics.median(off), statistics.median(on)
        spent = statistics.median(hooks_s) + timer_s
        print(
            f"# {args.config} on {topology.world_size} rank(s), {device.type}, batch "
            f"{args.batch_size}/rank, log every {args.log_every} steps, "
            f"{args.rounds} x {args.steps} steps each"
        )
        print("| collection | median step (ms) | ratio |\n|---|---:|---:|")
        print(f"| none | {1e3 * base:.2f} | 1.000 |")
        print(f"| timer + log hook + JSONL + Prometheus | {1e3 * ours:.2f} | {ours / base:.3f} |")
        print(
            f"\ntime inside the collection code: {1e6 * spent:.0f} us per step "
            f"({100 * spent / base:.3f}% of the step; timer {1e6 * timer_s:.1f} us, log hook "
            f"{1e6 * (spent - timer_s):.0f} us averaged over its steps)"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--calls", type=int, default=20000, help="sink mode: log() calls")
    p.add_argument("--train", action="store_true", help="measure the trainer with and without")
    p.add_argument("--config", default="debug_cpu")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="steps per round")
    p.add_argument("--log-every", type=int, default=10)
    args, overrides = p.parse_known_args(argv)
    if args.train:
        bench_training(args, overrides)
    else:
        bench_sinks(args.calls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
