"""End-to-end training throughput and the time share of each step phase.

Runs the real trainer components (backbone, DDP when W > 1, sharded head, fused optimizer)
twice in the same process: once on the synthetic source (no I/O) and once on record shards
(read + decode + flip), and reports samples/s of each and their ratio. A third pass times the
phases of a step (data wait, backbone forward, head forward incl. collectives, backward,
optimizer) of the real step with its own phase timer, and the data wait with a device
synchronisation around it, which the trainer itself never does.

    python tools/bench_train.py --shards data/quickstart/shards
    torchrun --standalone --nproc_per_node=2 tools/bench_train.py --shards data/quickstart/shards

With ``--engines ddp,deepspeed:2`` it compares backbone engines instead (``engine[:ZeRO
stage]``, on the shards, rounds alternated, best pass of each) against the first one listed.

With ``--synthetic-classes C`` (and no ``--shards``) it measures the synthetic source only,
with C classes, and prints images/s per rank (per GPU) and the phase shares; this is what
tools/gpu_check.sh runs, e.g.

    python tools/bench_train.py --synthetic-classes 93431 --config ms1mv3_r50 \
        --batch-size 128 --train.precision=fp16 --head.sample_rate=0.1
"""

from __future__ import annotations

import argparse
import time

import torch

from dist_face.config import load_config
from dist_face.dist import Topology, barrier, destroy_distributed, init_distributed
from dist_face.train.build import build_trainer
from dist_face.train.timing import StepTimer


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _throughput(cfg, topology, device, steps: int) -> float:
    trainer, _ = build_trainer(cfg, topology, device, sink=_Null())
    trainer.hooks = []  # no logging, evaluation or checkpoints: the step and the data only
    batches = iter(trainer.loader_factory(0, 0))
    for _ in range(2):  # warm-up: allocator, DDP buckets, loader workers
        trainer.step_fn([next(batches)])
    _sync(device)
    barrier()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step_fn([next(batches)])
    _sync(device)
    barrier()
    return steps * cfg.data.batch_size / (time.perf_counter() - start)


def _phases(cfg, topology, device, steps: int) -> dict[str, float]:
    """Share of each phase in the real step (its own :class:`StepTimer`), and the data wait.

    ``head_comm`` (the head's collectives) lies within ``forward`` and ``backward``; the
    shares of the other phases add up to 1.
    """
    trainer, _ = build_trainer(cfg, topology, device, sink=_Null())
    step = trainer.step_fn
    step.timer = StepTimer(device)
    batches = iter(trainer.loader_factory(0, 0))
    data = 0.0
    for i in range(steps + 2):
        start = time.perf_counter()
        batch = next(batches)
        _sync(device)
        if i >= 2:
            data += time.perf_counter() - start
        step([batch])
        _sync(device)
        if i == 1:
            step.timer.read()  # drop the warm-up steps
    times = {k.removeprefix("time/").removesuffix("_s"): v for k, v in step.timer.read().items()}
    totals = {"data": data / steps, **times}
    whole = sum(v for k, v in totals.items() if k != "head_comm")
    return {k: v / whole for k, v in totals.items()}


