"""Millions of classes per rank: the real trainer's peak memory stays near the centers' bytes.

4 gloo ranks train 10 steps (synthetic data, the ``tiny`` backbone, D = 128, ArcFace, r = 0.1,
SGD with momentum, sparse update) and report their peak resident memory. The allowance for
everything that is not the head (interpreter, torch, backbone, loader, gloo) is measured first
by the same run at C = 1,000. Each rank must then stay within that allowance plus 2.5 × its
share of the fp32 center bytes (``C/W · D · 4``): centers and momentum are 2 ×, blocks,
sampling scores and gathered rows fit in the remaining 0.5 ×.

The default run uses C = 2,000,000 (256 MB of centers per rank, ~4 GB for the four ranks;
below that, one block's rows are a noticeable fraction of the slice); ``pytest -m scale`` runs
the 8,000,000-class point (1 GB per rank, about 10 GB for the four ranks).
"""

from __future__ import annotations

import resource

import pytest
import torch

from dist_face.config import load_config
from dist_face.dist import Topology
from dist_face.metrics import InMemorySink
from dist_face.metrics.perf import rss_follows_live_memory
from dist_face.train.build import build_trainer
from tests.helpers.distributed import run_distributed

pytestmark = pytest.mark.dist

WORLD, D, BATCH, STEPS = 4, 128, 8, 10


def _train(rank: int, world: int, tmp: str, classes: int) -> dict[str, float]:
    rss_follows_live_memory()
    overrides = [
        "--model.name=tiny",
        f"--model.embedding_size={D}",
        "--data.root=synthetic",
        f"--data.num_classes={classes}",
        f"--data.synthetic_samples={world * BATCH * STEPS}",
        f"--data.batch_size={BATCH}",
        "--data.num_workers=0",
        "--eval.targets=[]",
        f"--output_root={tmp}",
        f"--name=scale_{classes}",
        "--train.log_every=1000",
        "--checkpoint.every=0",
        "--head.sample_rate=0.1",
        "--head.update=sparse",
    ]
    cfg = load_config("debug_cpu", overrides)
    trainer, _ = build_trainer(cfg, Topology.from_env(), torch.device("cpu"), InMemorySink())
    trainer.fit()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux
    return {"peak": peak, "steps": float(trainer.state.step)}


def _peaks(tmp_path, classes: int) -> list[dict[str, float]]:
    return run_distributed(_train, WORLD, str(tmp_path / str(classes)), classes, timeout=600)


def _check(tmp_path, classes: int) -> None:
    base = _peaks(tmp_path, 1_000)
    big = _peaks(tmp_path, classes)
    share = classes / WORLD * D * 4
    for rank, (b, r) in enumerate(zip(base, big, strict=True)):
        assert r["steps"] == STEPS
        head = r["peak"] - b["peak"]
        allowance = b["peak"] / 2**20
        print(f"rank {rank}: allowance {allowance:.0f} MiB, head {head / share:.2f} x share")
        assert r["peak"] <= b["peak"] + 2.5 * share, (
            f"rank {rank}: peak {r['peak'] / 2**20:.0f} MiB > allowance "
            f"{b['peak'] / 2**20:.0f} MiB + 2.5 x {share / 2**20:.0f} MiB"
        )


def test_2m_classes_fit_in_two_and_a_half_center_copies(tmp_path) -> None:
    _check(tmp_path, 2_000_000)


@pytest.mark.scale
def test_8m_classes_fit_in_two_and_a_half_center_copies(tmp_path, request) -> None:
    if "scale" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("the 8M-class run needs ~10 GB and runs with -m scale")
    _check(tmp_path, 8_000_000)
