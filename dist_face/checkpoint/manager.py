"""Save and restore a whole training state; the head may come back on another world size.

Layout of one checkpoint, ``<run_dir>/checkpoints/step_<8 digits>/``::

    state.pt                   rank 0: step, epoch, offsets, config, backbone + its optimizer,
                               schedulers, loss scaler (everything replicated)
    rank-<r>.pt                each rank: its RNG states and the head's non-sharded state
    head-<r>-of-<W>.pt         each rank: its class range, its class-center rows and the rows of
                               their optimizer state (see sharded.py)
    manifest.json              rank 0, last: size and SHA-256 of every file above, the head
                               files' class ranges (see manifest.py)

Every rank writes into ``step_<N>.tmp/`` with fsync and hashes its files back from disk; only
when all ranks report success does rank 0 write the manifest and rename the directory to
``step_<N>`` (an atomic rename). A crash or a full disk mid-save therefore leaves the previous
checkpoints intact and at most a ``.tmp`` directory, which the next save removes. The last
``keep`` complete checkpoints are kept; the one just written, whose digests were taken from
the disk, is always among them, so rotation never deletes the newest verified checkpoint.
What is read back on resume is checked against the manifest first (resume.py).
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dist_face.checkpoint.atomic import atomic_torch_save, fsync_dir
from dist_face.checkpoint.manifest import (
    MANIFEST,
    CheckpointCorrupt,
    file_digest,
    read_manifest,
    write_manifest,
)
from dist_face.checkpoint.sharded import load_rows, shard_file, shard_ranges, total_classes
from dist_face.dist import ParallelContext, Topology, all_gather_object

logger = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or does not fit the model being restored."""


def checkpoint_root(run_dir: Path) -> Path:
    """Directory holding a run's checkpoints."""
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint directories of a run, oldest first, verified or not.

    Every ``step_<N>`` directory was renamed into place after all of its files were written;
    whether they are still intact is :func:`latest_checkpoint`'s question.
    """
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if _STEP_DIR.match(p.name) and ((p / MANIFEST).exists() or (p / "state.pt").exists())
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run whose every file matches its manifest, if any.

    Each newer one that does not verify is logged (one line naming the file and why) and
    passed over. Reads every file of each candidate: for a whole job's resume, where each
    rank checks only what it reads, see :func:`dist_face.checkpoint.resume.select_checkpoint`.
    """
    for path in reversed(list_checkpoints(run_dir)):
        try:
            read_manifest(path).verify()
        except CheckpointCorrupt as exc:
            logger.warning("checkpoint %s does not verify, passed over: %s", path.name, exc)
            continue
        return path
    return None


def _param_index(optimizer: torch.optim.Optimizer, param: nn.Parameter, name: str) -> int:
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        if p is param:
            return i
    raise CheckpointError(f"the head optimizer does not hold the head's {name!r}")


def row_parameters(head: nn.Module) -> dict[str, nn.Parameter]:
    """The head's parameters sharded by class (``weight``, and a class bias where it has one).

    A head lists them with ``row_parameters()``; without it, ``weight`` alone.
    """
    named = getattr(head, "row_parameters", None)
    return dict(named()) if named is not None else {"weight": head.weight}


def _optim_key(param: str, name: str) -> str:
    """Row key of a row parameter's optimizer tensor (``optim/<name>`` for the weight)."""
    return f"optim/{name}" if param == "weight" else f"optim/{param}/{name}"


