"""``dist-face-loss-study``: train every loss under one budget on 2 CPU ranks, score, draw.

``python tools/loss_study.py [--quick] --out DIR`` writes ``DIR/results.json`` (one row per
loss, see :func:`dist_face.study.run.summarise`), ``DIR/study.json`` (mode, sizes, budget,
command, date, wall time), ``DIR/runs.jsonl`` (one line per run) and the PNGs
``toy_2d.png``, ``cosine_histograms.png`` and ``roc.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np

from dist_face.extras import MissingExtraError, require
from dist_face.study.faces import FaceSet, render_faces
from dist_face.study.losses import by_name, study_losses, with_scale
from dist_face.study.modes import FULL, QUICK, StudyMode


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(prog="dist-face-loss-study", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--quick", action="store_true", help="the ≤ 5 min mode (CI, docs smoke line)")
    p.add_argument("--losses", default="", help="comma-separated subset of the rows")
    p.add_argument("--seeds", type=int, default=0, help="number of seeds (default: the mode's)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (default: the mode's)")
    p.add_argument(
        "--scale",
        type=float,
        default=0.0,
        help="one logit scale s for every scaled margin (default: each paper's, 64)",
    )
    p.add_argument("--world-size", type=int, default=2, help="gloo ranks (default 2)")
    p.add_argument("--no-toy", action="store_true", help="skip the 2-D toy runs and picture")
    p.add_argument(
        "--cache", type=Path, default=None, help="face render cache (default: OUT/cache)"
    )
    return p.parse_args(argv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, args: tuple) -> None:
    import torch
    import torch.distributed as dist

    from dist_face.study.run import run_study_rank

    torch.set_num_threads(1)  # one core per rank: the ranks are the parallelism
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        run_study_rank(*args)
    finally:
        dist.destroy_process_group()


def _mode(args: argparse.Namespace) -> StudyMode:
    mode = QUICK if args.quick else FULL
    if args.seeds:
        mode = dataclasses.replace(mode, seeds=tuple(range(args.seeds)))
    if args.steps:
        mode = dataclasses.replace(mode, budget=dataclasses.replace(mode.budget, steps=args.steps))
    return mode


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad arguments)."""
    args = parse_args(argv)
    try:
        require("matplotlib", purpose="dist-face-loss-study")  # its figures, before any run
    except MissingExtraError as exc:
        print(f"dist-face-loss-study: error: {exc}", file=sys.stderr)
        return 2
    try:
        specs = by_name(args.losses.split(",")) if args.losses else study_losses()
    except ValueError as exc:
        print(f"dist-face-loss-study: --losses: {exc}", file=sys.stderr)
        return 2
    if args.scale:
        specs = [with_scale(s, args.scale) for s in specs]
    mode = _mode(args)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs.jsonl").unlink(missing_ok=True)
    cache = args.cache or out / "cache"
    start = time.perf_counter()
    train = render_faces(mode.train_identities, mode.train_images, held_out=False, cache=cache)
    held = render_faces(mode.held_out_identities, mode.held_out_images, held_out=True, cache=cache)
    print(f"[study] faces rendered in {time.perf_counter() - start:.0f} s", flush=True)
    _spawn(args.world_size, (specs, mode, train, held, out, not args.no_toy))
    rows = _finish(out, mode, held, specs, toy=not args.no_toy)
    meta = {
        "command": shlex.join(["python", "tools/loss_study.py", *(argv or sys.argv[1:])]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_s": round(time.perf_counter() - start, 1),
        "world_size": args.world_size,
        "mode": dataclasses.asdict(mode),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    (out / "study.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(format_table(rows))
    print(f"[study] {meta['wall_s']:.0f} s; results in {out / 'results.json'}")
    return 0


def _spawn(world: int, args: tuple) -> None:
    """Run the ranks; a SIGTERM or Ctrl-C here stops them too (no orphaned ranks)."""
    import torch.multiprocessing as mp

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    context = mp.start_processes(
        _rank_main, args=(world, _free_port(), args), nprocs=world, start_method="spawn", join=False
    )
    try:
        while not context.join():
            pass
    finally:
        for proc in context.processes:
            if proc.is_alive():
                proc.terminate()


def _finish(out: Path, mode: StudyMode, held: FaceSet, specs: list, toy: bool) -> list[dict]:
    from dist_face.study import plots
    from dist_face.study.run import TOY_MARGINS, summarise, untrained_embeddings

    d = mode.budget.embedding_size
    untrained = {s: untrained_embeddings(held, d, s) for s in mode.seeds}
    rows = summarise(out, untrained, held)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    first = {
        s.name: np.load(out / "embeddings" / f"{s.name}-seed{mode.seeds[0]}.npy") for s in specs
    }
    first["untrained"] = untrained[mode.seeds[0]]
    plots.cosine_histograms(first, held.labels, out / "cosine_histograms.png")
    plots.roc_figure(first, held.labels, out / "roc.png")
    if toy:
        plots.toy_figure(out / "toy", TOY_MARGINS, out / "toy_2d.png")
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of the rows (mean ± std over the seeds)."""
    lines = [
        "| loss | accuracy | EER | TAR@FAR=1e-3 | rank-1 | target gap | final loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        gap = "" if r.get("target_gap") is None else f"{r['target_gap']:.3f}"
        loss = "" if r.get("final_loss") is None else f"{r['final_loss']:.2f}"
        lines.append(
            f"| {r['loss']} | {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} "
            f"| {r['eer']:.3f} ± {r['eer_std']:.3f} "
            f"| {r['tar_at_far_1e-3']:.3f} ± {r['tar_at_far_1e-3_std']:.3f} "
            f"| {r['rank1']:.3f} ± {r['rank1_std']:.3f} | {gap} | {loss} |"
        )
    return "\n".join(lines)
