"""The run configuration with every "unset means …" default replaced by its value.

``config.yaml`` and ``--print-config`` show this form, so what they print is what trains.
"""

from __future__ import annotations

import dataclasses

from dist_face.config.margin_defaults import resolve_head
from dist_face.config.schema import RunConfig


def resolve_run(cfg: RunConfig) -> RunConfig:
    """A copy of ``cfg`` with the margin's paper defaults and ``head.update`` filled in.

    Idempotent. The margin's ignored fields are dropped with a warning (:func:`resolve_head`).
    """
    head = dataclasses.replace(resolve_head(cfg.head), update=cfg.head_update)
    return dataclasses.replace(cfg, head=head)
