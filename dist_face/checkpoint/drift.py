"""Config drift on resume: what may change between a checkpoint's run and the one resuming it.

Both configs are compared as flat ``section.key`` paths (nested mappings such as
``head.margin_args`` flatten to ``head.margin_args.m2``), so the check follows the config's
shape, whatever it is. Each changed path gets the rule of its longest matching prefix in
:data:`RULES`:

* ``refused``: it changes what is trained (model, embedding size, margin and its arguments,
  classes, the data set, sample rate, precision, optimizer, seed, augmentation); the resume
  stops with one line naming the keys, unless ``checkpoint.allow_changes`` (``--resume.
  allow_changes=head.margin``) names them;
* ``schedule``: the learning rate, its schedule and the run's length or batch size; applied,
  with the learning-rate schedule re-based at the checkpoint's step (the log says so);
* ``applied``: logging, evaluation, checkpointing, paths, performance knobs; they take effect
  as they are, and the log lists them.

A path no rule matches is refused: a new config field is treated as changing the training
until a rule says otherwise. The data set's identity is its fingerprint (the digest of its
manifest), not ``data.root``: a moved copy of the same shards resumes, another packing is
refused as ``data.root``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

REFUSED, SCHEDULE, APPLIED = "refused", "schedule", "applied"

RULES: dict[str, str] = {
    "name": APPLIED,
    "output_root": APPLIED,
    "model": REFUSED,
    "model.channels_last": APPLIED,  # memory layout only
    "model.grad_checkpointing": APPLIED,  # recomputes, same numbers
    "model.init_backbone": APPLIED,  # the checkpoint's weights replace it on resume
    "head": REFUSED,  # the margin, its arguments, the sample rate, the center update
    "head.check_labels": APPLIED,
    "head.chunk_size": APPLIED,
    "head.keep_projections_mb": APPLIED,
    "data": REFUSED,  # image size, augmentation, classes
    "data.root": APPLIED,  # the data set's identity is its fingerprint (see above)
    "data.batch_size": SCHEDULE,
    "data.num_workers": APPLIED,
    "data.prefetch": APPLIED,
    "data.timeout_s": APPLIED,
    "data.check_crc": APPLIED,
    "data.on_corrupt": APPLIED,
    "optim": REFUSED,  # optimizer, momentum, weight decay: the saved state holds them
    "optim.lr": SCHEDULE,
    "optim.head_lr": SCHEDULE,
    "optim.warmup_epochs": SCHEDULE,
    "optim.schedule": SCHEDULE,
    "optim.poly_power": SCHEDULE,
    "train": REFUSED,  # precision, seed, gradient clipping, the loss scaler
    "train.epochs": SCHEDULE,
    "train.max_steps": SCHEDULE,
    "train.grad_accum": SCHEDULE,
    "train.log_every": APPLIED,
    "train.max_skipped_steps": APPLIED,
    "train.max_nonfinite_logs": APPLIED,
    "dist": APPLIED,  # the layout is the same under DDP and DeepSpeed, any ZeRO stage
    "dist.fp16_grad_compression": REFUSED,  # rounds the gradients
    "eval": APPLIED,
    "checkpoint": APPLIED,
    "metrics": APPLIED,
    "aux": REFUSED,
}

MARGIN = "head.margin"
"""Naming it in ``allow_changes`` allows the margin's arguments too: every ``head`` key but
the ones in :data:`HEAD_STRUCTURE` (``head.margin_args.*``; also the flat ``head.m2``, ...)."""
HEAD_STRUCTURE = frozenset(
    {
        "head.sample_rate",
        "head.update",
        "head.storage",
        "head.tf32",
        "head.margin_args.sub_centers",  # the shape of the centers
        "head.interclass_filtering_threshold",
        "head.check_labels",
        "head.chunk_size",
        "head.keep_projections_mb",
    }
)
UNCOMPARED = ("checkpoint.resume", "checkpoint.overwrite", "checkpoint.allow_changes")
"""How a run starts, not what it runs: never a change."""
DATASET_KEY = "data.root"
"""The key a changed data set fingerprint is reported (and allowed) under."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"head": {"margin_args": {"m2": 0.5}}}`` -> ``{"head.margin_args.m2": 0.5}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def rule(path: str) -> str:
    """The rule of ``path``: that of its longest prefix in :data:`RULES` (refused if none)."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        found = RULES.get(".".join(parts[:n]))
        if found is not None:
            return found
    return REFUSED


def allowed(path: str, allow: list[str]) -> bool:
    """Whether ``allow`` (``checkpoint.allow_changes``) names ``path`` or a prefix of it."""
    for entry in allow:
        if path == entry or path.startswith(entry + "."):
            return True
        if entry == MARGIN and path.startswith("head.") and path not in HEAD_STRUCTURE:
            return True
    return False


@dataclass(frozen=True)
class Drift:
    """The changed keys of a resume, by what happens to them: ``key -> (saved, new)``."""

    refused: dict[str, tuple[Any, Any]]
    schedule: dict[str, tuple[Any, Any]]
    applied: dict[str, tuple[Any, Any]]
    overridden: dict[str, tuple[Any, Any]]
    """Refused keys that ``allow_changes`` lets through (applied as they are)."""

    def refusal(self, checkpoint: str) -> str:
        """One line naming the refused keys, their values and the way to allow them."""
        keys = ", ".join(f"{k} ({_short(a)} -> {_short(b)})" for k, a, b in _items(self.refused))
        # head.margin covers the margin's arguments: name it alone for them
        cover = [MARGIN] if MARGIN in self.refused else []
        names = ",".join(k for k in self.refused if k == MARGIN or not allowed(k, cover))
        return (
            f"resuming {checkpoint} would change what is trained: {keys}; resume with the "
            f"saved values, or allow the change with --resume.allow_changes={names}"
        )

    def changes(self) -> str:
        """One line listing the keys that change on resume (empty when none does)."""
        parts = []
        for label, group in (
            ("applied", {**self.applied, **self.overridden}),
            ("schedule re-based", self.schedule),
        ):
            if group:
                listed = ", ".join(f"{k} {_short(a)} -> {_short(b)}" for k, a, b in _items(group))
                parts.append(f"{label}: {listed}")
        return "; ".join(parts)


def _items(group: dict[str, tuple[Any, Any]]) -> list[tuple[str, Any, Any]]:
    return [(k, a, b) for k, (a, b) in group.items()]


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_MISSING = "<unset>"


def compare(
    saved_yaml: str,
    new: Mapping[str, Any],
    allow: list[str],
    saved_dataset: Mapping[str, Any] | None = None,
    new_dataset: Mapping[str, Any] | None = None,
) -> Drift:
    """Sort the differences between a checkpoint's config and the resuming run's.

    Args:
        saved_yaml: the checkpoint's resolved config (``state.pt``'s ``config``).
        new: the resuming run's resolved config as a mapping (``yaml.safe_load(to_yaml(cfg))``).
        allow: ``checkpoint.allow_changes``: keys (or prefixes) whose change is accepted.
        saved_dataset: the checkpoint's data set fingerprint (``manifest_sha256``) and
            ``num_classes``; None for checkpoints written before they were saved.
        new_dataset: the same for the resuming run.

    Returns:
        The changed keys by rule.
    """
    old_flat = flatten(yaml.safe_load(saved_yaml) or {})
    new_flat = flatten(new)
    changed = {
        k: (old_flat.get(k, _MISSING), new_flat.get(k, _MISSING))
        for k in sorted(set(old_flat) | set(new_flat))
        if old_flat.get(k, _MISSING) != new_flat.get(k, _MISSING) and k not in UNCOMPARED
    }
    fingerprint = None
    if saved_dataset and new_dataset:
        a, b = saved_dataset.get("manifest_sha256"), new_dataset.get("manifest_sha256")
        if a and b and a != b:
            fingerprint = (f"data set {a[:12]}", f"data set {b[:12]}")
        a, b = saved_dataset.get("num_classes"), new_dataset.get("num_classes")
        if a is not None and b is not None and a != b:
            changed["data.num_classes"] = (a, b)
    groups: dict[str, dict[str, tuple[Any, Any]]] = {
        REFUSED: {},
        SCHEDULE: {},
        APPLIED: {},
        "overridden": {},
    }
    if fingerprint is not None:  # another data set: reported under data.root, path or not
        changed.pop(DATASET_KEY, None)
        groups[REFUSED if not allowed(DATASET_KEY, allow) else "overridden"][DATASET_KEY] = (
            fingerprint
        )
    for key, values in changed.items():
        kind = rule(key)
        if kind == REFUSED and allowed(key, allow):
            kind = "overridden"
        groups[kind][key] = values
    return Drift(groups[REFUSED], groups[SCHEDULE], groups[APPLIED], groups["overridden"])