class _Null:
    def log(self, metrics, step) -> None:
        pass

    def close(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shards", help="record shard set (tools/pack.py output)")
    p.add_argument(
        "--synthetic-classes",
        type=int,
        default=0,
        help="measure the synthetic source alone, with this many classes (no --shards)",
    )
    p.add_argument("--config", default="debug_cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--engines", default="", help="compare engines, e.g. ddp,deepspeed:2")
    args, overrides = p.parse_known_args(argv)
    if bool(args.shards) == bool(args.synthetic_classes):
        p.error("give either --shards or --synthetic-classes")
    topology = Topology.from_env()
    device = init_distributed(topology).device
    # the synthetic source repeats one batch, which drives gradients into denormal floats that
    # are slow on CPUs; flush them so both sources measure the same arithmetic
    torch.set_flush_denormal(True)
    common = [
        f"--data.batch_size={args.batch_size}",
        f"--data.num_workers={args.workers}",
        "--eval.targets=[]",
        "--output_root=/tmp/dist_face_bench",
        *overrides,
    ]
    if args.synthetic_classes:
        return _synthetic_only(args, topology, device, common)
    if args.engines:
        return _compare_engines(args, topology, device, [f"--data.root={args.shards}", *common])
    try:
        shards = load_config(args.config, [f"--data.root={args.shards}", *common])
        synthetic = load_config(
            args.config,
            ["--data.root=synthetic", f"--data.num_classes={_classes(args.shards)}", *common],
        )
        # alternate the sources and keep each one's best pass: warm-up and neighbours on a
        # shared machine otherwise favour whichever runs second
        rates = {"synthetic": 0.0, "shards": 0.0}
        for _ in range(2):
            for name, cfg in (("synthetic", synthetic), ("shards", shards)):
                rates[name] = max(rates[name], _throughput(cfg, topology, device, args.steps))
        phases = _phases(shards, topology, device, max(args.steps // 2, 5))
    finally:
        destroy_distributed()
    if topology.is_main:
        w = topology.world_size
        print(
            f"# {args.config}, {w} rank(s) on {device.type}, batch {args.batch_size}/rank, "
            f"{args.workers} loader worker(s)/rank, {args.steps} steps"
        )
        print("| source | samples/s (all ranks) | vs synthetic |\n|---|---:|---:|")
        for name, rate in rates.items():
            print(f"| {name} | {rate * w:,.1f} | {rate / rates['synthetic']:.2f} |")
        print("\n| phase | share of step time |\n|---|---:|")
        for name, share in phases.items():
            print(f"| {name} | {100 * share:.1f}% |")
    return 0


def _synthetic_only(args, topology: Topology, device: torch.device, common: list[str]) -> int:
    """Images/s per rank on the synthetic source, and the phase shares of its steps."""
    cfg = load_config(
        args.config,
        ["--data.root=synthetic", f"--data.num_classes={args.synthetic_classes}", *common],
    )
    try:
        rate = max(_throughput(cfg, topology, device, args.steps) for _ in range(2))
        phases = _phases(cfg, topology, device, max(args.steps // 2, 5))
    finally:
        destroy_distributed()
    if topology.is_main:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(
            f"# {args.config}: {cfg.model.name}, {cfg.train.precision}, batch {cfg.data.batch_size}"
            f"/rank, Partial FC r={cfg.head.sample_rate}, {args.synthetic_classes} classes, "
            f"{topology.world_size} rank(s) on {name}, {args.steps} steps, synthetic data"
        )
        print(f"images/s per rank: {rate:,.1f}")
        print("phase shares: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in phases.items()))
    return 0


def _compare_engines(args, topology: Topology, device: torch.device, common: list[str]) -> int:
    """samples/s of each ``engine[:stage]`` in ``args.engines`` and its ratio to the first."""
    configs = {}
    for spec in args.engines.split(","):
        engine, _, stage = spec.partition(":")
        configs[spec] = load_config(
            args.config, [*common, f"--dist.engine={engine}", f"--dist.zero_stage={stage or 0}"]
        )
    rates = dict.fromkeys(configs, 0.0)
    try:
        for _ in range(2):  # alternated, best pass kept (see main)
            for spec, cfg in configs.items():
                rates[spec] = max(rates[spec], _throughput(cfg, topology, device, args.steps))
    finally:
        destroy_distributed()
    if topology.is_main:
        w, first = topology.world_size, next(iter(rates.values()))
        print(
            f"# {args.config}, {w} rank(s) on {device.type}, batch {args.batch_size}/rank, "
            f"{args.steps} steps, record shards"
        )
        print("| engine[:ZeRO stage] | samples/s (all ranks) | ratio |\n|---|---:|---:|")
        for spec, rate in rates.items():
            print(f"| {spec} | {rate * w:,.1f} | {rate / first:.2f} |")
    return 0


def _classes(root: str) -> int:
    from dist_face.data.format.shards import ShardSet

    return ShardSet.open(root).num_classes


if __name__ == "__main__":
    raise SystemExit(main())
