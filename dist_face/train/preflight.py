"""Checks of everything a user can get wrong, run on every rank before anything heavy is built.

Each failed check raises :class:`~dist_face.config.ConfigError` naming the config key, so the
entry point prints one line (``bad configuration: data.root: ...``) and exits 2 on every rank
instead of a traceback from deep inside the build.

It also guards the run directory: a new run never mixes with an older run's checkpoints,
model and metrics. A directory that holds them is refused unless the run resumes
(``--resume``) or asks for it to be wiped (``--overwrite``, :func:`wipe_run_dir`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dist_face.checkpoint import CheckpointCorrupt, latest_checkpoint, read_manifest
from dist_face.checkpoint.manager import checkpoint_root, list_checkpoints
from dist_face.config import ConfigError, RunConfig
from dist_face.config.paths import check_inputs
from dist_face.config.resolve import check_extras, check_names
from dist_face.dist import Topology

if TYPE_CHECKING:
    from dist_face.data.loading.loader import DataSource

logger = logging.getLogger(__name__)

# what a run writes into its directory; all of it goes when the directory is overwritten
_RUN_FILES = ("model.pt", "config.yaml", "eval.json")
_RUN_GLOBS = ("metrics-rank*.jsonl", "*.tmp")


def run_dir(cfg: RunConfig) -> Path:
    """The run directory ``<output_root>/<name>``."""
    return Path(cfg.output_root) / cfg.name


def check_run(
    cfg: RunConfig, topology: Topology, device: torch.device, verify: bool = False
) -> DataSource:
    """Check paths, names and the run directory of ``cfg``; allocates nothing on device.

    Returns the rank's data source it built to check the data (nothing read beyond the
    metadata and manifest; no worker started), for the trainer to use instead of opening the
    dataset again.

    Args:
        cfg: the resolved config.
        topology: this rank's position (the batch must fit each rank's share of the data).
        device: the device this rank will train on (decides the ``auto`` data backend).
        verify: also check every file of the checkpoint the run would resume from against
            its manifest (``--check-only``, the launchers' check before the ranks start: it
            reads what all ranks will read). Without it only the manifest is read; the ranks
            verify their own files when they resume.

    Raises:
        ConfigError: the first problem found, naming its config key.
    """
    from dist_face.data.loading.loader import build_loader
    from dist_face.models.factory import options

    check_inputs(cfg)  # every path the run reads exists: one line naming key and path
    check_extras(cfg)  # optional packages the config asks for: one line naming the extra
    # data.root, data.num_classes, data.backend (DALI installed?), data.batch_size; nothing
    # is read beyond the shard set's metadata and manifest
    data = build_loader(cfg.data, topology, device, seed=cfg.train.seed)
    num_classes = data.num_classes
    check_names(cfg)  # margin and backbone against their registries
    for key in ("drop_path", "mask_ratio"):
        if getattr(cfg.model, key) is not None and key not in options(cfg.model.name):
            raise ConfigError(f"model.{key}: backbone {cfg.model.name} has no {key} option")
    if cfg.model.init_backbone and not Path(cfg.model.init_backbone).is_file():
        raise ConfigError(f"model.init_backbone: {cfg.model.init_backbone} is not a file")
    for target in cfg.eval.targets:
        if not Path(target).is_file():
            raise ConfigError(f"eval.targets: {target} is not a file")
    _check_resume(cfg, num_classes, verify)
    _check_run_dir(cfg)
    return data


def _check_resume(cfg: RunConfig, num_classes: int, verify: bool) -> None:
    resume = cfg.checkpoint.resume
    if not resume:
        return
    if resume == "auto":
        if not verify:
            return  # the ranks pick the newest checkpoint that verifies on all of them
        path = latest_checkpoint(run_dir(cfg))  # logs each newer one it passes over
        if path is None:
            found = list_checkpoints(run_dir(cfg))
            if found:
                raise ConfigError(
                    f"checkpoint.resume: auto: none of the {len(found)} checkpoints in "
                    f"{checkpoint_root(run_dir(cfg))} verifies; move them aside or start over "
                    "with --overwrite"
                )
            return  # nothing to resume yet: a fresh start
    else:
        path = Path(resume)
    try:
        manifest = read_manifest(path)
        if verify:
            manifest.verify()
    except CheckpointCorrupt as exc:
        raise ConfigError(f"checkpoint.resume: {path} does not verify: {exc}") from None
    if manifest.num_classes != num_classes:
        raise ConfigError(
            f"checkpoint.resume: {path} holds {manifest.num_classes} class centers, the "
            f"training set {cfg.data.root} has {num_classes} classes"
        )


def _check_run_dir(cfg: RunConfig) -> None:
    """Refuse a fresh run in a directory that holds another run, unless resuming or wiping."""
    if cfg.checkpoint.resume or cfg.checkpoint.overwrite:
        return
    found = run_artifacts(run_dir(cfg))
    if found:
        names = ", ".join(sorted(p.name for p in found)[:4])
        raise ConfigError(
            f"name: the run directory {run_dir(cfg)} already holds another run ({names}); "
            "continue it with --resume=auto, wipe it with --overwrite, or choose another --name"
        )


def run_artifacts(directory: Path) -> list[Path]:
    """What an earlier run left in ``directory``: checkpoints, model, metrics, reports."""
    if not directory.is_dir():
        return []
    found = [directory / n for n in _RUN_FILES if (directory / n).exists()]
    found += [p for pattern in _RUN_GLOBS for p in directory.glob(pattern)]
    found += list_checkpoints(directory)
    return found


def wipe_run_dir(directory: Path) -> None:
    """Remove what a run writes into ``directory`` (call on one rank); other files are kept."""
    removed = run_artifacts(directory)
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    shutil.rmtree(checkpoint_root(directory), ignore_errors=True)  # incomplete .tmp ones too
    if removed:
        logger.warning(
            "--overwrite: removed %d entries of an earlier run in %s", len(removed), directory
        )
