"""Crash-safe, verified checkpoints whose class-center head re-shards onto any world size."""

from dist_face.checkpoint.atomic import atomic_torch_save
from dist_face.checkpoint.manager import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_state,
    restore_head,
    restore_rng,
    save_checkpoint,
)
from dist_face.checkpoint.manifest import CheckpointCorrupt, read_manifest, verify_checkpoint
from dist_face.checkpoint.sharded import ShardedCheckpointError, load_rows

__all__ = [
    "CheckpointCorrupt",
    "CheckpointError",
    "ShardedCheckpointError",
    "atomic_torch_save",
    "latest_checkpoint",
    "list_checkpoints",
    "load_rows",
    "load_state",
    "read_manifest",
    "restore_head",
    "restore_rng",
    "save_checkpoint",
    "verify_checkpoint",
]
