r"""What one training step asks of a GPU, and a calibrated projection of its time, from a CPU.

    python tools/audit_step.py --config NAME --world-size W --batch-size B \\
        --precision bf16|fp16|fp32 --gpu v100|a100|h100|h200 [--json PATH] [--table]
    python tools/audit_step.py --calibration   # the published anchors against the projection

Runs one steady-state step of a recipe as rank 0 of a W-rank job, on the CPU, without a
process group and without data: the backbone, the embeddings and the head's centers are
``meta`` tensors (shapes and dtypes, no values), so iresnet100 at W = 512 takes seconds. The
rank holds its class slice ``C/W`` and sees the all-gathered batch ``N = W·B``; labels are real
host values, uniform over the classes, handed to the head the way training hands them (the
loaders deliver them on the host and :func:`~dist_face.train.step.screen_refused` passes them
on as they are), so Partial FC samples as it would, with its exact size. Collectives are
replaced by their call and byte counts (:class:`SimulatedComm`).

Per phase (data, backbone, head, comm, optimizer) a dispatch mode (:class:`StepAudit`) records
every aten op that touches the device:

* FLOPs by input dtype, with the formulas of ``torch.utils.flop_counter.FlopCounterMode``;
* bytes read and written by the memory-bound ops (every op without a FLOP formula);
* the op count (≈ kernel launches; views and allocations excluded);
* host syncs (``item``/``bool`` of a device tensor, ``nonzero``, ``unique``, device→host
  copies...), which are counted and answered with a dummy so the step goes on.

Each phase is projected by :mod:`dist_face.projection`: every device op is a kernel timed by
its own roofline at the achieved rates of its class (GEMM/convolution, with its operands'
bytes counted; elementwise; reduction) with a per-kernel floor (launches), calibrated against
published throughputs with named hardware; the kernels and the phases are summed (nothing
overlaps; DDP's all-reduce overlaps backward in practice, so ``step`` is an upper bound in
that respect). Device collectives follow NCCL's ring/tree with a per-step latency, NVLink
within a node and InfiniBand across; the host label path (the labels' gloo all-gather and
Partial FC's sample, timed on this CPU) is reported beside the step it overlaps, with what of
it the step does not hide. Every projection carries a band and the calibration date; nothing
here was measured on a GPU.

Approximations, stated: autocast is modelled by running the backbone in the run's dtype
(convolutions and linear layers in bf16/fp16, as autocast runs them; BatchNorm too, which
autocast keeps in float32: a few percent of the backbone's bytes); float32 FLOPs are projected
at the TF32 peak (cuDNN's default for convolutions, ``head.tf32`` for the head); the optimizer
is torch's ``foreach`` SGD/AdamW (the run uses the fused one: fewer launches).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from dist_face.config import load_config
from dist_face.dist import comm
from dist_face.heads import build_head
from dist_face.heads.sharded.label_path import host_label_path
from dist_face.heads.sharded.row_optim import build_row_optimizer
from dist_face.heads.sharded.sampling import in_host_work
from dist_face.models import build_backbone
from dist_face.projection import (
    CALIBRATED,
    GPU,
    GPUS,
    Kernel,
    by_class_ms,
    collective_ms,
    kernel_ms,
    label_path_ms,
)
from dist_face.train.step import screen_refused

PHASES = ("data", "backbone", "head", "comm", "optimizer")


_FLOPS = FlopCounterMode(display=False).flop_registry  # torch's formulas, by op packet
# ops that launch no kernel: allocations and metadata
_NO_KERNEL = {"empty", "empty_strided", "empty_like", "detach", "lift_fresh", "alias", "set_"}
# indexed ops: their traffic is the index and the values, not the whole indexed tensor
_INDEXED_READS = {"gather", "index_select", "take"}
_INDEXED_WRITES = {
    "scatter",
    "scatter_",
    "scatter_add",
    "scatter_add_",
    "index_copy",
    "index_copy_",
    "index_fill_",
    "index_put",
    "index_put_",
}
# memory-bound ops that reduce (their achieved bandwidth is lower than elementwise ops')
_REDUCTIONS = {
    "sum",
    "mean",
    "amax",
    "amin",
    "max",
    "min",
    "norm",
    "linalg_vector_norm",
    "var",
    "var_mean",
    "std",
    "logsumexp",
    "_softmax",
    "_log_softmax",
    "_softmax_backward_data",
    "_log_softmax_backward_data",
    "native_batch_norm",
    "native_batch_norm_backward",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional",
    "_native_batch_norm_legit_no_training",
    "topk",
    "sort",
    "cumsum",
    "any",
    "all",
    "argmax",
    "_foreach_norm",
    "nll_loss_forward",
    "nll_loss_backward",
}
# ops that make the host wait for a device tensor's value or size
_SYNCS = {
    "_local_scalar_dense",
    "is_nonzero",
    "nonzero",
    "unique",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "masked_select",
    "bincount",
}


class StepAudit(TorchDispatchMode):
    """Counts what each phase asks of the device (``meta`` tensors stand for it).

    Host work (CPU tensors only: the loader's labels, the sampler's draw) is not counted.

    Args:
        device_type: the device type standing for the GPU: ``meta`` (the audit; sync ops are
            answered with a dummy), or ``cpu`` to count a real CPU run (host work declared
            with :func:`~dist_face.heads.sharded.sampling.host_work` is then left out).
    """

    def __init__(self, device_type: str = "meta") -> None:
        super().__init__()
        self.device_type = device_type
        self.phase = "data"
        self.flops: dict[str, Counter[str]] = defaultdict(Counter)
        self.bytes: Counter[str] = Counter()
        self.ops: Counter[str] = Counter()
        self.syncs: Counter[str] = Counter()
        self.op_names: dict[str, Counter[str]] = defaultdict(Counter)
        self.gemm_bytes: Counter[str] = Counter()
        self.kernels: dict[str, list[Kernel]] = defaultdict(list)

    @contextlib.contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        """Attribute what runs inside to ``phase``."""
        before, self.phase = self.phase, phase
        try:
            yield
        finally:
            self.phase = before

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if self.device_type == "cpu" and in_host_work():
            return func(*args, **kwargs)
        device_in = any(self._on_device(t) for t in inputs)
        if name in _SYNCS and device_in:
            self.syncs[f"{self.phase}:{name}"] += 1
            if self.device_type == "meta":
                return _dummy(func, args, kwargs)
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if (
            name in ("_to_copy", "copy_")
            and self.device_type != "cpu"
            and device_in
            and any(t.device.type == "cpu" for t in outputs + inputs[:1])
        ):
            self.syncs[f"{self.phase}:to(cpu)"] += 1  # a device value read by the host
        if not (device_in or any(self._on_device(t) for t in outputs)):
            return out  # host work
        if func.is_view or name in _NO_KERNEL:
            return out
        self.ops[self.phase] += 1
        self.op_names[self.phase][name] += 1
        formula = _flop_formula(func)
        dtype = str(inputs[0].dtype).removeprefix("torch.") if inputs else "float32"
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            moved = self._bytes(name, inputs, outputs)  # operands and result
            self.flops[self.phase][dtype] += flops
            self.gemm_bytes[self.phase] += moved
            self.kernels[self.phase].append(Kernel("gemm", dtype, flops, moved))
        else:
            moved = self._bytes(name, inputs, outputs)
            self.bytes[self.phase] += moved
            kind = "reduction" if name in _REDUCTIONS else "elementwise"
            self.kernels[self.phase].append(Kernel(kind, dtype, 0, moved))
        return out

    def _bytes(self, name: str, inputs: list, outputs: list) -> int:
        """Bytes an op reads and writes; indexed ops touch only the indexed entries."""

        def size(ts: list) -> int:
            return sum(t.numel() * t.element_size() for t in ts if self._on_device(t))

        if name in _INDEXED_READS:  # gather, index_select: the index and the result
            return size(inputs[1:]) + size(outputs)
        if name in _INDEXED_WRITES:  # scatter_, index_copy_: index and values, then written
            return 2 * size(inputs[1:])
        return size(inputs) + size(outputs)

    def _on_device(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t.device.type == self.device_type


def _flop_formula(func: Any) -> Callable[..., int] | None:
    """FlopCounterMode's formula for ``func``, or None.

    In-place ops (``addmm_``, which it lists only out of place) take their twin's.
    """
    packet = func._overloadpacket
    if packet in _FLOPS:
        return _FLOPS[packet]
    name = packet.__name__
    if name.endswith("_"):
        twin = getattr(torch.ops.aten, name[:-1], None)
        return _FLOPS.get(twin)
    return None


def _dummy(func: Any, args: tuple, kwargs: dict) -> Any:
    """A stand-in result for a sync op on a meta tensor (which has no values)."""
    name = func._overloadpacket.__name__
    if name == "_local_scalar_dense":
        dtype = args[0].dtype
        return False if dtype == torch.bool else (0.0 if dtype.is_floating_point else 0)
    if name == "is_nonzero":
        return False
    x = args[0]
    if name == "nonzero":
        return torch.empty((0, x.dim()), dtype=torch.long, device=x.device)
    return x.reshape(-1)[:0]


@dataclass
class Collective:
    """One collective as rank 0 issued it."""

    kind: str  # all_gather, all_reduce, reduce_scatter
    bytes: int  # size of the full (gathered / reduced) tensor
    on_host: bool  # over the control (gloo) group: CPU tensors


class SimulatedComm:
    """Stands in for :mod:`dist_face.dist.comm` as rank 0 of ``world`` ranks.

    Gathers return ``world`` copies of the local tensor (integer host tensors, the labels:
    this rank's labels followed by uniform draws for the other ranks, from ``fill``);
    reductions return their input. Every call is recorded as a :class:`Collective`. The copies
    standing in for a collective's result are attributed to the ``comm`` phase of ``audit``
    (a collective writes its output itself: they are no kernel of the phase that called it).
    """

    def __init__(self, world: int, fill: Callable[[int], torch.Tensor]) -> None:
        self.world, self.fill = world, fill
        self.calls: list[Collective] = []
        self.audit: StepAudit | None = None

    def _stand_in(self) -> contextlib.AbstractContextManager[None]:
        return self.audit.in_phase("comm") if self.audit is not None else contextlib.nullcontext()

    def _record(self, kind: str, t: torch.Tensor) -> None:
        on_host = t.device.type == "cpu"
        self.calls.append(Collective(kind, t.numel() * t.element_size(), on_host))

    def all_gather(
        self, tensor: torch.Tensor, group: Any = None, timed: bool = True
    ) -> torch.Tensor:
        """``comm.all_gather``: ``[W·B, ...]``, recorded."""
        full = self._gathered(tensor)
        self._record("all_gather", full)
        return full

    def _gathered(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.device.type == "cpu" and not tensor.is_floating_point():
            rest = self.fill((self.world - 1) * tensor.shape[0]).to(tensor.dtype)
            return torch.cat([tensor, rest.view(-1, *tensor.shape[1:])])
        with self._stand_in():
            return torch.cat([tensor] * self.world)

    def all_gather_with_grad(self, tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
        """``comm.all_gather_with_grad``: its backward is recorded as a reduce-scatter."""
        sim = self

        class _Gather(torch.autograd.Function):
            @staticmethod
            def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
                with sim._stand_in():
                    full = torch.cat([t] * sim.world)
                sim._record("all_gather", full)
                return full

            @staticmethod
            def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
                sim._record("reduce_scatter", grad)
                with sim._stand_in():
                    return grad[: grad.shape[0] // sim.world].contiguous()

        return _Gather.apply(tensor)

    def all_reduce(self, tensor: torch.Tensor, op: Any = None, group: Any = None) -> torch.Tensor:
        """``comm.all_reduce``: the input, recorded."""
        self._record("all_reduce", tensor)
        return tensor

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        """Replace the collectives of :mod:`dist_face.dist.comm` while inside."""
        with contextlib.ExitStack() as stack:
            for name, value in {
                "is_active": lambda group=None: True,
                "get_rank": lambda group=None: 0,
                "get_world_size": lambda group=None: self.world,
                "control_group": lambda group=None: group,
                "all_gather": self.all_gather,
                "all_gather_with_grad": self.all_gather_with_grad,
                "all_reduce": self.all_reduce,
            }.items():
                stack.enter_context(mock.patch.object(comm, name, value))
            yield


@contextlib.contextmanager
def meta_autocast() -> Iterator[None]:
    """``torch.autocast(device_type="meta")`` as a no-op (autocast has no meta backend).

    Code that turns autocast off for its own device (the backbone's embedding head, the
    fused loss) then runs unchanged; the backbone's dtype stands for autocast's (module doc).
    """
    real = torch.autocast

    def autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        if device_type == "meta":
            return contextlib.nullcontext()
        return real(device_type, *args, **kwargs)

    with mock.patch.object(torch, "autocast", autocast):
        yield


DDP_BUCKET_BYTES = 25 * 2**20
"""DDP's gradient bucket (``bucket_cap_mb`` = 25): one all-reduce per bucket."""


def project(
    audit: StepAudit,
    calls: list[Collective],
    world: int,
    gpu: GPU,
    labels: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Milliseconds per phase on ``gpu``, their sum ``step``, the band and the label path.

    Args:
        audit: the step's counts.
        calls: the collectives rank 0 issued (device ones timed by
            :func:`~dist_face.projection.collective_ms`; host ones are the label path).
        world: ranks W.
        gpu: the profile.
        labels: :func:`~dist_face.projection.label_path_ms` of the step, if it has one.

    Returns:
        ``ms``: per phase and ``step``; ``band``: ``step`` low and high (± ``gpu.band``);
        ``by_class``: per phase, milliseconds per op class; ``labels``: the label path with
        ``exposed_ms``, what of it exceeds the step it runs beside.
    """
    ms: dict[str, float] = {}
    by_class = {}
    for phase in PHASES:
        if phase == "comm":
            continue
        ms[phase] = sum(kernel_ms(k, gpu) for k in audit.kernels[phase])
        by_class[phase] = by_class_ms(audit.kernels[phase], gpu)
    ms["comm"] = sum(collective_ms(c.kind, c.bytes, world, gpu) for c in calls if not c.on_host)
    ms["step"] = sum(ms[p] for p in PHASES)
    out: dict[str, Any] = {
        "ms": {k: ms[k] for k in (*PHASES, "step")},
        "band": [ms["step"] * (1 - gpu.band), ms["step"] * (1 + gpu.band)],
        "by_class": by_class,
    }
    if labels is not None:
        out["labels"] = {**labels, "exposed_ms": max(0.0, labels["total_ms"] - ms["step"])}
    return out


@dataclass
class Counted:
    """One steady-state step counted on meta tensors (:func:`count_step`)."""

    audit: StepAudit
    calls: list[Collective]
    sample_ms: float
    sampled_fraction: float
    num_local: int


def count_step(
    backbone: torch.nn.Module,
    batch_size: int,
    image_size: int,
    precision: str,
    world_size: int,
    optim: tuple[str, float, float, float],
    head: torch.nn.Module | None = None,
    num_classes: int = 0,
    seed: int = 0,
    row_opt: torch.optim.Optimizer | None = None,
) -> Counted:
    """Count one steady-state step: data, backbone, head, optimizer (module doc).

    Args:
        backbone: built on ``meta`` in the run's dtype.
        batch_size: B per rank.
        image_size: square input side, pixels.
        precision: ``bf16``/``fp16``/``fp32``.
        world_size: ranks W (the head's collectives and DDP's all-reduce are simulated).
        optim: ``(name, lr, weight_decay, momentum)`` of the backbone's optimizer.
        head: the class-center head on ``meta`` (None: the backbone's output is the loss's
            input, as an ImageNet classifier's logits).
        num_classes: C, for the labels.
        seed: labels and the sample.
        row_opt: the head's row-sparse optimizer, whose sink receives the kept rows'
            gradients in the head's backward; it applies them after the skip decision.
    """
    device = torch.device("meta")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    gen = torch.Generator().manual_seed(seed)
    classes = max(num_classes, 1)
    sim = SimulatedComm(world_size, lambda n: torch.randint(0, classes, (n,), generator=gen))
    audit = StepAudit()
    sim.audit = audit
    with sim.patched(), meta_autocast():
        name, lr, weight_decay, momentum = optim
        params = [torch.empty_like(p, dtype=torch.float32) for p in backbone.parameters()]
        opt_cls = torch.optim.SGD if name == "sgd" else torch.optim.AdamW
        kwargs = {"momentum": momentum} if name == "sgd" else {}
        optimizer = opt_cls(params, lr=lr, weight_decay=weight_decay, foreach=True, **kwargs)
        images_u8 = torch.empty((batch_size, 3, image_size, image_size), dtype=torch.uint8)
        labels = torch.randint(0, classes, (batch_size,), generator=gen)  # the loader's
        flag = torch.zeros(1, device=device)  # the step's refused-label flag
        before = len(sim.calls)
        with audit:
            with audit.in_phase("data"):
                x = images_u8.to(device).float().sub_(127.5).div_(127.5).to(dtype)
            with audit.in_phase("backbone"):
                emb = backbone(x)
            with audit.in_phase("head"):
                e = emb.detach().float().requires_grad_(True)
                if head is not None:
                    loss = head(e, screen_refused(labels, flag))
                else:  # an ImageNet classifier: softmax cross-entropy of its logits
                    target = labels.to(device)
                    loss = torch.nn.functional.cross_entropy(e, target)
                loss.backward()
                if row_opt is not None:  # the kept rows, applied after the skip decision
                    row_opt.step()
            with audit.in_phase("backbone"):
                emb.backward(e.grad.to(emb.dtype))
        # float32 gradients, as autocast leaves them (not counted: no such cast in a run)
        for p, q in zip(params, backbone.parameters(), strict=True):
            p.grad = torch.empty_like(p) if q.grad is None else q.grad.float()
        optimizer.step()  # the first step creates the momentum buffers: steady state after it
        with audit, audit.in_phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        calls = sim.calls[before:]
        sample_ms = _label_path_ms(head, labels) if head is not None else 0.0
    # DDP all-reduces the backbone's float32 gradients once per step, bucket by bucket
    grad_bytes = sum(p.numel() * 4 for p in params)
    if world_size > 1:
        full, rest = divmod(grad_bytes, DDP_BUCKET_BYTES)
        calls += [Collective("all_reduce", DDP_BUCKET_BYTES, False)] * full
        if rest:
            calls.append(Collective("all_reduce", rest, False))
    fraction = getattr(head, "sampled_fraction", 1.0)
    return Counted(audit, calls, sample_ms, fraction, getattr(head, "num_local", 0))


def _label_path_ms(head: torch.nn.Module, labels: torch.Tensor, repeats: int = 5) -> float:
    """The host's share of the label path on this CPU (check and sample; gather simulated).

    Timed outside the audit's dispatch mode (which would time itself), on one thread, after
    one warm-up call, best of ``repeats``; the simulated gather's stand-in (random labels for
    the other ranks) is inside the time, a slight overstatement.
    """
    if not hasattr(head, "sampler"):
        return 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the label path's worker runs it; robust on a busy machine
    try:
        host_label_path(head, labels, None)  # first calls of the ops: allocations, set-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            host_label_path(head, labels, None)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return min(times) * 1e3


def audit_step(
    config: str,
    world_size: int,
    batch_size: int,
    precision: str,
    gpu: str,
    overrides: tuple[str, ...] = (),
    seed: int = 0,
) -> dict[str, Any]:
    # the phases are counted on meta tensors; only the labels and the sample are real
    """Audit one steady-state step of ``config`` as rank 0 of ``world_size`` (module doc).

    Returns:
        The report: ``projected_ms`` per phase and ``step`` (and ``projected_band_ms``,
        ``images_per_s`` per GPU with its band, ``calibrated``: the date of the efficiencies),
        ``by_class`` (per phase, ms per op class), ``label_path`` (the host's gather and
        sample, and what of it the step does not hide), ``flops`` (per phase, by dtype),
        ``bytes`` (memory-bound ops) and ``gemm_bytes``, ``ops`` (per phase), ``host_syncs``
        (total) and ``host_sync_sites``, ``collectives`` (device and host calls and bytes),
        ``sampled_fraction``, ``gpu`` and the setup.
    """
    cfg = load_config(
        config,
        [
            *overrides,
            f"--data.batch_size={batch_size}",
            f"--train.precision={precision}",
        ],
    )
    num_classes = cfg.data.num_classes
    if num_classes == 0:
        raise ValueError(f"{config}: data.num_classes is 0 (read from the data); pass one")
    if num_classes < world_size:
        raise ValueError(f"{config}: {num_classes} classes cannot be split over {world_size}")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    with SimulatedComm(world_size, lambda n: torch.zeros(n)).patched():
        with torch.device("meta"):
            backbone = build_backbone(cfg.model).to(dtype)
        head = build_head(
            cfg.head, cfg.model.embedding_size, num_classes, seed=seed, precision=precision
        )
        head = head.to("meta")
        head._checked_batch = batch_size  # steady state: the batch size is known
        row_opt = None
        if cfg.head_update == "sparse":
            row_opt = build_row_optimizer(
                head, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum
            )
            head.hand_rows_to(row_opt.sink)
    optim = (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum)
    size = cfg.data.image_size if hasattr(cfg.data, "image_size") else 112
    counted = count_step(
        backbone, batch_size, size, precision, world_size, optim, head, num_classes, seed, row_opt
    )
    return report(counted, config, world_size, batch_size, precision, GPUS[gpu])


def report(
    counted: Counted, config: str, world_size: int, batch_size: int, precision: str, spec: GPU
) -> dict[str, Any]:
    """The audit's report of a counted step projected onto ``spec`` (see :func:`audit_step`)."""
    audit, calls = counted.audit, counted.calls
    labels = None
    if any(c.on_host for c in calls) or counted.num_local:
        labels = label_path_ms(world_size, batch_size, counted.sample_ms)
    proj = project(audit, calls, world_size, spec, labels)
    step = proj["ms"]["step"]
    low, high = proj["band"]
    return {
        "config": config,
        "world_size": world_size,
        "batch_size": batch_size,
        "precision": precision,
        "gpu": spec.name,
        "calibrated": CALIBRATED,
        "basis": spec.basis,
        "projected_ms": proj["ms"],
        "projected_band_ms": proj["band"],
        "images_per_s": batch_size / step * 1e3,
        "images_per_s_band": [batch_size / high * 1e3, batch_size / low * 1e3],
        "by_class": proj["by_class"],
        "label_path": proj.get("labels"),
        "flops": {p: dict(audit.flops[p]) for p in PHASES},
        "bytes": {p: audit.bytes[p] for p in PHASES},
        "gemm_bytes": {p: audit.gemm_bytes[p] for p in PHASES},
        "ops": {p: audit.ops[p] for p in PHASES},
        "host_syncs": sum(audit.syncs.values()),
        "host_sync_sites": dict(audit.syncs),
        "collectives": {
            "device_calls": sum(not c.on_host for c in calls),
            "device_bytes": sum(c.bytes for c in calls if not c.on_host),
            "host_calls": sum(c.on_host for c in calls),
            "host_bytes": sum(c.bytes for c in calls if c.on_host),
        },
        "sampled_fraction": counted.sampled_fraction,
        "num_local_classes": counted.num_local,
    }


def gemm_share(report: dict[str, Any], phase: str, dtype: str) -> float:
    """Share of ``phase``'s FLOPs that ran with ``dtype`` inputs (1.0 when it has none)."""
    flops = report["flops"][phase]
    total = sum(flops.values())
    return flops.get(dtype, 0) / total if total else 1.0
