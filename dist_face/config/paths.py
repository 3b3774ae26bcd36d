"""The paths a run reads and writes: one rule for where a relative path points, one check.

The rule: a relative path, wherever it was written (a recipe, a ``config.yaml``, a
``--section.field=value`` override), names a file relative to the directory the command was
started in. :func:`absolute_paths` applies the rule once, when the config is loaded, so every
later message, the saved ``config.yaml`` and every rank see the same absolute paths. The
launchers in ``launch/`` never change directory, so torchrun's and DeepSpeed's workers start
where the user did.

:func:`check_inputs` then checks that everything the run will read exists, before any
process group or model is built.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from dist_face.config.base import ConfigError
from dist_face.config.schema import RunConfig

#: ``checkpoint.resume`` values that are not paths.
_RESUME_WORDS = ("", "auto")
#: ``data.root`` values that are not paths.
_DATA_WORDS = ("synthetic",)


def _absolute(path: str, base: Path) -> str:
    """``path`` anchored at ``base`` when relative; ``~`` expanded; empty stays empty."""
    if not path:
        return path
    return os.path.normpath(base / Path(path).expanduser())


def absolute_paths(cfg: RunConfig, base: str | os.PathLike[str] | None = None) -> RunConfig:
    """Return a copy of ``cfg`` whose file paths are absolute.

    Args:
        cfg: a resolved config (left unchanged).
        base: the directory relative paths are relative to; default the working directory.

    Returns:
        The config with ``data.root``, ``eval.targets``, ``model.init_backbone``,
        ``checkpoint.resume`` (unless empty or ``auto``) and ``output_root`` made absolute.
    """
    anchor = Path(base) if base is not None else Path.cwd()
    data = cfg.data
    if data.root not in _DATA_WORDS:
        data = dataclasses.replace(data, root=_absolute(data.root, anchor))
    resume = cfg.checkpoint.resume
    if resume not in _RESUME_WORDS:
        resume = _absolute(resume, anchor)
    return dataclasses.replace(
        cfg,
        data=data,
        eval=dataclasses.replace(
            cfg.eval, targets=[_absolute(t, anchor) for t in cfg.eval.targets]
        ),
        model=dataclasses.replace(
            cfg.model, init_backbone=_absolute(cfg.model.init_backbone, anchor)
        ),
        checkpoint=dataclasses.replace(cfg.checkpoint, resume=resume),
        output_root=_absolute(cfg.output_root, anchor),
    )


def input_paths(cfg: RunConfig) -> list[tuple[str, str]]:
    """Every ``(config key, path)`` the run reads, in the order they are checked."""
    found: list[tuple[str, str]] = []
    if cfg.data.backend != "synthetic" and cfg.data.root not in _DATA_WORDS:
        found.append(("data.root", cfg.data.root))
    found += [("eval.targets", t) for t in cfg.eval.targets]
    if cfg.model.init_backbone:
        found.append(("model.init_backbone", cfg.model.init_backbone))
    if cfg.checkpoint.resume not in _RESUME_WORDS:
        found.append(("checkpoint.resume", cfg.checkpoint.resume))
    return found


def check_inputs(cfg: RunConfig) -> None:
    """Refuse a run one of whose input paths does not exist; reads nothing but directories.

    Raises:
        ConfigError: ``<key>: <absolute path> does not exist`` for the first missing one.
    """
    for key, path in input_paths(cfg):
        if not os.path.exists(path):
            raise ConfigError(f"{key}: {os.path.abspath(path)} does not exist")
