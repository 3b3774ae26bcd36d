"""Start-up check that every rank is about to run the same plan on the same data.

Ranks started with different shard sets or configs would otherwise train for a while with
different step counts and learning rates and then die in a collective with a generic error.
Each rank describes its run as a flat ``{field: value}`` dict: the resolved config, the dataset
(size, class count, a digest of its manifest) and the plan (steps, batch); the dicts are
all-gathered once and any difference is an error on every rank naming the field and the ranks.

:func:`host_gather` is the only collective here (a host-side object gather), kept in one place
so that it can run on a separate host-side process group.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.distributed import ProcessGroup

from dist_face.config import ConfigError, RunConfig
from dist_face.dist import all_gather_object

if TYPE_CHECKING:
    from dist_face.data.format.shards import ShardSet

# differs legitimately between nodes (node-local copies); the data's digest is compared instead
_PER_NODE_KEYS = {"config.data.root"}


class PlanMismatchError(ConfigError):
    """Ranks disagree on the config, the dataset or the plan of the run."""


def host_gather(obj: Any, group: ProcessGroup | None = None) -> list[Any]:
    """Gather a small picklable object from every rank, in rank order (host-side)."""
    return all_gather_object(obj, group)


def dataset_digest(root: str, shards: ShardSet | None = None) -> str:
    """SHA-256 of a dataset's description and every record's manifest row.

    Works for any ``data.root`` the loaders accept (a shard set, an InsightFace ``.rec`` read
    through its scanned manifest, ``synthetic``). The rows hold each record's shard, key,
    offset, length, label and CRC-32, so equal digests mean the same records with the same
    labels, wherever each node keeps its copy. ``shards``: the dataset already opened at
    ``root`` (the loader's), so that start-up reads its metadata once.
    """
    from dist_face.data.format.rec_index import open_dataset

    if root == "synthetic":
        return "synthetic"
    if shards is None:
        shards = open_dataset(root, check_labels=False)
    digest = hashlib.sha256(shards.meta.to_json().encode())
    for column in (
        shards.shard_ids,
        shards.keys,
        shards.offsets,
        shards.lengths,
        shards.labels,
        shards.crc32s,
    ):
        digest.update(memoryview(np.ascontiguousarray(column)))
    return digest.hexdigest()


def run_fields(cfg: RunConfig, dataset: dict[str, Any], plan: Any) -> dict[str, str]:
    """The flat description of a run that every rank must share.

    Args:
        cfg: the resolved config.
        dataset: ``num_samples``, ``num_classes``, ``batches_per_epoch``, ``backend``,
            ``manifest_sha256`` of this rank's data.
        plan: the :class:`~dist_face.train.plan.RunPlan`.

    Returns:
        ``{"config.head.sample_rate": "1.0", "data.num_samples": "720", "plan.total_steps": ...}``.
    """
    fields = {
        key: value
        for key, value in _flatten(dataclasses.asdict(cfg), "config.").items()
        if key not in _PER_NODE_KEYS
    }
    fields.update({f"data.{k}": repr(v) for k, v in dataset.items()})
    for name in ("world_size", "global_batch", "steps_per_epoch", "total_steps", "warmup_steps"):
        fields[f"plan.{name}"] = repr(getattr(plan, name))
    return fields


def check_agreement(fields: dict[str, str], group: ProcessGroup | None = None) -> None:
    """All-gather ``fields`` and raise on every rank if any rank's differ.

    Raises:
        PlanMismatchError: names each differing field (up to three) with its value per rank.
    """
    gathered = host_gather(fields, group)
    keys = sorted(set().union(*gathered))
    diffs = []
    for key in keys:
        by_value: dict[str, list[int]] = {}
        for rank, rank_fields in enumerate(gathered):
            by_value.setdefault(rank_fields.get(key, "<missing>"), []).append(rank)
        if len(by_value) > 1:
            values = "; ".join(
                f"{_short(v)} on rank{'s' if len(r) > 1 else ''} {_ranks(r)}"
                for v, r in by_value.items()
            )
            diffs.append(f"{key}: {values}")
    if diffs:
        more = f" (and {len(diffs) - 3} more fields)" if len(diffs) > 3 else ""
        raise PlanMismatchError(
            f"ranks disagree on the run: {' | '.join(diffs[:3])}{more}; start every rank with "
            "the same config and the same shard set"
        )


def _flatten(tree: dict[str, Any], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = repr(value)
    return out


def _short(value: str) -> str:
    return value if len(value) <= 24 else value[:20] + "..."


def _ranks(ranks: list[int]) -> str:
    if len(ranks) > 4:
        return (
            f"{ranks[0]}-{ranks[-1]} ({len(ranks)} ranks)"
            if ranks == list(range(ranks[0], ranks[-1] + 1))
            else f"{', '.join(map(str, ranks[:4]))}, ..."
        )
    return ", ".join(map(str, ranks))
