"""A steady-state training step never makes the host wait for the device, for every margin.

Real trainer (build_trainer: DDP, sharded head, fused optimizer, step timer, hooks) on 2 gloo
ranks, synthetic data, bf16, with and without Partial FC sampling. Every margin runs on a
small conv/BN backbone registered here (bf16 convolutions are slow on CPUs); ArcFace also
runs on the ``tiny`` backbone of the CI recipe, with sampling. A TorchFunctionMode counts
the calls that synchronise with the host on a GPU (tests/helpers/host_syncs.py) over whole
loop iterations (data, step and every hook) that are not log, evaluation or checkpoint steps.
The GPU tier repeats this with ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import pytest
import torch

from dist_face.config import load_config
from dist_face.dist import Topology
from dist_face.heads import MARGINS
from dist_face.metrics import InMemorySink
from dist_face.models.base import Backbone
from dist_face.models.registry import BACKBONES
from dist_face.train.build import build_trainer
from dist_face.train.loop import Hook, Trainer
from tests.helpers.distributed import run_distributed
from tests.helpers.host_syncs import HostSyncCounter

pytestmark = pytest.mark.dist

BATCH, WARMUP, STEPS = 8, 2, 4
# the suite's time: a margin whose step runs the same code as another one here is left out, and
# the per-sample margins (norm-adaptive, drawn) run with sampling only, the superset path
SAME_STEP_AS = {
    "elasticface_arc_plus": "elasticface_cos_plus",
    "elasticface_cos": "elasticface_arc",
}
SAMPLED_ONLY = {"adaface", "magface", "elasticface_arc", "elasticface_cos_plus"}


class SyncProbeNet(Backbone):
    """Strided conv, BatchNorm, PReLU, linear, BatchNorm1d: the layer kinds of the real ones."""

    def __init__(self, *, embedding_size: int = 64, **_: object) -> None:
        super().__init__(embedding_size)
        self.stem = torch.nn.Sequential(
            torch.nn.AvgPool2d(8),
            torch.nn.Conv2d(3, 8, 3, 2, 1, bias=False),
            torch.nn.BatchNorm2d(8),
            torch.nn.PReLU(8),
        )
        self.fc = torch.nn.Linear(8 * 7 * 7, embedding_size)
        self.features = torch.nn.BatchNorm1d(embedding_size)

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.stem(x), 1)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(feats))


class CountIterations(Hook):
    """Last hook: closes one counting window per loop iteration after the warm-up steps."""

    def __init__(self) -> None:
        self.counter = HostSyncCounter()
        self.per_step: list[dict[str, int]] = []
        self.sites: dict[str, int] = {}
        self._open = False

    def after_step(self, trainer: Trainer, metrics: dict[str, torch.Tensor]) -> None:
        if self._open:
            self.counter.__exit__(None, None, None)
            self.per_step.append(dict(self.counter.counts))
            for site, n in self.counter.sites.items():
                self.sites[site] = self.sites.get(site, 0) + n
            self.counter.reset()
            self._open = False
        if WARMUP <= trainer.state.step < trainer.total_steps - 1:  # the last step logs
            self.counter.__enter__()
            self._open = True


def overrides(tmp: str, margin: str, rate: float, model: str = "sync_probe") -> list[str]:
    samples = 2 * BATCH * (WARMUP + STEPS)
    return [
        f"--model.name={model}",
        "--data.root=synthetic",
        "--data.num_classes=40",
        f"--data.synthetic_samples={samples}",
        f"--data.batch_size={BATCH}",
        "--eval.targets=[]",
        f"--output_root={tmp}",
        f"--name={margin}_{rate}",
        "--train.precision=bf16",
        "--train.log_every=1000",
        "--checkpoint.every=0",
        f"--head.margin={margin}",
        f"--head.sample_rate={rate}",
        "--head.check_labels=true",
    ]


def _count(rank: int, world: int, tmp: str, rate: float) -> dict:
    if "sync_probe" not in BACKBONES.names():
        BACKBONES.register("sync_probe")(SyncProbeNet)
    out = {}
    runs = [
        (m, "sync_probe")
        for m in MARGINS.names()
        if m not in SAME_STEP_AS and (rate < 1.0 or m not in SAMPLED_ONLY)
    ]
    if rate < 1.0:
        runs.append(("arcface", "tiny"))
    for margin, model in runs:
        cfg = load_config("debug_cpu", overrides(tmp, margin, rate, model))
        sink = InMemorySink()
        trainer, _ = build_trainer(cfg, Topology.from_env(), torch.device("cpu"), sink)
        hook = CountIterations()
        trainer.hooks.insert(len(trainer.hooks) - 1, hook)  # before the sink closes
        trainer.fit()
        kept = [v for _, v in sink.series("head/sampled_fraction")]
        out[f"{margin} on {model}"] = {"per_step": hook.per_step, "sites": hook.sites, "kept": kept}
    return out


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_steady_state_steps_make_no_host_sync(tmp_path, rate: float) -> None:
    outs = run_distributed(_count, 2, str(tmp_path), rate, timeout=600)
    for rank, out in enumerate(outs):
        for margin, found in out.items():
            assert len(found["per_step"]) == STEPS - 1, margin
            syncs = {k: v for step in found["per_step"] for k, v in step.items()}
            assert not syncs, f"rank {rank} {margin} r={rate}: {found['sites']}"
            # logged every log step; at r < 1 Partial FC keeps at least r of the rank's classes
            assert found["kept"] and all(rate <= k <= 1.0 for k in found["kept"]), found["kept"]
            assert (min(found["kept"]) < 1.0) == (rate < 1.0), found["kept"]
