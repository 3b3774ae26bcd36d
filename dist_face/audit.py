r"""What one training step asks of a GPU, and how long that takes on an H100/H200, from a CPU.

    python tools/audit_step.py --config NAME --world-size W --batch-size B \\
        --precision bf16|fp16|fp32 --gpu h100|h200 [--json PATH]

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

Each phase is projected onto the GPU's published peaks (:data:`GPUS`) as
``max(Σ FLOPs/peak(dtype), bytes/bandwidth) + ops × launch cost``; communication as the
bytes each collective moves per rank over NVLink (W ≤ 8, one node) or 400 Gb/s per GPU
(across nodes), plus a latency per call. The phases are summed (no overlap assumed; DDP's
all-reduce overlaps backward in practice, so ``step`` is an upper bound in that respect).

Approximations, stated: autocast is modelled by running the backbone in the run's dtype
(convolutions and linear layers in bf16/fp16, as autocast runs them; BatchNorm too, which
autocast keeps in float32: a few percent of the backbone's bytes); float32 FLOPs are projected
at the TF32 peak (cuDNN's default for convolutions, ``head.tf32`` for the head); the optimizer
is torch's ``foreach`` SGD/AdamW (the run uses the fused one: fewer launches).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from dist_face.config import ConfigError, load_config
from dist_face.dist import comm
from dist_face.heads import build_head
from dist_face.heads.row_optim import build_row_optimizer
from dist_face.heads.sampling import in_host_work
from dist_face.models import build_backbone
from dist_face.train.step import screen_refused

PHASES = ("data", "backbone", "head", "comm", "optimizer")


@dataclass(frozen=True)
class GPU:
    """Published dense peaks of one GPU (SXM), the figures the projection uses."""

    name: str
    tflops: dict[str, float]  # by dtype; float32 GEMMs/convolutions run as TF32
    hbm_gbs: float  # memory bandwidth, GB/s
    nvlink_gbs: float  # per GPU and direction, within a node
    network_gbs: float  # per GPU across nodes (400 Gb/s InfiniBand)
    launch_us: float  # per kernel: launch and tail of a small kernel
    collective_us: float  # per collective call: NCCL latency


GPUS = {
    "h100": GPU(
        "NVIDIA H100 SXM",
        {"bfloat16": 989.0, "float16": 989.0, "float32": 494.7, "float64": 66.9},
        3350.0,
        450.0,
        50.0,
        4.0,
        15.0,
    ),
    "h200": GPU(
        "NVIDIA H200 SXM",
        {"bfloat16": 989.0, "float16": 989.0, "float32": 494.7, "float64": 66.9},
        4800.0,
        450.0,
        50.0,
        4.0,
        15.0,
    ),
}
GPUS_PER_NODE = 8

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
            with :func:`~dist_face.heads.sampling.host_work` is then left out).
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
        if formula is not None:
            dtype = str(inputs[0].dtype).removeprefix("torch.")
            self.flops[self.phase][dtype] += formula(*args, **kwargs, out_val=out)
        else:
            self.bytes[self.phase] += self._bytes(name, inputs, outputs)
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

    def all_gather(self, tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
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


def bus_bytes(call: Collective, world: int) -> float:
    """Bytes one rank sends (= receives) for ``call`` with ring algorithms."""
    share = (world - 1) / world
    return call.bytes * share * (2 if call.kind == "all_reduce" else 1)


def project(audit: StepAudit, calls: list[Collective], world: int, gpu: GPU) -> dict[str, float]:
    """Milliseconds per phase on ``gpu``, and their sum ``step``."""
    out = {}
    for phase in PHASES:
        if phase == "comm":
            continue
        compute = sum(n / (gpu.tflops[d] * 1e12) for d, n in audit.flops[phase].items())
        memory = audit.bytes[phase] / (gpu.hbm_gbs * 1e9)
        launches = audit.ops[phase] * gpu.launch_us * 1e-6
        out[phase] = (max(compute, memory) + launches) * 1e3
    link = gpu.nvlink_gbs if world <= GPUS_PER_NODE else gpu.network_gbs
    device_calls = [c for c in calls if not c.on_host]
    moved = sum(bus_bytes(c, world) for c in device_calls) / (link * 1e9)
    out["comm"] = (moved + len(device_calls) * gpu.collective_us * 1e-6) * 1e3
    out["step"] = sum(out[p] for p in PHASES)
    return {k: out[k] for k in (*PHASES, "step")}


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
        The report: ``projected_ms`` per phase and ``step``, ``flops`` (per phase, by dtype),
        ``bytes``, ``ops`` (per phase), ``host_syncs`` (total) and ``host_sync_sites``,
        ``collectives`` (device calls and bytes), ``sampled_fraction``, ``gpu`` and the setup.
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
    device = torch.device("meta")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    gen = torch.Generator().manual_seed(seed)
    sim = SimulatedComm(world_size, lambda n: torch.randint(0, num_classes, (n,), generator=gen))
    audit = StepAudit()
    sim.audit = audit
    with sim.patched(), meta_autocast():
        with torch.device(device):
            backbone = build_backbone(cfg.model).to(dtype)
        head = build_head(
            cfg.head, cfg.model.embedding_size, num_classes, seed=seed, precision=precision
        )
        head = head.to(device)
        head._checked_batch = batch_size  # steady state: the batch size is known
        if cfg.head_update == "sparse":
            row_opt = build_row_optimizer(
                head, cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum
            )
            head.attach_optimizer(row_opt)
        params = [torch.empty_like(p, dtype=torch.float32) for p in backbone.parameters()]
        opt_cls = torch.optim.SGD if cfg.optim.name == "sgd" else torch.optim.AdamW
        kwargs = {"momentum": cfg.optim.momentum} if cfg.optim.name == "sgd" else {}
        optimizer = opt_cls(params, lr=cfg.optim.lr, foreach=True, **kwargs)
        size = cfg.data.image_size if hasattr(cfg.data, "image_size") else 112
        images_u8 = torch.empty((batch_size, 3, size, size), dtype=torch.uint8)
        labels = torch.randint(0, num_classes, (batch_size,), generator=gen)  # the loader's
        flag = torch.zeros(1, device=device)  # the step's refused-label flag
        before = len(sim.calls)
        with audit:
            with audit.in_phase("data"):
                x = images_u8.to(device).float().sub_(127.5).div_(127.5).to(dtype)
            with audit.in_phase("backbone"):
                emb = backbone(x)
            with audit.in_phase("head"):
                e = emb.detach().float().requires_grad_(True)
                loss = head(e, screen_refused(labels, flag))
                loss.backward()
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
    # DDP all-reduces the backbone's float32 gradients once per step (buckets: a few calls)
    grad_bytes = sum(p.numel() * 4 for p in params)
    calls.append(Collective("all_reduce", grad_bytes, False))
    spec = GPUS[gpu]
    return {
        "config": config,
        "world_size": world_size,
        "batch_size": batch_size,
        "precision": precision,
        "gpu": spec.name,
        "projected_ms": project(audit, calls, world_size, spec),
        "flops": {p: dict(audit.flops[p]) for p in PHASES},
        "bytes": {p: audit.bytes[p] for p in PHASES},
        "ops": {p: audit.ops[p] for p in PHASES},
        "host_syncs": sum(audit.syncs.values()),
        "host_sync_sites": dict(audit.syncs),
        "collectives": {
            "device_calls": sum(not c.on_host for c in calls),
            "device_bytes": sum(c.bytes for c in calls if not c.on_host),
            "host_calls": sum(c.on_host for c in calls),
            "host_bytes": sum(c.bytes for c in calls if c.on_host),
        },
        "sampled_fraction": head.sampled_fraction,
        "num_local_classes": head.num_local,
    }


def gemm_share(report: dict[str, Any], phase: str, dtype: str) -> float:
    """Share of ``phase``'s FLOPs that ran with ``dtype`` inputs (1.0 when it has none)."""
    flops = report["flops"][phase]
    total = sum(flops.values())
    return flops.get(dtype, 0) / total if total else 1.0


