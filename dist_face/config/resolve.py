"""The run configuration with every "unset means …" default replaced by its value.

``config.yaml`` and ``--print-config`` show this form, so what they print is what trains.
"""

from __future__ import annotations

import dataclasses

from dist_face.config.base import ConfigError, did_you_mean
from dist_face.config.schema import RunConfig
from dist_face.extras import MissingExtraError, require


def resolve_run(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` with the margin's paper defaults and ``head.update`` filled in.

    Idempotent. ``head.margin_args`` gets every argument of the margin; one it does not have
    (a recipe's, after the command line switched margin) is dropped with a warning.
    """
    from dist_face.heads.margins.common import MARGINS
    from dist_face.heads.margins.margin_args import (
        resolve_margin_args,  # lazy: margins import torch
    )

    args = cfg.head.margin_args
    if cfg.head.margin in MARGINS:
        args = resolve_margin_args(cfg.head.margin, args)
    head = dataclasses.replace(cfg.head, margin_args=args, update=cfg.head_update)
    return dataclasses.replace(cfg, head=head)


def check_names(cfg: RunConfig) -> None:
    """Check the registry names of ``cfg``: the margin and the backbone, as training does.

    The lists come from the registries (:data:`~dist_face.heads.margins.common.MARGINS`, the
    backbone factory), so a margin or backbone added there is known here too.

    Raises:
        ConfigError: an unknown name, with the known ones and the closest match.
    """
    from dist_face.heads.margins.common import MARGINS  # the heads import torch: only when checking
    from dist_face.models.factory import names

    for key, kind, name, known in (
        ("head.margin", "margin", cfg.head.margin, MARGINS.names()),
        ("model.name", "backbone", cfg.model.name, names()),
    ):
        if name not in known:
            raise ConfigError(
                f"{key}: unknown {kind} {name!r}{did_you_mean(name, known)} "
                f"(known: {', '.join(known)})"
            )


def check_extras(cfg: RunConfig) -> None:
    """Check that the optional packages ``cfg`` asks for are installed.

    Raises:
        ConfigError: one is missing; the message names the extra that installs it.
    """
    if cfg.metrics.tensorboard:
        try:
            require("tensorboard", purpose="metrics.tensorboard=true")
        except MissingExtraError as exc:
            raise ConfigError(str(exc)) from None
