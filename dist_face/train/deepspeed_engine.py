"""The backbone inside a DeepSpeed engine (ZeRO 0-2, DeepSpeed's fp16/bf16), the head outside it.

DeepSpeed owns the backbone's weights, their gradient reduction (averaged over the data-parallel
ranks, as DDP does, so the head's gradient contract holds unchanged), its loss scale and its
optimizer step. The sharded class centers are rank-local and never enter the engine: their
gradients are not reduced, and they keep their own optimizer, stepped or skipped together with
the backbone's.

A skipped step is honoured by the backbone too: DeepSpeed skips its update only for its own
fp16 overflow, so the adapter withholds the wrapped torch optimizer's update (:class:`_Withhold`)
when the step's skip flag is set or the backbone's (reduced, unscaled) gradients hold inf/NaN.
Every rank then leaves its weights, its optimizer state and the ZeRO partitions as they were:
the fp32 masters are not stepped, so the low-precision copies DeepSpeed writes back from them
are the same bits.

Checkpoints hold the backbone in the engine-independent layout the DDP path writes: full fp32
weights by name and a ``torch.optim`` state dict. ZeRO partitions are gathered on save and
re-partitioned on load, so a run resumes on any number of ranks, on either engine.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import math
import os
import re
from typing import Any

import torch
from torch import nn
from torch.distributed import ReduceOp

from dist_face.config import ConfigError, RunConfig
from dist_face.dist import all_reduce
from dist_face.train.precision import LossScaler, check_precision

logger = logging.getLogger(__name__)

_HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}

SUPPORTED_DEEPSPEED = ((0, 19), (0, 20))
"""``[lowest, first unsupported)`` (major, minor) of DeepSpeed. The adapter reads ZeRO's
internals (``_hp_mapping``, ``single_partition_of_fp32_groups``, ``cur_scale``), which change
between minor releases; the bound in pyproject.toml's ``deepspeed`` extra is the same."""


def check_deepspeed_version(installed: str | None = None) -> None:
    """Refuse, before anything is built, a DeepSpeed outside :data:`SUPPORTED_DEEPSPEED`.

    Args:
        installed: the version string to check (default: the installed distribution's).

    Raises:
        ConfigError: deepspeed is missing or its version is outside the range; the message
            names ``dist.engine``, the version found and the range.
    """
    lo, hi = SUPPORTED_DEEPSPEED
    wanted = f">={lo[0]}.{lo[1]},<{hi[0]}.{hi[1]}"
    if installed is None:
        try:
            installed = importlib.metadata.version("deepspeed")
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(
                f"dist.engine=deepspeed: deepspeed is not installed; "
                f"pip install 'deepspeed{wanted}' (or 'dist_face[deepspeed]')"
            ) from None
    found = re.match(r"(\d+)\.(\d+)", installed)
    if found is None or not lo <= (int(found[1]), int(found[2])) < hi:
        raise ConfigError(
            f"dist.engine=deepspeed: deepspeed {installed} is installed, this engine supports "
            f"deepspeed{wanted} (it uses ZeRO internals that change between releases)"
        )


