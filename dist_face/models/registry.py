"""The backbone registry: ``name → factory(**options) -> Backbone``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dist_face.registry import Registry

#: Every backbone factory, registered by the module that defines the network.
BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")
