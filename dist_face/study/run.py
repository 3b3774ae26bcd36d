"""Run the loss study on an initialised process group and gather its results on disk.

:func:`run_study_rank` is called on every rank; rank 0 writes, per (loss, seed), the held-out
embeddings (``DIR/embeddings/LOSS-seedS.npy``) and a line of ``DIR/runs.jsonl``, and per toy
margin the 2-D training features (``DIR/toy/MARGIN.npz``). :func:`summarise` turns those files
into the rows of ``results.json`` (means and standard deviations over the seeds).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from dist_face.dist.comm import barrier, get_rank
from dist_face.eval.verification import embed_images
from dist_face.study.faces import FaceSet
from dist_face.study.losses import LossSpec
from dist_face.study.modes import StudyMode
from dist_face.study.net import StudyNet
from dist_face.study.scores import score
from dist_face.study.train import train_run

#: The margins of the toy picture, in the order of the papers.
TOY_MARGINS = ("softmax", "normface", "sphereface", "cosface", "arcface")
TOY_IDENTITIES = 10


def run_study_rank(
    specs: list[LossSpec],
    mode: StudyMode,
    train: FaceSet,
    held_out: FaceSet,
    out: Path,
    toy: bool = True,
) -> None:
    """Train every (loss, seed) of the study; rank 0 writes the results under ``out``."""
    main = get_rank() == 0
    if main:
        (out / "embeddings").mkdir(parents=True, exist_ok=True)
    for spec in specs:
        for seed in mode.seeds:
            start = time.perf_counter()
            result = train_run(spec, train, held_out, mode.budget, seed)
            if result is None:
                continue
            np.save(out / "embeddings" / f"{spec.name}-seed{seed}.npy", result.embeddings)
            row = {
                "loss": spec.name,
                "seed": seed,
                **vars(score(result.embeddings, held_out.labels)),
                "target_gap": result.target_gap,
                "final_loss": result.final_loss,
                "wall_s": time.perf_counter() - start,
            }
            with open(out / "runs.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"[study] {spec.name:15s} seed {seed}: acc {row['accuracy']:.3f} "
                f"eer {row['eer']:.3f} rank-1 {row['rank1']:.3f} ({row['wall_s']:.1f} s)",
                flush=True,
            )
    if toy:
        _toy(mode, train, out)
    barrier()


def _toy(mode: StudyMode, train: FaceSet, out: Path) -> None:
    """The 2-D toy experiment: TOY_IDENTITIES identities, one run per margin."""
    keep = train.labels < TOY_IDENTITIES
    faces = FaceSet(train.images[keep], train.labels[keep])
    if get_rank() == 0:
        (out / "toy").mkdir(parents=True, exist_ok=True)
    for margin in TOY_MARGINS:
        spec = LossSpec(margin, head={"margin": margin})
        result = train_run(spec, faces, faces, mode.toy_budget, seed=0, raw=True)
        if result is not None:
            np.savez(
                out / "toy" / f"{margin}.npz",
                features=result.embeddings,
                labels=faces.labels,
                centers=result.centers,
            )


def untrained_embeddings(held_out: FaceSet, embedding_size: int, seed: int) -> np.ndarray:
    """Held-out embeddings of a freshly initialised backbone (the baseline row)."""
    torch.manual_seed(seed)
    return embed_images(StudyNet(embedding_size), held_out.images)


def summarise(out: Path, untrained: dict[int, np.ndarray], held_out: FaceSet) -> list[dict]:
    """Rows of ``results.json`` from ``out/runs.jsonl`` plus the untrained baseline.

    Each row: ``loss``, ``accuracy``, ``eer``, ``tar_at_far_1e-3``, ``rank1`` (means over the
    seeds) with ``_std`` companions (population std), ``seeds``, ``target_gap`` (mean, None for
    pair losses alone), ``final_loss`` and ``wall_s`` (mean per run).
    """
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    for seed, emb in sorted(untrained.items()):
        runs.append({"loss": "untrained", "seed": seed, **vars(score(emb, held_out.labels))})
    names = list(dict.fromkeys(r["loss"] for r in runs))
    rows = []
    for name in names:
        mine = [r for r in runs if r["loss"] == name]
        row: dict = {"loss": name}
        for key, out_key in (
            ("accuracy", "accuracy"),
            ("eer", "eer"),
            ("tar_at_far_1e_3", "tar_at_far_1e-3"),
            ("rank1", "rank1"),
        ):
            values = np.array([r[key] for r in mine])
            row[out_key], row[f"{out_key}_std"] = float(values.mean()), float(values.std())
        row["seeds"] = [r["seed"] for r in mine]
        gaps = [r["target_gap"] for r in mine if r.get("target_gap") is not None]
        row["target_gap"] = float(np.mean(gaps)) if gaps else None
        losses = [r["final_loss"] for r in mine if "final_loss" in r]
        row["final_loss"] = float(np.mean(losses)) if losses else None
        walls = [r["wall_s"] for r in mine if "wall_s" in r]
        row["wall_s"] = float(np.mean(walls)) if walls else None
        rows.append(row)
    return rows