def _table(reports: list[dict[str, Any]]) -> str:
    head = (
        "| recipe | W | B | precision | r kept | data | backbone | head | comm | optim | step "
        "| head ops / backbone ops | syncs |"
    )
    rows = [head, "|" + "---|" * 13]
    for r in reports:
        ms = r["projected_ms"]
        ratio = r["ops"]["head"] / max(r["ops"]["backbone"], 1)
        rows.append(
            f"| {r['config']} | {r['world_size']} | {r['batch_size']} | {r['precision']} | "
            f"{r['sampled_fraction']:.3f} | "
            + " | ".join(f"{ms[p]:.2f}" for p in (*PHASES, "step"))
            + f" | {ratio:.2f} | {r['host_syncs']} |"
        )
    return "\n".join(rows)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Command line (module doc); ``--table`` also prints docs/performance.md's table row(s)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--world-size", type=_positive, required=True)
    ap.add_argument("--batch-size", type=_positive, required=True)
    ap.add_argument("--precision", choices=("bf16", "fp16", "fp32"), required=True)
    ap.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--table", action="store_true", help="also print a markdown table row")
    ap.add_argument("overrides", nargs="*", help="config overrides, e.g. --head.chunk_size=4096")
    args, rest = ap.parse_known_args(argv)
    overrides = tuple(args.overrides) + tuple(rest)
    try:
        report = audit_step(
            args.config, args.world_size, args.batch_size, args.precision, args.gpu, overrides
        )
    except ConfigError as exc:  # an unknown recipe or a bad override: one line, exit 2
        ap.error(str(exc))
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    if args.table:
        print(_table([report]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