def deepspeed_config(cfg: RunConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config of a run: batch, accumulation, ZeRO stage, precision, clipping."""
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "train_batch_size": cfg.data.batch_size * cfg.train.grad_accum * world_size,
        "zero_optimization": {"stage": cfg.dist.zero_stage},
        # torch's SGD and AdamW are the optimizers this project uses with every ZeRO stage
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": cfg.train.clip_grad_norm,
        "steps_per_print": 2**62,  # the log hook reports; keep DeepSpeed's own console quiet
        "wall_clock_breakdown": False,
    }
    if cfg.train.precision == "fp16":
        ds["fp16"] = {
            "enabled": True,
            "initial_scale_power": int(math.log2(cfg.train.loss_scale_init)),
            "loss_scale_window": cfg.train.loss_scale_growth_interval,
        }
    elif cfg.train.precision == "bf16":
        ds["bf16"] = {"enabled": True}
        # BatchNorm statistics in the parameters' dtype: CPU kernels refuse mixed dtypes
        ds["data_types"] = {"buffer_dtype": "bf16"}
    return ds


def initialize(
    backbone: nn.Module, optimizer: torch.optim.Optimizer, cfg: RunConfig, world_size: int
) -> Any:
    """Wrap ``backbone`` and its ``optimizer`` in a DeepSpeed engine on the current process group.

    Returns:
        The ``deepspeed.DeepSpeedEngine``; call it like the backbone.

    Raises:
        ConfigError: fp16 on a backbone outside CUDA (DeepSpeed refuses it on the CPU), or a
            DeepSpeed version outside :data:`SUPPORTED_DEEPSPEED`.
    """
    check_precision(cfg.train.precision, next(backbone.parameters()).device)
    check_deepspeed_version()
    try:
        import deepspeed
    except ImportError as exc:
        raise ImportError(
            "dist.engine=deepspeed needs the deepspeed package: pip install 'dist_face[deepspeed]'"
        ) from exc
    if not torch.distributed.is_initialized():
        # one process: DeepSpeed still wants a process group; a private store needs no port
        torch.distributed.init_process_group(
            "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
        )
        os.environ.setdefault("LOCAL_RANK", "0")  # read by DeepSpeed's device selection
    order = [list(group["params"]) for group in optimizer.param_groups]
    engine, _, _, _ = deepspeed.initialize(
        model=backbone,
        optimizer=optimizer,
        config=deepspeed_config(cfg, world_size),
        dist_init_required=False,  # dist_face.dist set up the process group already
    )
    engine.dist_face_param_order = order  # the torch.optim state-dict order, for checkpoints
    logger.info(
        "backbone in a DeepSpeed engine: ZeRO stage %d, %s, optimizer %s",
        cfg.dist.zero_stage,
        cfg.train.precision,
        type(engine.optimizer).__name__,
    )
    return engine


class DeepSpeedEngine:
    """The :class:`~dist_face.train.engine.Engine` of a backbone inside a DeepSpeed engine.

    Args:
        engine: from :func:`initialize`.
    """

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.module = engine.module
        self.optimizers = [engine.optimizer]  # the backbone's schedulers act on this one
        device = next(engine.module.parameters()).device
        self._withhold = _Withhold(getattr(engine.optimizer, "optimizer", engine.optimizer))
        self.dtype = next(engine.module.parameters()).dtype
        # unit scale: the engine scales the loss; backward() copies its scale for the head
        self.scaler = LossScaler("fp32", device)
        self._ones = torch.ones((), device=device)
        self._norm = torch.zeros((), device=device)  # filled every step: no allocation

    def micro_batch(self, last: bool) -> contextlib.AbstractContextManager:
        """Nothing to enter: the engine counts micro-batches in :meth:`backward`."""
        return contextlib.nullcontext()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone forward in the engine's parameter dtype."""
        return self.engine(images.to(self.dtype))

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """The engine scales the loss (fp16), back-propagates and reduces the backbone's share."""
        # head gradients carry the engine's loss scale (fp16) like the backbone's: the step
        # divides it out of them with this scaler's scale
        self.scaler.scale.fill_(loss_scale(self.engine))
        self.engine.backward(loss, scale_wrt_gas=False)  # the step divides by micro-batches
        if not last:
            self.engine.step()  # not at the accumulation boundary: counts the micro-batch only

    def checked_params(self) -> list[nn.Parameter]:
        """None: the engine checks (and clips) the backbone's gradients itself."""
        return []

    def step(self, skip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step the engine; its update is withheld on ``skip`` or non-finite gradients.

        The engine's own overflow verdict (fp16) and the backbone's gradient check join
        ``skip``: the head, BatchNorm and the rest of the step skip with the backbone.
        """
        self._withhold.arm(skip)
        try:
            self.engine.step()
        finally:
            self._withhold.disarm()
        skip = self._withhold.verdict
        if not self.engine.was_step_applied():  # fp16 overflow in the backbone: skip the head
            skip = self._ones
        norm = self.engine.get_global_grad_norm()  # a float, or a device tensor
        if torch.is_tensor(norm):
            self._norm.copy_(norm)
        else:
            self._norm.fill_(0.0 if norm is None else norm)
        return skip, self._norm

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """See :func:`backbone_state`."""
        return backbone_state(self.engine)

    def load_state(self, weights: dict[str, torch.Tensor], optim_state: dict[str, Any]) -> None:
        """See :func:`load_backbone_state`."""
        load_backbone_state(self.engine, weights, optim_state)


class _Withhold:
    """Wraps the torch optimizer inside a DeepSpeed engine: its update waits for the verdict.

    DeepSpeed (ZeRO 0-2, fp32/bf16/fp16) calls the wrapped optimizer's ``step`` once per
    accumulation boundary on every rank, after reducing, unscaling and clipping the gradients
    into the fp32 masters (or skipping the call on its own fp16 overflow, on every rank). There
    the masters' gradients are checked for inf/NaN, the result is joined with the step's skip
    flag over all ranks (the ZeRO partitions differ per rank) and the update runs only when
    neither is set. A withheld update leaves the masters, the optimizer state and, since
    DeepSpeed copies the masters back into the module's parameters, the weights unchanged.

    Args:
        inner: the torch optimizer DeepSpeed wraps (the engine's own under ZeRO 0 fp32).
    """

    def __init__(self, inner: torch.optim.Optimizer) -> None:
        self.inner = inner
        self._update = inner.step  # the scheduler's wrapper of it, when one is attached
        self._skip: torch.Tensor | None = None
        self.verdict = torch.zeros(())
        """The last step's all-ranks flag (0-dim float, 1.0 = skipped)."""
        inner.step = self._step  # an instance attribute: the class's step is untouched

    def arm(self, skip: torch.Tensor) -> None:
        """The step's decision for the coming ``engine.step()``."""
        self._skip = skip
        self.verdict = skip

    def disarm(self) -> None:
        """After ``engine.step()``: direct calls (state set-up on load) update unconditionally."""
        self._skip = None

    def _step(self, *args: Any, **kwargs: Any) -> Any:
        if self._skip is None:  # not inside the engine's step: no decision to wait for
            return self._update(*args, **kwargs)
        grads = [p.grad for g in self.inner.param_groups for p in g["params"] if p.grad is not None]
        flag = self._skip.detach().float().clone().reshape(())
        if grads:
            bad = torch.stack([~torch.isfinite(g).all() for g in grads]).any()
            flag = torch.maximum(flag, bad.to(flag.device, flag.dtype))
        all_reduce(flag, ReduceOp.MAX, None)
        self.verdict = flag
        if bool(flag):  # DeepSpeed reads its state on the host here as well
            return None
        return self._update(*args, **kwargs)


def loss_scale(engine: Any) -> float:
    """The engine's current loss scale (1 without fp16)."""
    if not engine.fp16_enabled():
        return 1.0
    return float(getattr(engine.optimizer, "cur_scale", 1.0))


# ---------------------------------------------------------------------------------------------
# checkpoints: the DDP layout from and to an engine
# ---------------------------------------------------------------------------------------------
def backbone_state(engine: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full fp32 weights by name and a ``torch.optim`` state dict of the engine's backbone.

    Collective under ZeRO 1-2 (the partitions are all-gathered): call on every rank.

    Returns:
        ``(weights, optimizer_state)`` as ``module.state_dict()`` and ``optimizer.state_dict()``
        of the same backbone under DDP would give them.
    """
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    module, opt = engine.module, engine.optimizer
    _relink_optimizer_state(opt)
    weights = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    masters = _masters(engine)
    names = {id(p): n for n, p in module.named_parameters()}
    order = engine.dist_face_param_order
    groups, state, index = [], {}, 0
    base = getattr(opt, "optimizer", opt)  # the wrapped torch optimizer
    for group, params in zip(base.param_groups, order):
        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": []})
        for p in params:
            groups[-1]["params"].append(index)
            if hasattr(p, "_hp_mapping"):  # ZeRO 1-2: gather this parameter's fragments
                weights[names[id(p)]] = safe_get_full_fp32_param(p).float().cpu()
                keys = _state_keys(base)
                entry = {k: safe_get_full_optimizer_state(p, k).cpu() for k in keys}
                entry.update(_scalar_state(base))
            else:  # ZeRO 0: whole fp32 masters (fp16/bf16) or the parameters themselves
                master = masters.get(id(p), p)
                weights[names[id(p)]] = master.detach().float().cpu()
                entry = {k: _cpu(v) for k, v in base.state.get(master, {}).items()}
            if entry:
                state[index] = entry
            index += 1
    return weights, {"state": state, "param_groups": groups}


def load_backbone_state(
    engine: Any, weights: dict[str, torch.Tensor], optimizer_state: dict[str, Any]
) -> None:
    """Load what :func:`backbone_state` (or the DDP path) saved into ``engine``, on any world size.

    Collective under ZeRO 1-2: call on every rank.
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    module, opt = engine.module, engine.optimizer
    module.load_state_dict(weights)  # casts to the engine's dtype
    _ensure_optimizer_state(opt)
    masters = _masters(engine)
    names = {id(p): n for n, p in module.named_parameters()}
    base = getattr(opt, "optimizer", opt)
    saved = optimizer_state["state"]
    flat = [p for params in engine.dist_face_param_order for p in params]
    for group, saved_group in zip(base.param_groups, optimizer_state["param_groups"]):
        for k, v in saved_group.items():  # lr, momentum, ... (the scheduler re-sets lr)
            if k != "params":
                group[k] = v
    for index, p in enumerate(flat):
        full = weights[names[id(p)]]
        entry = saved.get(index, saved.get(str(index), {}))
        if hasattr(p, "_hp_mapping"):
            safe_set_full_fp32_param(p, full.to(p.device))
            for key, value in entry.items():
                if value.ndim == 0:  # AdamW's step: one per flat partition in ZeRO
                    _set_scalar_state(base, key, value)
                else:
                    safe_set_full_optimizer_state(p, value.to(p.device), key)
        else:
            master = masters.get(id(p), p)
            with torch.no_grad():
                master.copy_(full)
            base.state[master] = {k: _on(v, master.device) for k, v in entry.items()}


def _relink_optimizer_state(opt: Any) -> None:
    """Point every ZeRO parameter at its optimizer-state fragments.

    DeepSpeed (0.19) links them once, right after stepping the first parameter group, so the
    states of the other groups (here: the parameters without weight decay), created lazily by
    torch's optimizers in the same step, stay unlinked. Linking again is idempotent.
    """
    if hasattr(opt, "_lazy_init_hp_params_optimizer_state"):
        opt._hp_optimizer_states_linked = False
        opt._lazy_init_hp_params_optimizer_state()


def _ensure_optimizer_state(opt: Any) -> None:
    """Create the base optimizer's (lazy) state on a fresh ZeRO engine so it can be set.

    A zero-gradient, zero-learning-rate step of the wrapped torch optimizer allocates the
    momentum (or moment) buffers at zero without changing any weight; then they are linked.
    """
    if not hasattr(opt, "single_partition_of_fp32_groups") or any(opt.optimizer.state.values()):
        return
    base = opt.optimizer
    saved = [(g["lr"], g.get("weight_decay", 0.0)) for g in base.param_groups]
    for group, flat in zip(base.param_groups, opt.single_partition_of_fp32_groups):
        group["lr"], group["weight_decay"] = 0.0, 0.0
        flat.grad = torch.zeros_like(flat)
    base.step()
    for group, flat, (lr, wd) in zip(base.param_groups, opt.single_partition_of_fp32_groups, saved):
        group["lr"], group["weight_decay"] = lr, wd
        flat.grad = None
    _relink_optimizer_state(opt)


def _masters(engine: Any) -> dict[int, torch.Tensor]:
    """ZeRO 0 in fp16/bf16: each parameter's fp32 master copy (by parameter id)."""
    opt = engine.optimizer
    low = getattr(opt, "fp16_groups", None)
    high = getattr(opt, "fp32_groups", None)
    if low is None or high is None:
        return {}
    return {id(p): m for lows, highs in zip(low, high) for p, m in zip(lows, highs)}


def _state_keys(base: torch.optim.Optimizer) -> list[str]:
    """Per-element state keys of a ZeRO base optimizer (momentum_buffer, exp_avg, ...)."""
    for entry in base.state.values():
        return [k for k, v in entry.items() if torch.is_tensor(v) and v.ndim > 0]
    return []


def _scalar_state(base: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    for entry in base.state.values():
        return {k: _cpu(v) for k, v in entry.items() if torch.is_tensor(v) and v.ndim == 0}
    return {}


def _set_scalar_state(base: torch.optim.Optimizer, key: str, value: torch.Tensor) -> None:
    for entry in base.state.values():
        entry[key] = value.to(entry[key].device) if key in entry else value


def _cpu(v: Any) -> Any:
    return v.detach().cpu() if torch.is_tensor(v) else v


def _on(v: Any, device: torch.device) -> Any:
    return v.to(device) if torch.is_tensor(v) and v.ndim > 0 else v