def split_head(
    head: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate the head's row-sharded tensors from the rest.

    Returns:
        ``(rows, other)``: ``rows`` maps each row parameter (``weight``, a class ``bias``) and
        its optimizer tensors (``optim/<name>``, ``optim/bias/<name>``) to ``[num_local, ...]``
        tensors; ``other`` holds the head's remaining state and the optimizer's other entries.
    """
    opt_state = optimizer.state_dict()
    rows: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    indexes: dict[str, int] = {}
    for pname, param in row_parameters(head).items():
        idx = indexes[pname] = _param_index(optimizer, param, pname)
        rows[pname] = param.detach()
        scalars[pname] = {}
        for name, value in opt_state["state"].get(idx, {}).items():
            if torch.is_tensor(value) and value.ndim > 0 and value.shape[0] == param.shape[0]:
                rows[_optim_key(pname, name)] = value
            else:
                scalars[pname][name] = value
    taken = set(indexes.values())
    other_state = {k: v for k, v in opt_state["state"].items() if k not in taken}
    head_state = {k: v for k, v in head.state_dict().items() if k not in indexes}
    other = {
        "head": head_state,
        "optim_state": other_state,
        "optim_scalars": scalars["weight"],
        "row_scalars": scalars,
        "row_indexes": indexes,
        "param_groups": opt_state["param_groups"],
        "weight_index": indexes["weight"],
    }
    return rows, other


def save_checkpoint(
    run_dir: Path,
    step: int,
    topology: Topology,
    *,
    replicated: dict[str, Any],
    head: nn.Module,
    head_optimizer: torch.optim.Optimizer,
    class_range: tuple[int, int],
    num_classes: int,
    keep: int,
    extra_rows: dict[str, torch.Tensor] | None = None,
    export: Callable[[], object] | None = None,
    parallel: ParallelContext | None = None,
) -> Path | None:
    """Write a checkpoint collectively (every rank calls this) and prune old ones.

    Args:
        run_dir: the run directory (shared by all ranks).
        step: optimizer steps done.
        topology: this rank's position.
        replicated: state identical on all ranks; only rank 0's copy is written.
        head: the sharded head (``.weight`` is this rank's ``[num_local, D]`` slice).
        head_optimizer: the optimizer holding the head's parameters.
        class_range: this rank's ``[start, end)``.
        num_classes: C.
        keep: complete checkpoints to keep.
        extra_rows: more ``[num_local, ...]`` tensors sharded by ``class_range`` (the centers
            of a center loss), re-split like the head's rows on load (:func:`load_rows`).
        export: run on rank 0 once every rank's files are in place (writing ``model.pt``); when
            it fails the save counts as failed, though the checkpoint stays complete.
        parallel: the run's groups; the success flag and the barriers go over its control
            group, which serves CPU tensors under NCCL too (None: built from the default
            group).

    Returns:
        The checkpoint directory, or None when a rank failed to write or holds inf/NaN values
        (the error is logged on that rank; the previous checkpoints are untouched, no temporary
        file is left and training can go on).
    """
    root = checkpoint_root(run_dir)
    final = root / f"step_{step:08d}"
    tmp = root / f"step_{step:08d}.tmp"
    if parallel is None:
        parallel = ParallelContext.from_default_group(topology, torch.device("cpu"))
    if topology.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    parallel.barrier()
    status = _SAVED
    try:
        rows, other = split_head(head, head_optimizer)
        rows.update(extra_rows or {})
        try:
            require_finite({"rows": rows, **(replicated if topology.is_main else {})})
        except ValueError:
            status = _NOT_FINITE
            raise
        written = [
            atomic_torch_save(
                {"class_range": list(class_range), "num_classes": num_classes, "rows": rows},
                shard_file(tmp, topology.rank, topology.world_size),
            ),
            atomic_torch_save(
                {"rng": rng_state(), "head_other": other}, tmp / f"rank-{topology.rank:05d}.pt"
            ),
        ]
        if topology.is_main:
            state = {**replicated, "world_size": topology.world_size}
            written.append(atomic_torch_save(state, tmp / "state.pt"))
        # read back from the file system: the manifest describes what is on disk
        digests = {p.name: file_digest(p) for p in written}
    except Exception as exc:  # torch.save reports a full disk as RuntimeError, not OSError
        logger.error(
            "checkpoint %s: rank %d could not write: %s; previous checkpoints are kept",
            final,
            topology.rank,
            exc,
        )
        status = _NOT_FINITE if status == _NOT_FINITE else _NOT_WRITTEN
    status = parallel.min_over_ranks(status)
    if status == _SAVED:
        shards = {shard_file(tmp, topology.rank, topology.world_size).name: tuple(class_range)}
        gathered = all_gather_object((digests, shards), parallel.control_group)
        placed = not topology.is_main or _place(
            tmp, final, step, topology.world_size, num_classes, gathered
        )
        if not parallel.all_ranks_ok(placed):
            status = _NOT_WRITTEN
    if status != _SAVED:
        _refused[Path(run_dir)] = (step, status == _NOT_FINITE)
        if topology.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        parallel.barrier()
        return None
    exported = True
    if topology.is_main:
        prune(run_dir, final, keep)
        exported = _export(export, final)
    # model.pt only ever holds the step of a complete checkpoint: written after every rank's
    # files, and a failed write counts as a failed save (the checkpoint itself stays usable)
    if export is not None and not parallel.all_ranks_ok(exported):
        _refused[Path(run_dir)] = (step, False)
        return None
    parallel.barrier()
    return final


def _place(
    tmp: Path,
    final: Path,
    step: int,
    world_size: int,
    num_classes: int,
    gathered: list[tuple[dict[str, dict[str, Any]], dict[str, tuple[int, int]]]],
) -> bool:
    """Rank 0: write the manifest of every rank's files into ``tmp``, then rename it ``final``.

    Returns:
        False, with the error logged, when the manifest could not be written (``tmp`` is left
        for the caller to remove and no ``final`` directory appears).
    """
    files = {name: d for digests, _ in gathered for name, d in digests.items()}
    shards = {name: r for _, ranges in gathered for name, r in ranges.items()}
    try:
        write_manifest(
            tmp,
            step=step,
            world_size=world_size,
            num_classes=num_classes,
            files=files,
            shards=shards,
        )
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_dir(final.parent)
    except Exception as exc:
        logger.error(
            "checkpoint %s: could not write its manifest: %s; previous checkpoints are kept",
            final,
            exc,
        )
        return False
    return True


def _export(export: Callable[[], object] | None, final: Path) -> bool:
    """Run ``export`` (rank 0); False, with the error logged, when it failed."""
    if export is None:
        return True
    try:
        export()
    except Exception as exc:
        logger.error("checkpoint %s is complete, but the model export failed: %s", final, exc)
        return False
    return True


_SAVED, _NOT_FINITE, _NOT_WRITTEN = 2, 1, 0
"""A rank's outcome of a save; the run's is the least of them (a failed write first)."""
_refused: dict[Path, tuple[int, bool]] = {}


def last_refused(run_dir: Path) -> tuple[int, bool] | None:
    """``(step, held inf/NaN)`` of this process's latest failed save into ``run_dir``, if any.

    ``held inf/NaN``: no rank failed to write, but one refused state holding inf/NaN values
    (the model diverged); False: a rank could not write (a full disk, no permission).
    """
    return _refused.get(Path(run_dir))


def prune(run_dir: Path, current: Path, keep: int) -> None:
    """Keep ``current`` and the newest ``keep - 1`` checkpoints before it; delete the rest.

    Checkpoints with a higher step than ``current`` belong to a timeline this run abandoned
    (it was resumed from an earlier checkpoint); left in place they would be what
    ``--resume=auto`` picks up next, so they go too.
    """
    found = list_checkpoints(run_dir)
    newer = [p for p in found if p.name > current.name]
    older = [p for p in found if p.name < current.name]
    if newer:
        logger.warning(
            "removing %d checkpoints newer than %s (%s): this run continued from an earlier step",
            len(newer),
            current.name,
            ", ".join(p.name for p in newer),
        )
    for old in newer + older[: max(len(older) - (keep - 1), 0)]:
        shutil.rmtree(old, ignore_errors=True)


def require_finite(tree: Any) -> None:
    """Raise ``ValueError`` naming the first floating tensor in ``tree`` holding inf/NaN.

    One host synchronisation for the whole tree. Tensors are checked a block at a time:
    ``isfinite`` of a whole ``[C, D]`` center matrix would allocate more than the matrix.
    """
    named = [(k, t) for k, t in _tensors(tree, "") if t.is_floating_point()]
    if not named:
        return
    device = named[0][1].device
    finite = torch.stack([_all_finite(t).to(device) for _, t in named])
    if bool(finite.all()):
        return
    bad = next(k for (k, _), ok in zip(named, finite.tolist()) if not ok)
    raise ValueError(f"not saved: {bad} holds inf/NaN values")


def _all_finite(t: torch.Tensor, block: int = 1 << 20) -> torch.Tensor:
    """0-dim bool: no inf/NaN in ``t``, read ``block`` elements at a time (no host sync)."""
    flat = t.detach().reshape(-1)
    if flat.numel() <= block:
        return torch.isfinite(flat).all()
    parts = [torch.isfinite(piece).all() for piece in flat.split(block)]
    return torch.stack(parts).all()


def _tensors(tree: Any, prefix: str) -> list[tuple[str, torch.Tensor]]:
    if torch.is_tensor(tree):
        return [(prefix.rstrip("/"), tree)]
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return []
    return [pair for k, v in items for pair in _tensors(v, f"{prefix}{k}/")]


def load_state(path: Path) -> dict[str, Any]:
    """Rank 0's replicated state of a checkpoint (loaded with ``weights_only=True``)."""
    file = Path(path) / "state.pt"
    if not file.exists():
        raise CheckpointError(f"{path} is not a complete checkpoint (no state.pt)")
    return torch.load(file, map_location="cpu", weights_only=True)


def restore_head(
    path: Path,
    topology: Topology,
    head: nn.Module,
    head_optimizer: torch.optim.Optimizer,
    class_range: tuple[int, int],
    num_classes: int,
    saved_world_size: int,
) -> None:
    """Load this rank's class-center rows (any saved world size) and their optimizer state.

    The non-sharded head state (margin buffers, a shared bias) comes from this rank's own file
    when the world size is unchanged, else from rank 0's. Per-rank state (``*_extra_state``,
    e.g. a class-sampling generator) is only restored on the same world size; after a re-split
    the head keeps its own, derived from its new rank (``reseed_sampler`` in the trainer).

    Raises:
        CheckpointError: the checkpoint holds another number of classes.
    """
    path = Path(path)
    if total_classes(path) != num_classes:
        raise CheckpointError(
            f"{path} holds {total_classes(path)} class centers, the model has {num_classes}"
        )
    start, end = class_range
    same_world = saved_world_size == topology.world_size
    source = topology.rank if same_world else 0
    other = torch.load(path / f"rank-{source:05d}.pt", map_location="cpu", weights_only=True)[
        "head_other"
    ]
    device = head.weight.device
    saved_rows = _row_keys(path, start, end)
    params = row_parameters(head)
    # row parameters the checkpoint holds as rows (older ones kept a class bias per rank)
    loaded = {n: load_rows(path, n, start, end).to(device) for n in params if n in saved_rows}
    saved = other["head"]
    if not same_world:  # another rank's generator: keep this rank's own (see above)
        own = head.state_dict()
        saved = {k: own[k] if k.endswith("_extra_state") else v for k, v in saved.items()}
    head.load_state_dict({**saved, **loaded})
    if _param_index(head_optimizer, head.weight, "weight") != other["weight_index"]:
        raise CheckpointError(f"{path}: head optimizer layout differs from the saved one")
    state = dict(other["optim_state"])
    row_scalars = other.get("row_scalars", {"weight": other["optim_scalars"]})
    for pname, param in params.items():
        if pname not in loaded:
            continue
        prefix = _optim_key(pname, "")
        names = [k[len(prefix) :] for k in saved_rows if k.startswith(prefix)]
        names = [n for n in names if "/" not in n]  # the weight's, not optim/bias/...
        scalars = row_scalars.get(pname, {})
        if names or scalars:
            tensors = {n: load_rows(path, _optim_key(pname, n), start, end) for n in names}
            state[_param_index(head_optimizer, param, pname)] = {**scalars, **tensors}
    head_optimizer.load_state_dict({"state": state, "param_groups": other["param_groups"]})


def _row_keys(path: Path, start: int, end: int) -> list[str]:
    """Row keys of the checkpoint, from the first head file overlapping ``[start, end)``."""
    ranges = shard_ranges(path)
    first = next((p for s, e, p in ranges if s < end and e > start), ranges[0][2])
    return list(torch.load(first, map_location="cpu", weights_only=True, mmap=True)["rows"])


def restore_rng(path: Path, topology: Topology) -> bool:
    """Restore this rank's RNG states if the checkpoint has a file for this rank."""
    file = Path(path) / f"rank-{topology.rank:05d}.pt"
    if not file.exists():
        return False
    set_rng_state(torch.load(file, map_location="cpu", weights_only=True)["rng"])
    return True


def rng_state() -> dict[str, Any]:
    """Python and torch RNG states of this process (CPU and every CUDA device)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
