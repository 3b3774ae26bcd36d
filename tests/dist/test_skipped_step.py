"""A skipped step changes nothing: the real trainer and head, on 2 gloo ranks, DDP and DeepSpeed.

Each case builds the trainer of ``debug_cpu`` (the tiny backbone, the sharded head, its
optimizer, the step) on two ranks, trains two steps, then feeds one batch that must be skipped
for one reason, on rank 0 only:

* ``labels``: a label the loader refused (``-1``);
* ``batchnorm``: images so large that the first BatchNorm's running variance becomes inf;
* ``backbone``: a NaN in one backbone gradient (a tensor hook on one parameter);
* ``head``: a NaN in the head's gradient (the dense ``weight.grad``'s hook, or the row
  gradients the head hands to its sink).

After it, every rank's backbone weights and BatchNorm buffers, both optimizers' state, the
head's centers and buffers (AdaFace's norm statistics, ElasticFace's draw counter), the
sampler's stream and the loss scale (fp16: halved, as its rule says) are bitwise what they were;
the reason is the one planted. The next step then gives bitwise the state of a run that never
saw the bad batch (its schedulers stepped once in its place, as the step counter advances).

fp16 is the trainer's dynamic loss scale on the CPU (the engine's scaler replaced by an fp16
one; autocast's fp16 needs CUDA). The default run covers every reason and both update modes
over a rotation of precisions, margins and engines (DDP, DeepSpeed at ZeRO 0, 1 and 2);
``matrix`` runs the full cross.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from dist_face.config import load_config
from dist_face.dist import Topology
from dist_face.heads.margins.elastic import ElasticFace
from dist_face.heads.sharded.row_optim import RowSparseOptimizer
from dist_face.train.build import build_trainer
from dist_face.train.precision import LossScaler
from dist_face.train.step import SKIP_REASONS
from tests.helpers.distributed import run_distributed

pytestmark = pytest.mark.dist

REASONS = ("labels", "batchnorm", "backbone", "head")
PRECISIONS = ("fp32", "bf16", "fp16")
UPDATES = ("sparse", "dense")
MARGINS = ("arcface", "adaface", "elasticface_arc", "subcenter_arcface")
ENGINES = ("ddp", "zero0", "zero1", "zero2")  # DeepSpeed at each ZeRO stage
CLASSES, BATCH, SIZE = 24, 4, 112


class _Null:
    def log(self, metrics, step) -> None:
        pass

    def close(self) -> None:
        pass


def _batch(seed: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * seed + rank)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=gen)
    return images, torch.randint(0, CLASSES, (BATCH,), generator=gen)


def _build(case: tuple[str, ...], root: str):
    _, precision, update, margin, engine = case
    overrides = [
        "--data.root=synthetic",
        f"--data.num_classes={CLASSES}",
        f"--data.batch_size={BATCH}",
        f"--data.image_size={SIZE}",
        "--eval.targets=[]",
        "--checkpoint.every=0",
        f"--output_root={root}",
        f"--head.margin={margin}",
        f"--head.update={update}",
        "--head.sample_rate=0.5",  # the sampler draws: its stream must be rewound too
        f"--train.precision={'fp32' if precision == 'fp16' else precision}",
        f"--dist.engine={'ddp' if engine == 'ddp' else 'deepspeed'}",
        "--optim.lr=0.05",
        "--train.max_steps=100",
    ]
    if engine != "ddp":
        overrides.append(f"--dist.zero_stage={engine[-1]}")
    cfg = load_config("debug_cpu", overrides)
    trainer, _ = build_trainer(cfg, Topology.from_env(), torch.device("cpu"), sink=_Null())
    step = trainer.step_fn
    if precision == "fp16":  # the trainer's dynamic loss scale (fp16 autocast needs CUDA)
        old = step.engine.scaler
        step.engine.scaler = LossScaler("fp16", torch.device("cpu"), 2.0**12, group=old.group)
    return step


def _state(step) -> list[tuple[str, torch.Tensor]]:
    """Every value a skipped step must leave alone, as (name, copy)."""
    out = [(f"backbone.{k}", v) for k, v in step.engine.module.state_dict().items()]
    for i, opt in enumerate([*step.engine.optimizers, *step.head_optimizers]):
        inner = getattr(opt, "optimizer", opt)  # DeepSpeed's wrapped torch optimizer
        for j, group in enumerate(inner.param_groups):
            for k, p in enumerate(group["params"]):
                out.append((f"opt{i}.{j}.{k}.param", p.detach()))
                for key, value in inner.state.get(p, {}).items():
                    if torch.is_tensor(value):
                        out.append((f"opt{i}.{j}.{k}.{key}", value))
    head = step.loss_fn
    out += [(f"head.{k}", v) for k, v in head.state_dict().items() if torch.is_tensor(v)]
    out.append(("sampler", head.sampler.state()))
    if isinstance(head.margin, ElasticFace):
        out.append(("elastic_host_step", torch.tensor(head.margin._step)))
    scaler = step.engine.scaler
    out += [("scale", scaler.scale), ("growth", scaler.state_dict()["growth_tracker"])]
    return [(k, v.detach().clone()) for k, v in out]


def _diff(a: list, b: list) -> list[str]:
    assert [k for k, _ in a] == [k for k, _ in b]
    return [k for (k, x), (_, y) in zip(a, b) if not torch.equal(x, y)]


def _plant(step, reason: str, rank: int, images: torch.Tensor, labels: torch.Tensor):
    """The bad batch of rank 0 (the others' is normal) and the hooks to remove after it."""
    handles = []
    if rank != 0:
        return images, labels, handles
    if reason == "labels":
        labels = _refused(labels)
    elif reason == "batchnorm":
        images = images * 3e19  # the unbiased batch variance overflows float32
    elif reason == "backbone":
        p = next(step.engine.module.parameters())
        handles.append(p.register_hook(lambda g: g.index_fill(0, torch.tensor([0]), torch.nan)))
    else:
        opt = step.head_optimizers[0]
        if isinstance(opt, RowSparseOptimizer):
            put = opt.sink.put

            def poisoned(rows, grads, finite):
                grads[0].view(-1)[0] = torch.nan
                put(rows, grads, finite)

            opt.sink.put = poisoned
            handles.append(_Restore(opt.sink, "put"))
        else:
            handles.append(step.loss_fn.weight.register_hook(lambda g: g * torch.nan))
    return images, labels, handles


def _refused(labels: torch.Tensor) -> torch.Tensor:
    labels = labels.clone()
    labels[1] = -1
    return labels


class _Restore:
    def __init__(self, obj, name: str) -> None:
        self.obj, self.name = obj, name

    def remove(self) -> None:
        delattr(self.obj, self.name)


class _Ahead:
    """Submits each step's labels before the step before it runs, as the training loop does.

    The loop pulls step ``t + 1``'s batches before it runs step ``t``, and the head's label
    path draws their sample meanwhile (:mod:`dist_face.heads.sharded.label_path`); ``labels`` are
    the labels of every step in order (the bad one as planted).
    """

    def __init__(self, step, labels: list[torch.Tensor] | None) -> None:
        self.prefetch = step.loss_fn.label_prefetch if labels is not None else None
        self.labels = list(labels or [])
        if self.prefetch is not None:
            self.prefetch.submit(self.labels.pop(0))

    def next(self) -> None:
        """Before a step runs: the next step's labels go ahead."""
        if self.prefetch is not None and self.labels:
            self.prefetch.submit(self.labels.pop(0))


def _case(rank: int, world: int, case: tuple[str, ...], root: str, ahead: bool) -> list[str]:
    reason, precision = case[0], case[1]
    step = _build(case, f"{root}/skip")
    bad = _batch(2, rank)[1]
    bad = _refused(bad) if reason == "labels" and rank == 0 else bad
    seeds = [_batch(s, rank)[1] for s in (0, 1)] + [bad, _batch(3, rank)[1]]
    pull = _Ahead(step, seeds if ahead else None)
    for seed in (0, 1):
        pull.next()
        out = step([_batch(seed, rank)])
        assert float(out["skipped"]) == 0.0
    before = _state(step)
    images, labels, handles = _plant(step, reason, rank, *_batch(2, rank))
    pull.next()
    out = step([(images, labels)])
    for h in handles:
        h.remove()
    errors = []
    if float(out["skipped"]) != 1.0:
        errors.append("not skipped")
    flags = dict(zip(SKIP_REASONS, step._flags.tolist(), strict=True))
    expected = {"labels": "labels", "batchnorm": "batchnorm"}.get(reason, "gradients")
    # DeepSpeed checks the backbone's gradients itself, inside its step (the engine's verdict)
    if flags[expected] != 1.0 and not (reason == "backbone" and case[4] != "ddp"):
        errors.append(f"reason {flags}")
    after = _state(step)
    changed = _diff(before, after)
    if precision == "fp16":  # the fp16 rule: a skipped step halves the scale, restarts growth
        changed = [k for k in changed if k not in ("scale", "growth")]
        assert float(dict(after)["scale"]) == float(dict(before)["scale"]) / 2
        assert int(dict(after)["growth"]) == 0
    errors += [f"changed by the skipped step: {k}" for k in changed]
    pull.next()
    step([_batch(3, rank)])
    resumed = _state(step)
    # a run that never saw the bad batch: its schedulers (and fp16 scale) move as the step's
    ref = _build(case, f"{root}/ref")
    pull = _Ahead(ref, [_batch(s, rank)[1] for s in (0, 1, 3)] if ahead else None)
    for seed in (0, 1):
        pull.next()
        ref([_batch(seed, rank)])
    for sched in ref.schedulers:
        sched.step()
    if precision == "fp16":
        ref.engine.scaler.update(torch.ones(()))
    pull.next()
    ref([_batch(3, rank)])
    errors += [f"differs from the run without it: {k}" for k in _diff(_state(ref), resumed)]
    return errors


def _cases() -> list:
    """Every reason with both update modes by default (precision, margin, engine rotating)."""
    full = [
        c
        for c in itertools.product(REASONS, PRECISIONS, UPDATES, MARGINS, ENGINES)
        if not (c[1] == "fp16" and c[4] != "ddp")  # DeepSpeed's fp16 needs CUDA
    ]
    fast = [
        ("labels", "fp32", "sparse", "arcface", "ddp"),
        ("labels", "bf16", "dense", "adaface", "zero0"),
        ("batchnorm", "fp16", "sparse", "elasticface_arc", "ddp"),
        ("batchnorm", "bf16", "dense", "subcenter_arcface", "zero1"),
        ("backbone", "bf16", "sparse", "arcface", "zero2"),
        ("backbone", "fp16", "dense", "adaface", "ddp"),
        ("head", "fp32", "sparse", "subcenter_arcface", "zero2"),
        ("head", "fp16", "dense", "elasticface_arc", "ddp"),
    ]
    return [c if c in fast else pytest.param(*c, marks=pytest.mark.matrix) for c in full]


@pytest.mark.parametrize(("reason", "precision", "update", "margin", "engine"), _cases())
def test_a_skipped_step_changes_nothing_and_the_next_step_is_as_if_it_never_came(
    reason: str, precision: str, update: str, margin: str, engine: str, tmp_path: Path
) -> None:
    if engine != "ddp":
        pytest.importorskip("deepspeed", reason="deepspeed not installed (extra 'deepspeed')")
    case = (reason, precision, update, margin, engine)
    run = run_distributed(_case, 2, case, str(tmp_path), False, timeout=300)
    for rank, errors in enumerate(run):
        assert not errors, f"rank {rank}: {errors}"


@pytest.mark.parametrize(
    "case",
    [
        ("labels", "fp32", "sparse", "arcface", "ddp"),
        ("batchnorm", "bf16", "dense", "elasticface_arc", "zero1"),
    ],
    ids="-".join,
)
def test_a_skipped_step_redraws_the_samples_prepared_ahead(case: tuple, tmp_path: Path) -> None:
    """The training loop prepares step t+1's labels and sample while step t runs: when step t
    is skipped, the sample drawn ahead came from a stream that must return to before step t,
    so it is drawn again and step t+1 is still the step of a run that never saw the batch."""
    if case[4] != "ddp":
        pytest.importorskip("deepspeed", reason="deepspeed not installed (extra 'deepspeed')")
    run = run_distributed(_case, 2, case, str(tmp_path), True, timeout=300)
    for rank, errors in enumerate(run):
        assert not errors, f"rank {rank}: {errors}"
